"""The ``freshrec`` command. Each subcommand lives in its own module with a ``register``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from freshrec.signals import STOP, exit_code
from freshrec_common.kafka_config import KafkaConfigError, KafkaUnreachable
from freshrec_common.settings import Settings, SettingsError, load_settings
from freshrec_common.settings_args import add_settings_arguments

# Subcommand modules; each exposes register(subparsers) that sets ``func(args, settings)``.
_COMMANDS = (
    "freshrec.kafka",
    "freshrec.produce",
    "freshrec.tail",
    "freshrec.replay",
    "freshrec.experiments",
    "freshrec.setup",
    "freshrec.run",
    "freshrec.demo",
    "freshrec.pseudonym",
    "freshrec.cluster",
    "freshrec.prometheus",
    "freshrec.serve",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="freshrec", description="Real-time recommendations: Kafka -> PyFlink -> Kafka."
    )
    add_settings_arguments(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # SIGTERM, SIGINT and SIGHUP stop every command the same way: its cleanup runs, and the
    # commands that start children stop them within a bound (docs/operations.md).
    STOP.install()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings: Settings = load_settings(args.config, overrides=args.overrides)
    except SettingsError as exc:
        print(f"freshrec: bad setting: {exc}", file=sys.stderr)
        return 2
    try:
        return int(args.func(args, settings) or 0)
    except KafkaUnreachable as exc:  # no broker at kafka.bootstrap_servers
        print(f"freshrec {args.command}: {exc}", file=sys.stderr)
        return 1
    except KafkaConfigError as exc:  # bad kafka.* settings, or the broker refused the login
        print(f"freshrec: kafka: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # signals.Stopped: a stop signal ended the command early
        print(f"freshrec {args.command}: stopped by {STOP.name}", file=sys.stderr)
        return exit_code(STOP.signum or 2)


if __name__ == "__main__":
    sys.exit(main())
