"""The local development stack: the Maven jar cache, a single-node Kafka broker and its
topics, a Flink standalone session cluster and the job on it, a local Prometheus, and the
process supervisor they share (built on psutil).

It sits above the job (it builds the job's jars and submits it) and below the ``freshrec``
commands, which are thin front ends to it.
"""
