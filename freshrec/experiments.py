"""``freshrec experiments``: each variant's live figures with 95 % intervals and whether it
differs significantly from the first (control) variant.

The figures are the job's per-variant counters (``freshrec_job_experiment_*_total``): read
from a Prometheus server (``--prometheus URL``: summed over subtasks, since the job started
or over ``--window``), or straight from the job's metrics endpoint (``--metrics URL``, the
Flink Prometheus reporter at ``job.metrics_port``; summed over subtasks since the job
started). Tests are events whose user had been shown a list before them; a hit is the
event's item in that list, so hits / tests is the variant's prequential hit rate
(Recall@top_k) and hits_at_10 / tests its Recall@10. A user's tests are not independent
(a few heavy users would make intervals far too narrow), so the job counts per variant and
user group (32 groups by a hash of the user id): the standard errors take the groups, and so
whole users, as the unit (delta method). The verdict is a two-sided z-test on the hit rate
against the first variant of the experiment file (``experiments.file``) at the 5 % level.
"""

from __future__ import annotations

import argparse
import http.client
import math
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from freshrec_common.metrics import JOB_METRICS, exported_names
from online_models.experiments import (
    USER_GROUPS,
    Experiment,
    ExperimentError,
    clustered_rate,
    compare_clustered,
)

KINDS = ("lists", "tests", "hits", "hits_at_10")


def _series(kind: str) -> str:
    return exported_names(JOB_METRICS[f"freshrec_job_experiment_{kind}_total"])[0]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "experiments", help="per-variant live figures with confidence intervals",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prometheus", metavar="URL", default="http://127.0.0.1:9090",
                     help="Prometheus server to query (default %(default)s)")
    src.add_argument("--metrics", metavar="URL",
                     help="read a metrics endpoint instead, e.g. the job's "
                          "http://127.0.0.1:9249/metrics")
    p.add_argument("--window", default="",
                   help="with --prometheus: only this range, e.g. 1h (default: since start)")
    p.set_defaults(func=run)


Cells = dict[str, dict[str, dict[str, float]]]
"""variant -> user group ("" for the lists counter, which has none) -> kind -> count."""


def _add(cells: Cells, variant: str, group: str, kind: str, value: float) -> None:
    row = cells.setdefault(variant, {}).setdefault(group, dict.fromkeys(KINDS, 0.0))
    row[kind] += value


def counts_from_exposition(text: str) -> Cells:
    """The experiment counters in a Prometheus text exposition, summed over subtasks per
    variant and user group."""
    from prometheus_client.parser import text_string_to_metric_families

    names = {_series(k): k for k in KINDS}
    out: Cells = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            kind = names.get(sample.name) or names.get(sample.name.removesuffix("_total"))
            variant = sample.labels.get("variant")
            if kind is None or variant is None:
                continue
            _add(out, variant, sample.labels.get("user_group", ""), kind, sample.value)
    return out


def counts_from_prometheus(url: str, window: str = "") -> Cells:
    """The experiment counters from a Prometheus server, per variant and user group."""
    from urllib.parse import urlencode

    from devstack.prometheus import http_get_json

    out: Cells = {}
    for kind in KINDS:
        series = _series(kind)
        expr = (f"sum by (variant, user_group) (increase({series}[{window}]))" if window
                else f"sum by (variant, user_group) ({series})")
        doc = http_get_json(f"{url.rstrip('/')}/api/v1/query?{urlencode({'query': expr})}", 10)
        if doc.get("status") != "success":
            raise ValueError(f"query {expr!r} failed: {doc}")
        for r in doc["data"]["result"]:
            variant = r["metric"].get("variant")
            if variant is not None:
                _add(out, variant, r["metric"].get("user_group", ""), kind, float(r["value"][1]))
    return out


def totals(cells: Cells) -> dict[str, dict[str, float]]:
    """Per variant, each counter summed over its user groups."""
    return {variant: {kind: sum(row[kind] for row in groups.values()) for kind in KINDS}
            for variant, groups in cells.items()}


def _per_group(groups: Mapping[str, Mapping[str, float]], kind: str) -> list[tuple[int, int]]:
    """(tests, hits of ``kind``) of each user group: the units of the intervals."""
    return [(int(row["tests"]), int(row[kind])) for group, row in sorted(groups.items())
            if group and row["tests"]]


def _interval(per_group: list[tuple[int, int]]) -> tuple[float, str]:
    rate, se = clustered_rate(per_group)
    if not math.isfinite(se):
        return rate, "n/a"
    return rate, f"[{max(rate - 1.96 * se, 0.0):.4f}, {min(rate + 1.96 * se, 1.0):.4f}]"


def report(cells: Cells, order: Sequence[str]) -> str:
    """The table: per variant lists, tests, hit rate and Recall@10 with 95 % intervals, and
    against the first variant the difference, p-value and verdict; users (in groups) are
    the unit of every interval and test."""
    names = [n for n in order if n in cells] + sorted(set(cells) - set(order))
    lines = [f"{'variant':<16}{'lists':>10}{'tests':>10}{'hit rate':>10}{'95% CI':>18}"
             f"{'recall@10':>11}{'95% CI':>18}{'vs ' + (names[0] if names else ''):>14}"
             f"{'p':>8}  verdict", "-" * 124]
    if not names:
        return "\n".join([*lines, "no experiment figures yet (is experiments.file set and "
                                  "have lists been shown?)"])
    sums = totals(cells)
    base = _per_group(cells[names[0]], "hits")
    for name in names:
        hits = _per_group(cells[name], "hits")
        rate, ci = _interval(hits)
        r10, ci10 = _interval(_per_group(cells[name], "hits_at_10"))
        line = (f"{name:<16}{int(sums[name]['lists']):>10,}{int(sums[name]['tests']):>10,}"
                f"{rate:>10.4f}{ci:>18}{r10:>11.4f}{ci10:>18}")
        if name != names[0]:
            diff, p = compare_clustered(base, hits)
            line += (f"{diff:>+14.4f}{p:>8.3f}  "
                     f"{'significant' if p < 0.05 else 'not significant'}")
        lines.append(line)
    lines.append("hit rate = Recall@top_k of the list shown before each event (test-then-"
                 "learn); 95 % intervals and the two-sided z-test take the user as the unit "
                 f"(standard errors over the {USER_GROUPS} user groups of each variant).")
    return "\n".join(lines)


def read_exposition(url: str, attempts: int = 3, pause_s: float = 1.0) -> str:
    """The text a metrics endpoint serves. A connection closed without an answer is tried
    again: Flink's Prometheus reporter closes a scrape that way when collecting a metric
    fails (seen once, while a new job registered its metrics); Prometheus itself would just
    take the next scrape."""
    for _ in range(attempts - 1):
        try:
            return _read(url)
        except (http.client.RemoteDisconnected, ConnectionResetError):
            time.sleep(pause_s)
    return _read(url)


def _read(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode("utf-8", "replace")


def run(args: argparse.Namespace, settings: Any) -> int:
    """Entry point of ``freshrec experiments``."""
    order: list[str] = []
    if settings.experiments.file:
        try:
            order = Experiment.load(settings.experiments.file).names
        except ExperimentError as exc:
            print(f"freshrec experiments: experiments.file: {exc}", file=sys.stderr)
            return 2
    try:
        if args.metrics:
            counts = counts_from_exposition(read_exposition(args.metrics))
        else:
            counts = counts_from_prometheus(args.prometheus, args.window)
    except (OSError, ValueError) as exc:
        source = args.metrics or args.prometheus
        print(f"freshrec experiments: cannot read {source}: {exc}", file=sys.stderr)
        return 1
    print(report(counts, order))
    return 0
