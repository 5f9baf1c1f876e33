"""``freshrec experiments``: each variant's live figures with 95 % intervals and whether it
differs significantly from the first (control) variant.

The figures are the job's per-variant counters (``freshrec_job_experiment_*_total``): read
from a Prometheus server (``--prometheus URL``: summed over subtasks, since the job started
or over ``--window``), or straight from the job's metrics endpoint (``--metrics URL``, the
Flink Prometheus reporter at ``job.metrics_port``; summed over subtasks since the job
started). Tests are events whose user had been shown a list before them; a hit is the
event's item in that list, so hits / tests is the variant's prequential hit rate
(Recall@top_k) and hits_at_10 / tests its Recall@10. The verdict is a two-sided
two-proportion z-test on the hit rate against the first variant of the experiment file
(``experiments.file``) at the 5 % level. The counters hold no per-user counts, so tests are
taken as independent: with heavy users the interval is too narrow (docs/model.md).
"""

from __future__ import annotations

import argparse
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from freshrec_common.metrics import JOB_METRICS, exported_names
from online_models.experiments import Experiment, ExperimentError, compare, proportion_ci

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


def counts_from_exposition(text: str) -> dict[str, dict[str, float]]:
    """Per-variant sums of the experiment counters in a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    names = {_series(k): k for k in KINDS}
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            kind = names.get(sample.name) or names.get(sample.name.removesuffix("_total"))
            variant = sample.labels.get("variant")
            if kind is None or variant is None:
                continue
            row = out.setdefault(variant, dict.fromkeys(KINDS, 0.0))
            row[kind] += sample.value
    return out


def counts_from_prometheus(url: str, window: str = "") -> dict[str, dict[str, float]]:
    """Per-variant sums of the experiment counters from a Prometheus server."""
    from urllib.parse import urlencode

    from devstack.prometheus import http_get_json

    out: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        series = _series(kind)
        expr = (f"sum by (variant) (increase({series}[{window}]))" if window
                else f"sum by (variant) ({series})")
        doc = http_get_json(f"{url.rstrip('/')}/api/v1/query?{urlencode({'query': expr})}", 10)
        if doc.get("status") != "success":
            raise ValueError(f"query {expr!r} failed: {doc}")
        result = doc["data"]["result"]
        for r in result:
            variant = r["metric"].get("variant")
            if variant is not None:
                out.setdefault(variant, dict.fromkeys(KINDS, 0.0))[kind] = float(r["value"][1])
    return out


def report(counts: Mapping[str, Mapping[str, float]], order: Sequence[str]) -> str:
    """The table: per variant lists, tests, hit rate and Recall@10 with Wilson 95 %
    intervals, and against the first variant the difference, p-value and verdict."""
    names = [n for n in order if n in counts] + sorted(set(counts) - set(order))
    lines = [f"{'variant':<16}{'lists':>10}{'tests':>10}{'hit rate':>10}{'95% CI':>18}"
             f"{'recall@10':>11}{'95% CI':>18}{'vs ' + (names[0] if names else ''):>14}"
             f"{'p':>8}  verdict", "-" * 124]
    if not names:
        return "\n".join([*lines, "no experiment figures yet (is experiments.file set and "
                                  "have lists been shown?)"])
    base = counts[names[0]]
    for name in names:
        c = counts[name]
        tests, hits, top10 = int(c["tests"]), int(c["hits"]), int(c["hits_at_10"])
        rate = hits / tests if tests else 0.0
        r10 = top10 / tests if tests else 0.0
        lo, hi = proportion_ci(hits, tests)
        lo10, hi10 = proportion_ci(top10, tests)
        line = (f"{name:<16}{int(c['lists']):>10,}{tests:>10,}{rate:>10.4f}"
                f"{f'[{lo:.4f}, {hi:.4f}]':>18}{r10:>11.4f}{f'[{lo10:.4f}, {hi10:.4f}]':>18}")
        if name != names[0]:
            diff, p = compare(int(base["hits"]), int(base["tests"]), hits, tests)
            line += (f"{diff:>+14.4f}{p:>8.3f}  "
                     f"{'significant' if p < 0.05 else 'not significant'}")
        lines.append(line)
    lines.append("hit rate = Recall@top_k of the list shown before each event (test-then-"
                 "learn); Wilson intervals; p: two-sided two-proportion z-test on the hit rate."
                 "\nTests are counted as independent: where a few users make many events the "
                 "intervals are too narrow (replay --experiments tests with users as units).")
    return "\n".join(lines)


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
            with urllib.request.urlopen(args.metrics, timeout=10) as resp:
                counts = counts_from_exposition(resp.read().decode("utf-8", "replace"))
        else:
            counts = counts_from_prometheus(args.prometheus, args.window)
    except (OSError, ValueError) as exc:
        source = args.metrics or args.prometheus
        print(f"freshrec experiments: cannot read {source}: {exc}", file=sys.stderr)
        return 1
    print(report(counts, order))
    return 0
