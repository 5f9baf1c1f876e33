"""Event codec speed: ``decode_event`` against the ``jsonschema`` package, same events, one run.

Both sides start from the same encoded bytes: the baseline is ``json.loads`` plus a
precompiled Draft 2020-12 validator (with date-time format checking), i.e. what a
straightforward implementation would do. Goals: >= 5x the baseline and
>= 100k events/s on one core.

Usage::

    .venv/bin/python -m bench.bench_codec [--n 100000] [--seed 1] [--cpu 0]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jsonschema

from freshrec.generator import generate_events
from schemas.event_fields import EVENT_SCHEMA, DecodeError
from schemas.events import decode_event, encode_event

GOAL_RATIO = 5.0
GOAL_RATE = 100_000.0


def _best_of(repeats: int, fn: object, payloads: list[bytes]) -> tuple[float, int]:
    """Best wall time of ``repeats`` passes (least disturbed by other processes)."""
    best, accepted = float("inf"), 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        accepted = fn(payloads)  # type: ignore[operator]
        best = min(best, time.perf_counter() - t0)
    return best, accepted


def run_codec(payloads: list[bytes]) -> int:
    ok = 0
    for p in payloads:
        if type(decode_event(p)) is not DecodeError:
            ok += 1
    return ok


def make_jsonschema_runner() -> object:
    cls = jsonschema.Draft202012Validator
    validator = cls(EVENT_SCHEMA, format_checker=cls.FORMAT_CHECKER)  # compiled once
    is_valid = validator.is_valid
    loads = json.loads

    def run(payloads: list[bytes]) -> int:
        ok = 0
        for p in payloads:
            if is_valid(loads(p)):
                ok += 1
        return ok

    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="events (default 100000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="codec passes; best is kept")
    ap.add_argument("--cpu", type=int, default=None, help="pin to this CPU (one core)")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "codec.json"))
    args = ap.parse_args(argv)
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    payloads = [encode_event(e) for e in generate_events(args.n, seed=args.seed)]
    size = sum(map(len, payloads)) / len(payloads)
    print(f"{len(payloads)} generated events, mean {size:.0f} bytes")

    codec_s, codec_ok = _best_of(args.repeats, run_codec, payloads)
    # The baseline is ~25x slower: one pass is long enough to be stable.
    base_s, base_ok = _best_of(1, make_jsonschema_runner(), payloads)
    codec_rate, base_rate = len(payloads) / codec_s, len(payloads) / base_s
    ratio = codec_rate / base_rate
    print(f"decode_event          : {codec_rate:12,.0f} events/s  ({codec_ok} valid)")
    print(f"jsonschema+json.loads : {base_rate:12,.0f} events/s  ({base_ok} valid)")
    print(f"ratio                 : {ratio:12.1f}x  (goal >= {GOAL_RATIO:g}x)")
    verdicts = []
    if codec_ok != base_ok:
        verdicts.append(f"codec and jsonschema disagree: {codec_ok} vs {base_ok} valid")
    if ratio < GOAL_RATIO:
        verdicts.append(f"ratio {ratio:.1f}x below {GOAL_RATIO:g}x")
    if codec_rate < GOAL_RATE:
        verdicts.append(f"{codec_rate:,.0f} events/s below {GOAL_RATE:,.0f}")
    print("goals: met" if not verdicts else "goals: MISSED: " + "; ".join(verdicts))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "events": len(payloads), "mean_bytes": round(size, 1),
        "codec_events_per_s": round(codec_rate, 1), "jsonschema_events_per_s": round(base_rate, 1),
        "ratio": round(ratio, 2), "goal_ratio": GOAL_RATIO, "goal_events_per_s": GOAL_RATE,
        "missed": verdicts}, indent=2) + "\n", "utf-8")
    print(f"JSON: {out}")
    return 0 if not verdicts else 1


if __name__ == "__main__":
    sys.exit(main())
