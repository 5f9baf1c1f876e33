"""``freshrec replay``: prequential evaluation of freshrec and baselines on a log.

Reads any adapter-readable log (``freshrec.datasets.read_events``), orders it by event
time, and runs test-then-learn (docs/model.md) for every selected model on the same stream
in the same run; prints a table and optionally writes JSON and a PNG of rolling
Recall@20 over time. ``--tune`` first picks learning rate, dimensions and L2 on a
time-ordered prefix of the log (early stopping on prequential recall), then replays the
rest of the log with the tuned model (``freshrec_tuned``) next to the default one
(``freshrec``) and the baselines, all in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from freshrec.datasets import FORMATS, AdapterErrors, read_events
from freshrec.replay_workers import (
    PartResult,
    ReplayPart,
    WorkerError,
    default_workers,
    groups,
    replay_in_workers,
)
from online_models.config import ModelConfig
from online_models.eval_results import ModelResult
from online_models.evaluate import COLD_BELOW, Progress, prequential
from online_models.experiments import (
    Experiment,
    ExperimentError,
    clustered_rate,
    compare_clustered,
)
from online_models.replay_models import MODEL_NAMES, make_model
from schemas.events import Event

if TYPE_CHECKING:  # River and SciPy load when a replay runs, not with every CLI command
    from online_models.experiment_model import ExperimentModel

TUNED = "freshrec_tuned"
FRESHREC = ("freshrec", TUNED)  # never counted as baselines
EXPERIMENT = "experiment"  # the experiment's variants among the replayed models
TUNE_GRID: dict[str, tuple[float, ...]] = {
    "learning_rate": (0.02, 0.05, 0.1),
    "dim": (16, 32, 64),
    "l2": (1e-5, 1e-4, 1e-3),
}


def register(subparsers: Any) -> None:
    """Add ``freshrec replay``."""
    p = subparsers.add_parser(
        "replay", help="prequential evaluation of the model and baselines on a log",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", help="event log file (.gz is read through gzip)")
    p.add_argument("--format", required=True, choices=FORMATS, dest="fmt",
                   help="log format (jsonl = event v1, one per line)")
    p.add_argument("--models", default=",".join(MODEL_NAMES),
                   help=f"comma-separated models (default: {','.join(MODEL_NAMES)})")
    p.add_argument("--json", dest="json_out", metavar="OUT.json", help="write figures as JSON")
    p.add_argument("--plot", metavar="OUT.png", help="plot rolling Recall@20 over the tests")
    p.add_argument("--k", type=int, default=20, help="list length (default 20)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N events")
    p.add_argument("--eval-every", type=int, default=1,
                   help="test one eligible event in N (all are learned from; default 1)")
    p.add_argument("--tune", action="store_true",
                   help="pick learning_rate, dim and l2 on a prefix, then replay the rest "
                        f"with the tuned model ({TUNED}) next to the default one")
    p.add_argument("--tune-fraction", type=float, default=0.3,
                   help="share of the log (time-ordered) used for tuning (default 0.3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--experiments", metavar="FILE",
                   help="also replay the variants of this experiment file side by side "
                        "(users split by keyed hash, one shared item side; docs/model.md)")
    p.add_argument("--workers", type=int, default=0,
                   help="processes the models are split over (default: one per CPU for a "
                        "log of 20,000 events or more, else 1); the figures are the same")
    p.add_argument("--metrics-port", type=int, default=0,
                   help="serve Prometheus /metrics (freshrec_replay_*) on this port")
    p.set_defaults(func=run)


def build_models(keys: Sequence[str], config: ModelConfig, tuned: ModelConfig | None,
                 experiment_file: str | None) -> tuple[dict[str, Any], str | None]:
    """The models of a replay by key (a model name, :data:`TUNED` or :data:`EXPERIMENT`),
    and the experiment's key if it is among them."""
    from online_models.experiment_model import ExperimentModel

    models: dict[str, Any] = {}
    for key in keys:
        if key == EXPERIMENT:
            assert experiment_file is not None
            models[key] = ExperimentModel(Experiment.load(experiment_file), config)
        elif key == TUNED:
            assert tuned is not None
            models[key] = make_model("freshrec", tuned)
        else:
            models[key] = make_model(key, config)
    return models, (EXPERIMENT if EXPERIMENT in models else None)


def _log_line(line: str) -> None:
    """A line of its own on stderr, under the progress line."""
    print(f"\nfreshrec replay: {line}", file=sys.stderr)


def replay_group(part: ReplayPart, events: Sequence[Event], progress: Any) -> PartResult:
    """Test-then-learn of a part's models over ``events``; their results and the
    experiment's report if the part has it."""
    models, experiment = build_models(part.names, part.config, part.tuned, part.experiment)
    results = prequential(models, events, k=part.k, progress=progress,
                          eval_every=part.eval_every, warmup=part.warmup)
    return results, (format_experiment(models[experiment]) if experiment else None)


def replay_part(part: ReplayPart, progress: Any) -> PartResult:
    """A worker's replay: it reads the log itself."""
    events, _ = load_events(part.path, part.fmt, part.limit)
    return replay_group(part, events, progress)


def load_events(path: str | Path, fmt: str, limit: int = 0) -> tuple[list[Event], int]:
    """Events of a log ordered by event time (stable), and the number of skipped rows."""
    errors = AdapterErrors()
    events: list[Event] = []
    for ev in read_events(path, fmt, errors):
        events.append(ev)
        if limit and len(events) >= limit:
            break
    events.sort(key=lambda e: e.ts_ms)
    return events, len(errors.rows)


def tune(events: Sequence[Event], base: ModelConfig, log: Any = None
         ) -> tuple[ModelConfig, list[tuple[dict[str, float], float]]]:
    """Coordinate search over :data:`TUNE_GRID` on a time-ordered split of ``events``.

    Each candidate learns the first 70% silently and is scored by prequential Recall@20
    on the last 30%; a candidate whose running recall trails the best by more than 20%
    at mid-run is stopped early. Returns the chosen config and every trial.
    """
    log = sys.stderr if log is None else log
    split = int(len(events) * 0.7)
    best_cfg, best = base, -1.0
    trials: list[tuple[dict[str, float], float]] = []
    for key, values in TUNE_GRID.items():
        for value in values:
            cfg = best_cfg.replace(**{key: value})
            mid = split + (len(events) - split) // 2
            seen = [0]

            def stop(res: dict[str, ModelResult], mid: int = mid, seen: list[int] = seen,
                     best: float = best) -> bool:
                seen[0] += 1000
                r = res["freshrec"]
                return (best > 0 and seen[0] >= mid and r.n_evaluated > 100
                        and r.recall(20) < 0.8 * best)

            # Tuning ranks by Recall@20 only: no AUC negatives to draw.
            res = prequential({"freshrec": make_model("freshrec", cfg)}, events, warmup=split,
                              stop=stop, negatives=0)["freshrec"]
            score = res.recall(20)
            trial = {"learning_rate": cfg.learning_rate, "dim": cfg.dim, "l2": cfg.l2}
            trials.append((trial, score))
            print(f"tune: {trial} recall@20={score:.4f}", file=log)
            if score > best:
                best, best_cfg = score, cfg
    return best_cfg, trials


def _ratio_lines(results: dict[str, ModelResult], what: str,
                 recall: Callable[[ModelResult], float], goal: float) -> list[str]:
    """``freshrec`` (and ``freshrec_tuned``) over the best baseline by ``recall``."""
    baselines = [r for n, r in results.items() if n not in FRESHREC and n != EXPERIMENT]
    if not baselines:
        return []
    base = max(baselines, key=recall)
    lines = []
    for name in FRESHREC:
        if name not in results:
            continue
        f, b = recall(results[name]), recall(base)
        if f == 0.0 and b == 0.0:  # a ratio of nothing to nothing says nothing: NOT met
            lines.append(f"{name} {what} / best baseline ({base.name}): no hits by any "
                         f"model (goal >= {goal:.2f}x: NOT met)")
            continue
        ratio = f / b if b > 0 else float("inf")  # any hit beats none
        lines.append(f"{name} {what} / best baseline ({base.name}): {ratio:.2f}x "
                     f"(goal >= {goal:.2f}x: {'met' if ratio >= goal else 'NOT met'})")
    return lines


def format_table(results: dict[str, ModelResult], tuned: str = "") -> str:
    """The replay table (one row per model, best-baseline ratio for freshrec), then
    Recall@20 on the cold-user and cold-item slices with their ratios; ``tuned`` is the
    footnote of the ``freshrec_tuned`` row."""
    head = (f"{'model':<16}{'recall@10':>10}{'recall@20':>10}{'ndcg@20':>9}{'mrr':>8}"
            f"{'auc':>7}{'coverage':>9}{'learn ev/s':>11}{'rec p99 ms':>11}{'tested':>8}")
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        a = r.overall
        label = f"{name}*" if name == TUNED and tuned else name
        lines.append(
            f"{label:<16}{a.recall(10):>10.4f}{a.recall(20):>10.4f}{a.ndcg20:>9.4f}"
            f"{a.mrr:>8.4f}{a.auc:>7.3f}{r.coverage:>9.3f}{r.learn_events_per_s:>11,.0f}"
            f"{r.rec_percentile(99):>11.3f}{r.n_evaluated:>8}"
        )
    if tuned and TUNED in results:
        lines += [f"* {TUNED}: {tuned}", "  the other models: default settings"]
    lines += _ratio_lines(results, "Recall@20", lambda r: r.recall(20), 1.2)
    if not results:
        return "\n".join(lines)
    first = next(iter(results.values()))  # every model is tested on the same events
    titles = {"cold_users": "cold users", "cold_items": "cold items",
              "repeat_items": "repeat items", "new_to_user": "new to user"}
    head = f"{'Recall@20 on':<16}" + "".join(f"{t:>14}" for t in titles.values())
    lines += ["", head, "-" * len(head),
              f"{'tests':<16}" + "".join(f"{first.slices[s].n_evaluated:>14,}" for s in titles)]
    for name, r in results.items():
        lines.append(f"{name:<16}" + "".join(f"{r.slices[s].recall(20):>14.4f}" for s in titles))
    lines += [f"cold: fewer than {COLD_BELOW} earlier interactions of the user / of the item",
              "repeat: the user had interacted with the item before (new to user: not)"]
    for s, title in list(titles.items())[:2]:
        if first.slices[s].n_evaluated:
            lines += _ratio_lines(results, f"{title} R@20",
                                  lambda r, s=s: r.slices[s].recall(20), 1.0)
    return "\n".join(lines)


def format_experiment(model: ExperimentModel) -> str:
    """Each variant's users, tests and Recall@20 (its hit rate: one relevant item per test)
    with a 95 % interval, and each variant against the first: difference, p-value and
    verdict at 5 %, all with users as the unit (a user's tests are not independent)."""
    experiment = model.experiment
    first = experiment.names[0]
    lines = [f"{'variant':<16}{'share':>7}{'users':>8}{'tests':>9}{'recall@20':>11}"
             f"{'95% CI':>18}{'vs ' + first:>16}{'p':>8}  verdict", "-" * 101]
    base = [tuple(c) for c in model.per_user[first].values()]
    for v in experiment.variants:
        users = [(t, h) for t, h in model.per_user[v.name].values()]
        rate, se = clustered_rate(users)
        lo, hi = max(rate - 1.96 * se, 0.0), min(rate + 1.96 * se, 1.0)
        line = (f"{v.name:<16}{v.share:>7.2f}{len(users):>8,}{sum(t for t, _ in users):>9,}"
                f"{rate:>11.4f}{f'[{lo:.4f}, {hi:.4f}]':>18}")
        if v.name != first:
            diff, p = compare_clustered(base, users)  # type: ignore[arg-type]
            line += f"{diff:>+16.4f}{p:>8.3f}  {'significant' if p < 0.05 else 'not significant'}"
        lines.append(line)
    lines.append("recall@20 = hit rate of the tested item in the list; intervals and the "
                 "z-test use user-clustered standard errors (delta method)")
    return "\n".join(lines)


def rolling_series(values: Iterable[float], window: int) -> list[float]:
    """Trailing moving average (for plots).

    >>> rolling_series([1, 0, 1, 1], 2)
    [1.0, 0.5, 0.5, 1.0]
    """
    out: list[float] = []
    buf: list[float] = []
    s = 0.0
    for v in values:
        buf.append(float(v))
        s += float(v)
        if len(buf) > window:
            s -= buf.pop(0)
        out.append(s / len(buf))
    return out


def plot(results: dict[str, ModelResult], out: str, window: int = 1000) -> bool:
    """Rolling Recall@20 over the tests; ``False`` (with a message) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("freshrec replay: --plot needs matplotlib; install it with "
              "`pip install matplotlib` (or the project's dev extras)", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(9, 4.5))
    longest = max((len(r.hit_series) for r in results.values()), default=0)
    w = max(10, min(window, longest // 10))
    for name, r in results.items():
        if not r.hit_series:
            continue
        # Against the test's number, not its time: logs have quiet hours and gaps, which
        # a time axis draws as long flat lines.
        ax.plot(range(1, len(r.hit_series) + 1), rolling_series(r.hit_series, w),
                label=f"{name} ({r.recall(20):.3f})", linewidth=1.2)
    ax.set_ylabel(f"Recall@20, mean of the last {w:,} tests")
    ax.set_xlabel("tests so far (in event-time order)")
    ax.set_title("freshrec replay: prequential Recall@20")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


class ReplayMetrics:
    """``freshrec replay --metrics-port``: progress of the replay, quality when done.

    Wraps the replay's progress bar, so the replay loop itself is unchanged.
    """

    def __init__(self, port: int, progress: Any) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

        from freshrec_common.metrics import PROCESS_METRICS as SPECS

        self.registry = CollectorRegistry()
        self.progress = progress
        # prometheus-client appends _total to counters itself.
        self.events = Counter("freshrec_replay_events", SPECS["freshrec_replay_events_total"].help,
                              registry=self.registry)
        rate = SPECS["freshrec_replay_rate_events_per_second"]
        self.rate = Gauge(rate.name, rate.help, registry=self.registry)
        recall = SPECS["freshrec_replay_recall"]
        self.recall = Gauge(recall.name, recall.help, recall.labels, registry=self.registry)
        self._start = time.perf_counter()
        start_http_server(port, registry=self.registry)

    def update(self, n: int = 1, note: str = "") -> None:
        self.events.inc(n)
        elapsed = time.perf_counter() - self._start
        self.rate.set(self.progress.n / elapsed if elapsed > 0 else 0.0)
        self.progress.update(n, note)

    def close(self, note: str = "") -> None:
        self.progress.close(note)

    def __getattr__(self, name: str) -> Any:  # total, n, ... of the wrapped progress bar
        return getattr(self.progress, name)

    def report(self, results: Mapping[str, Any]) -> None:
        for model, result in results.items():
            summary = result.summary() if hasattr(result, "summary") else dict(result)
            for key, value in summary.items():
                if key.startswith("recall@") and isinstance(value, int | float):
                    self.recall.labels(model=model, k=key.removeprefix("recall@")).set(value)


def run(args: argparse.Namespace, settings: Any) -> int:
    """Entry point of ``freshrec replay``."""
    import torch

    torch.set_num_threads(max(1, args.threads))
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODEL_NAMES]
    if unknown or not names:
        print(f"freshrec replay: unknown model(s) {', '.join(unknown) or '(none)'}; "
              f"choose from {', '.join(MODEL_NAMES)}", file=sys.stderr)
        return 2
    if not Path(args.path).exists():
        print(f"freshrec replay: {args.path} does not exist", file=sys.stderr)
        return 2
    if Path(args.path).is_dir():
        inside = ", ".join(sorted(p.name for p in Path(args.path).iterdir())[:5])
        print(f"freshrec replay: {args.path} is a directory; pass a log file in it "
              f"({inside or 'it is empty'})", file=sys.stderr)
        return 2
    if args.workers < 0:
        print(f"freshrec replay: --workers must be >= 0 (0: auto), got {args.workers}",
              file=sys.stderr)
        return 2
    cfg = settings.model
    t0 = time.perf_counter()
    events, skipped = load_events(args.path, args.fmt, args.limit)
    print(f"freshrec replay: {len(events):,} events from {args.path} ({args.fmt}), "
          f"{skipped} unmappable rows skipped, read in {time.perf_counter() - t0:.1f}s",
          file=sys.stderr)
    if not events:
        print("freshrec replay: no events to replay", file=sys.stderr)
        return 1
    warmup, tuned_cfg, note = 0, None, ""
    if args.tune:
        prefix = int(len(events) * args.tune_fraction)
        tuned_cfg, _ = tune(events[:prefix], cfg)
        choice = f"learning_rate={tuned_cfg.learning_rate} dim={tuned_cfg.dim} l2={tuned_cfg.l2}"
        print(f"tune: chose {choice} on the first {prefix:,} events; the replay tests only "
              f"the rest ({TUNED} next to the defaults)")
        note = f"{choice}, tuned on the first {prefix:,} events"
        warmup = prefix
        if "freshrec" not in names:  # the tuned model is always shown next to the default
            names.insert(0, "freshrec")
    if args.experiments:
        try:
            Experiment.load(args.experiments)
        except ExperimentError as exc:
            print(f"freshrec replay: --experiments: {exc}", file=sys.stderr)
            return 2
    keys = [EXPERIMENT] if args.experiments else []
    for n in names:
        keys += [n, TUNED] if n == "freshrec" and tuned_cfg is not None else [n]
    workers = args.workers or default_workers(len(events), len(keys))
    bar: Any = Progress(len(events), "replay")
    if args.metrics_port:
        bar = ReplayMetrics(args.metrics_port, bar)
    parts = [ReplayPart(str(args.path), args.fmt, args.limit, tuple(group), cfg, tuned_cfg,
                        args.experiments, args.k, args.eval_every, warmup, max(1, args.threads))
             for group in groups(keys, workers)]
    if len(parts) > 1:
        print(f"freshrec replay: {len(parts)} worker processes: "
              f"{'; '.join(', '.join(p.names) for p in parts)}", file=sys.stderr)
        try:
            results, report = replay_in_workers(replay_part, parts, keys, bar, _log_line)
        except WorkerError as exc:
            print(f"freshrec replay: {exc}", file=sys.stderr)
            return 1
    else:
        results, report = replay_group(parts[0], events, bar)
    bar.close()
    if args.metrics_port:
        bar.report(results)
    print(format_table(results, note))
    if report is not None:
        print()
        print(report)
    if args.json_out:
        doc = {name: r.summary() for name, r in results.items()}
        Path(args.json_out).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json_out}", file=sys.stderr)
    if args.plot and plot(results, args.plot):
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0
