"""freshrec tooling: settings, local Kafka stack, CLIs (produce, tail, replay, run)."""
