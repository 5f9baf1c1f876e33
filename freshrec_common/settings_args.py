"""The ``--config FILE`` and ``--set SECTION.KEY=VALUE`` flags every entry point takes (the
``freshrec`` command, the job's own ``main``, ``python -m freshrec.kafka``, the benchmarks'
child jobs), and the way back to them for a child process."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` (``args.config``) and the repeatable ``--set`` (``args.overrides``).

    >>> p = argparse.ArgumentParser()
    >>> add_settings_arguments(p)
    >>> a = p.parse_args(["--set", "job.parallelism=2", "--set", "local.port=19092"])
    >>> a.config, a.overrides
    (None, ['job.parallelism=2', 'local.port=19092'])
    """
    parser.add_argument(
        "--config", help="TOML settings file (see freshrec_common/default_settings.toml)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override one setting, e.g. --set job.parallelism=2 (repeatable)",
    )


def settings_args(args: argparse.Namespace) -> list[str]:
    """The ``--config``/``--set`` flags of ``args``, to hand the same settings to a child.

    >>> settings_args(argparse.Namespace(config=None, overrides=["job.parallelism=2"]))
    ['--set', 'job.parallelism=2']
    """
    out: list[str] = []
    if getattr(args, "config", None):
        out += ["--config", str(Path(args.config).resolve())]
    for item in getattr(args, "overrides", []) or []:
        out += ["--set", item]
    return out
