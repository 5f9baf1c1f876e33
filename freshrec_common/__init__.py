"""What the PyFlink job and the ``freshrec`` commands share: settings, Kafka client
configuration, privacy, the metric catalogue, polling, and where the job's jars are.

It imports no other freshrec package but ``online_models`` (the settings' model section is
its ``ModelConfig``), so the job, the dev stack and the CLIs all sit above it.
"""
