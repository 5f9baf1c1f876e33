"""``freshrec kafka up|down|status|jars``: the local single-node Kafka broker
(:mod:`devstack.kafka_broker`) and its topics."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from devstack.jars import ensure_jars
from devstack.kafka_broker import broker_down, broker_status, broker_up
from devstack.prerequisites import LocalKafkaError
from freshrec_common import kafka_config
from freshrec_common.settings import Settings, SettingsError, load_settings
from freshrec_common.settings_args import add_settings_arguments


def _cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    broker_up(settings)
    return 0


def _cmd_down(args: argparse.Namespace, settings: Settings) -> int:
    broker_down(settings)
    return 0


def _cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    st = broker_status(settings)
    if not st.running:
        print(f"kafka: stopped (state in {st.state_dir})" + (f"; {st.note}" if st.note else ""))
        return 3
    print(f"kafka: running (pid {st.pid}) on {st.bootstrap}, state in {st.state_dir}")
    if st.note:
        print(f"kafka: {st.note}")
    print(f"topics ({len(st.topics)}):")
    for t in st.topics:
        print(f"  {t.describe()}")
    return 0


def _cmd_jars(args: argparse.Namespace, settings: Settings) -> int:
    jars = ensure_jars(settings)
    print(f"kafka classpath:  {jars.kafka_classpath}")
    print(f"flink connector:  {jars.connector_jar}")
    return 0


def _guard(func: Callable[[argparse.Namespace, Settings], int]) -> Any:
    def run(args: argparse.Namespace, settings: Settings) -> int:
        try:
            return func(args, settings)
        except (LocalKafkaError, kafka_config.KafkaConfigError) as exc:
            print(f"freshrec kafka: error: {exc}", file=sys.stderr)
            return 1

    return run


def _add_commands(sub: Any) -> None:
    sub.add_parser(
        "up", help="start the broker (if not running) and create the freshrec topics"
    ).set_defaults(func=_guard(_cmd_up))
    sub.add_parser("down", help="stop the broker").set_defaults(func=_guard(_cmd_down))
    sub.add_parser(
        "status", help="running or stopped, and the topics (exit 3 when stopped)"
    ).set_defaults(func=_guard(_cmd_status))
    sub.add_parser("jars", help="fetch the jars if needed and print their paths").set_defaults(
        func=_guard(_cmd_jars)
    )


_DESCRIPTION = (
    "A real Apache Kafka broker on local.host:local.port (default 127.0.0.1:9092), data and"
    " logs in local.state_dir, jars fetched once with Maven into local.cache_dir."
)


def register(subparsers: Any) -> None:
    """Add ``freshrec kafka up|down|status|jars``."""
    parser = subparsers.add_parser(
        "kafka",
        help="run a local single-node Kafka broker (KRaft) for development",
        description=_DESCRIPTION,
    )
    _add_commands(parser.add_subparsers(dest="kafka_command", required=True))


def main(argv: list[str] | None = None) -> int:
    """``python -m freshrec.kafka [--config F] [--set k=v] up|down|status|jars``.

    The same as ``freshrec kafka ...``, without loading the other subcommands.
    """
    parser = argparse.ArgumentParser(
        prog="python -m freshrec.kafka", description=_DESCRIPTION
    )
    add_settings_arguments(parser)
    _add_commands(parser.add_subparsers(dest="kafka_command", required=True))
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config, overrides=args.overrides)
    except SettingsError as exc:
        print(f"freshrec: bad setting: {exc}", file=sys.stderr)
        return 2
    return int(args.func(args, settings) or 0)


if __name__ == "__main__":
    sys.exit(main())
