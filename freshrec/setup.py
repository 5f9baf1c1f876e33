"""``freshrec setup``: fetch the broker and connector jars (Maven) and build the job's Java
glue, once; everything is cached in ``local.cache_dir``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from devstack.jars import ensure_jars
from freshrec_common.settings import Settings


def setup(args: argparse.Namespace, settings: Settings) -> int:
    """Fetch and build everything the job needs, once (cached)."""
    from flink_jobs.glue import build_glue_jar, build_metrics_jar

    jars = ensure_jars(settings)
    flink_cache = Path(settings.local.cache_dir) / "flink"
    glue = build_glue_jar(jars.connector_jar, flink_cache)
    metrics = build_metrics_jar(flink_cache)
    print(f"setup: Kafka broker jars in {jars.kafka_libs}")
    print(f"setup: Flink jars {jars.connector_jar.name}, {glue.name}, {metrics.name}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("setup", help="fetch the Kafka and Flink jars and build the glue")
    p.set_defaults(func=setup)
