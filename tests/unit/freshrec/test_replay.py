"""``freshrec replay`` end to end on a small generated JSONL log, and the prequential
figures on hand-built streams whose expected values are known."""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pytest

from freshrec.cli import main
from freshrec.generator import generate_events
from freshrec.replay import format_table
from freshrec.replay_workers import ReplayPart, WorkerError, replay_in_workers
from online_models.config import ModelConfig
from online_models.eval_results import ModelResult, SliceResult
from online_models.evaluate import Progress, prequential
from schemas.events import Event, encode_event
from schemas.recommendation import ScoredItem

QUALITY = {"recall@10", "recall@20", "ndcg@20", "precision@10", "precision@20", "f1@10",
           "f1@20", "mrr", "hit_rate@20", "auc_sampled", "evaluated"}
KEYS = QUALITY | {"coverage", "learn_events_per_s", "recommend_p50_ms", "recommend_p99_ms",
                  "drifts", "auc_method", "slices"}


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("replay") / "events.jsonl"
    events = generate_events(1200, seed=9, n_users=60, n_items=300, n_categories=8)
    path.write_bytes(b"\n".join(encode_event(e) for e in events) + b"\n")
    return path


def test_replay_prints_table_and_writes_json(log: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out, png = tmp_path / "out.json", tmp_path / "rolling.png"
    rc = main(["replay", str(log), "--format", "jsonl", "--models",
               "freshrec,popularity,recent,item_knn,sknn,river_funkmf,river_biasedmf", "--json",
               str(out), "--plot", str(png)])
    assert rc == 0
    head = png.read_bytes()[:24]  # the PNG signature, then the IHDR chunk's width and height
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")) == (990, 495)
    doc = json.loads(out.read_text())
    assert set(doc) == {"freshrec", "popularity", "recent", "item_knn", "sknn", "river_funkmf",
                        "river_biasedmf"}
    for figures in doc.values():
        assert set(figures) == KEYS
        assert set(figures["slices"]) == {"cold_users", "cold_items", "repeat_items",
                                          "new_to_user"}
        for part in figures["slices"].values():
            assert set(part) == QUALITY
            assert 0 < part["evaluated"] < figures["evaluated"]
        parts = figures["slices"]
        # Every test is either a repeat or new to its user, and its hits are in one of them.
        assert (parts["repeat_items"]["evaluated"] + parts["new_to_user"]["evaluated"]
                == figures["evaluated"])
        hits = sum(parts[s]["recall@20"] * parts[s]["evaluated"]
                   for s in ("repeat_items", "new_to_user"))
        assert hits == pytest.approx(figures["recall@20"] * figures["evaluated"], abs=0.01)
        assert 0.0 <= figures["recall@10"] <= figures["recall@20"] <= 1.0
        assert figures["hit_rate@20"] == figures["recall@20"]
        assert figures["precision@20"] == pytest.approx(figures["recall@20"] / 20, abs=1e-5)
        assert 0.0 < figures["auc_sampled"] < 1.0
        assert figures["learn_events_per_s"] > 0
    # Every model is tested on the same events, slices included.
    assert len({json.dumps({s: f["slices"][s]["evaluated"] for s in f["slices"]})
                for f in doc.values()}) == 1
    # The planted tastes make the default model beat popularity clearly.
    assert doc["freshrec"]["recall@20"] > doc["popularity"]["recall@20"]
    captured = capsys.readouterr()
    assert "recall@20" in captured.out and "freshrec" in captured.out
    assert "cold users" in captured.out and "cold items R@20 / best baseline" in captured.out
    assert max(len(line) for line in captured.out.splitlines()) < 100
    assert "replay [" in captured.err  # progress bar on stderr


def test_replay_rejects_unknown_model(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(log), "--format", "jsonl", "--models", "magic"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_replay_names_the_files_of_a_directory(log: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(log.parent), "--format", "jsonl"]) == 2
    err = capsys.readouterr().err
    assert "is a directory; pass a log file in it" in err and log.name in err


def test_replay_tune_reports_tuned_next_to_defaults(log: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out_json = tmp_path / "tune.json"
    rc = main(["replay", str(log), "--format", "jsonl", "--models", "popularity", "--tune",
               "--tune-fraction", "0.5", "--json", str(out_json)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "tune: chose learning_rate=" in out
    # The default model is added next to the tuned one, both tested on the rest only.
    doc = json.loads(out_json.read_text())
    assert list(doc) == ["freshrec", "freshrec_tuned", "popularity"]
    assert len({f["evaluated"] for f in doc.values()}) == 1
    assert "freshrec_tuned*" in out and "* freshrec_tuned: learning_rate=" in out
    assert "freshrec_tuned Recall@20 / best baseline (popularity)" in out
    assert "freshrec Recall@20 / best baseline (popularity)" in out


def test_replay_in_worker_processes_gives_the_same_figures(log: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    """The models split over two spawned workers (the tuned model and an experiment's
    variants among them) give every figure of one process; only the timings differ."""
    exp_file = tmp_path / "experiment.toml"
    exp_file.write_text('key = "t"\n[variants.a]\nshare = 0.5\n[variants.b]\nshare = 0.5\n'
                        'trending_only = true\n')
    docs, outs = [], []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.json"
        assert main(["replay", str(log), "--format", "jsonl", "--models",
                     "popularity,item_knn,sknn", "--tune", "--tune-fraction", "0.3",
                     "--experiments", str(exp_file), "--workers", str(workers),
                     "--json", str(out)]) == 0
        captured = capsys.readouterr()
        outs.append(captured.out)
        docs.append(json.loads(out.read_text()))
    assert "2 worker processes: " in captured.err
    timings = {"learn_events_per_s", "recommend_p50_ms", "recommend_p99_ms"}
    one, two = ({m: {k: v for k, v in f.items() if k not in timings} for m, f in d.items()}
                for d in docs)
    assert list(two) == list(one) == ["experiment", "freshrec", "freshrec_tuned", "popularity",
                                      "item_knn", "sknn"]
    assert two == one and one["freshrec"]["evaluated"] > 0
    report = [line for line in outs[0].splitlines() if line.startswith(("a ", "b "))]
    assert len(report) == 2 and report == [line for line in outs[1].splitlines()
                                 if line.startswith(("a ", "b "))]


def _failing_replay(part: ReplayPart, progress: object) -> None:
    raise ValueError(f"no log for {part.names[0]}")


def test_a_failed_worker_is_reported_with_its_models_and_error(log: Path) -> None:
    part = ReplayPart(str(log), "jsonl", 0, ("popularity", "recent"), ModelConfig(), None, None,
                      20, 1, 0, 1)
    with pytest.raises(WorkerError, match=r"(?s)worker of popularity, recent failed.*"
                                          r"ValueError: no log for popularity"):
        replay_in_workers(_failing_replay, [part], ["popularity", "recent"], Progress(None),
                          print)


def test_replay_rejects_negative_workers(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(log), "--format", "jsonl", "--workers", "-1"]) == 2
    assert "--workers must be >= 0" in capsys.readouterr().err


# -- figures on a hand-built stream ----------------------------------------------------

CATALOGUE = [f"i{j:02d}" for j in range(30)]  # the fake models' fixed order


class FixedRanking:
    """Always lists the catalogue in its fixed order (minus exclusions); learns nothing."""

    def __init__(self) -> None:
        self.known: set[str] = set()

    @property
    def n_items(self) -> int:
        return len(self.known)

    def learn_one(self, event: Event) -> None:
        if event.item_id is not None:
            self.known.add(event.item_id)

    def recommend(self, user_id: str, k: int = 20, exclude: Iterable[str] = ()
                  ) -> list[ScoredItem]:
        ex = set(exclude)
        return [ScoredItem(i, -float(j), "fixed") for j, i in enumerate(CATALOGUE)
                if i not in ex][:k]


class FixedScores(FixedRanking):
    """The same order, with full scores: unlisted catalogue items keep their order and
    items outside the catalogue score lowest."""

    def score_items(self, user_id: str, item_ids: Sequence[str]) -> np.ndarray:
        return np.array([-float(CATALOGUE.index(i)) if i in CATALOGUE else -1e9
                         for i in item_ids])


def _hand_stream() -> tuple[list[Event], int]:
    """A warm-up user touches every catalogue item 3 times (no item is cold), then user
    ``u`` makes the tested events; returns the events and the warm-up length."""
    evs = [Event(f"w{n}", "view", n, user_id="w", item_id=CATALOGUE[n % 30])
           for n in range(90)]
    script = [("view", "i05"),      # u's first event: no history, not tested
              ("view", "i00"),      # rank 0, cold user (1 earlier event)
              ("view", "i12"),      # rank 12, cold user (2)
              ("view", "i25"),      # not in the top 20
              ("view", "new"),      # never seen: cold item, not listed
              ("purchase", "i01"),  # rank 1
              ("view", "i01"),      # already bought: not tested
              ("view", "i02")]      # i01 excluded, so rank 1
    evs += [Event(f"u{n}", t, 100 + n, user_id="u", item_id=i)
            for n, (t, i) in enumerate(script)]
    return evs, 90


def test_figures_on_a_known_ranking() -> None:
    events, warmup = _hand_stream()
    res = prequential({"list": FixedRanking(), "scores": FixedScores()}, events,
                      warmup=warmup)
    r = res["list"].overall
    # ranks 0, 12, absent, absent, 1, 1
    assert r.n_evaluated == 6
    assert r.recall(10) == pytest.approx(3 / 6)
    assert r.recall(20) == r.hit_rate(20) == pytest.approx(4 / 6)
    assert r.precision(10) == pytest.approx(3 / 60)
    assert r.precision(20) == pytest.approx(4 / 120)
    assert r.f1(10) == pytest.approx(2 * (3 / 6) / 11)  # 2PR/(P+R) with P = R/k
    assert r.f1(20) == pytest.approx(2 * (4 / 6) / 21)
    assert r.mrr == pytest.approx((1 + 1 / 13 + 0 + 0 + 1 / 2 + 1 / 2) / 6)
    assert r.ndcg20 == pytest.approx((1 + 1 / math.log2(14) + 2 / math.log2(3)) / 6)
    # Fewer than 100 candidates: every seen item but the target (and purchases) is a
    # negative. From the list: listed negatives above the target win; unlisted ones tie
    # with an unlisted target.
    list_auc = [1.0,              # i00 first of 29
                17 / 29,          # i12 below 12 of 29
                0.5 * 9 / 29,     # i25 unlisted: 20 negatives listed, 9 ties
                0.5 * 10 / 30,    # "new": 30 negatives, 20 listed, 10 ties
                29 / 30,          # i01 below i00 ("new" is a negative now)
                28 / 29]          # i02 below i00; i01 is bought, not a negative
    assert r.auc == pytest.approx(sum(list_auc) / 6)
    # With full scores the unlisted items are ordered too.
    score_auc = [1.0, 17 / 29, 4 / 29, 0.0, 29 / 30, 28 / 29]
    assert res["scores"].overall.auc == pytest.approx(sum(score_auc) / 6)
    assert res["scores"].summary()["auc_method"] == "score_items"
    assert res["list"].summary()["auc_method"] == "list"
    # Slices: u's 2nd and 3rd events are cold-user tests; "new" is the only cold item.
    cu, ci = res["list"].slices["cold_users"], res["list"].slices["cold_items"]
    assert (cu.n_evaluated, cu.recall(10), cu.recall(20)) == (2, 0.5, 1.0)
    assert cu.mrr == pytest.approx((1 + 1 / 13) / 2)
    assert cu.auc == pytest.approx((1.0 + 17 / 29) / 2)
    assert (ci.n_evaluated, ci.recall(20), ci.mrr) == (1, 0.0, 0.0)
    assert ci.auc == pytest.approx(0.5 * 10 / 30)
    # Nothing in this stream is interacted with twice by its user: no repeat tests.
    rep, new = res["list"].slices["repeat_items"], res["list"].slices["new_to_user"]
    assert (rep.n_evaluated, new.n_evaluated) == (0, 6)
    # The other figures are identical for both models (same lists).
    for key in ("recall@10", "recall@20", "ndcg@20", "mrr", "f1@20", "evaluated"):
        assert res["list"].summary()[key] == res["scores"].summary()[key]


class HashedScores(FixedRanking):
    """Fixed pseudo-random scores per item; records every ``score_items`` call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, list[str]]] = []

    @staticmethod
    def _score(item: str) -> float:
        return zlib.crc32(item.encode()) / 2**32

    def recommend(self, user_id: str, k: int = 20, exclude: Iterable[str] = ()
                  ) -> list[ScoredItem]:
        ex = set(exclude)
        ranked = sorted((i for i in self.known if i not in ex), key=self._score, reverse=True)
        return [ScoredItem(i, self._score(i), "hashed") for i in ranked[:k]]

    def score_items(self, user_id: str, item_ids: Sequence[str]) -> np.ndarray:
        self.calls.append((user_id, list(item_ids)))
        return np.array([self._score(i) for i in item_ids])


def _random_stream(n: int = 1500, seed: int = 3) -> list[Event]:
    rng = np.random.default_rng(seed)
    types = ["view"] * 8 + ["purchase"]
    return [Event(f"e{j}", types[int(rng.integers(len(types)))], j,
                  user_id=f"u{int(rng.integers(40))}", item_id=f"i{int(rng.integers(400))}")
            for j in range(n)]


def test_negatives_are_shared_seeded_and_exclude_purchases() -> None:
    events = _random_stream()
    a, b = HashedScores(), HashedScores()
    res = prequential({"a": a, "b": b, "list": FixedRanking()}, events, seed=7)
    assert a.calls == b.calls and len(a.calls) == res["a"].n_evaluated
    assert res["a"].overall.auc == res["b"].overall.auc
    for part in ("cold_users", "cold_items"):
        assert res["a"].slices[part].auc == res["b"].slices[part].auc
    # Each draw: the target first, then 100 distinct items seen before the test, never
    # the target or one of the user's purchases; 100 of ~400 items, so draws differ.
    seen: set[str] = set()
    bought: dict[str, set[str]] = {}
    calls = iter(a.calls)
    for ev in events:
        assert ev.user_id is not None and ev.item_id is not None
        if ev.item_id not in bought.get(ev.user_id, set()) and any(
                e.user_id == ev.user_id for e in events[: int(ev.event_id[1:])]):
            user, cand = next(calls)
            assert user == ev.user_id and cand[0] == ev.item_id
            negs = cand[1:]
            assert len(negs) == min(100, len(seen - {ev.item_id} - bought.get(user, set())))
            assert len(set(negs)) == len(negs) and set(negs) <= seen
            assert ev.item_id not in negs and not set(negs) & bought.get(user, set())
        seen.add(ev.item_id)
        if ev.event_type == "purchase":
            bought.setdefault(ev.user_id, set()).add(ev.item_id)
    assert next(calls, None) is None
    assert len({frozenset(c[1:]) for _, c in a.calls[-50:]}) == 50
    # Reproducible with the same seed; another seed draws other negatives.
    again = HashedScores()
    prequential({"a": again}, events, seed=7)
    assert again.calls == a.calls
    other = HashedScores()
    prequential({"a": other}, events, seed=8)
    assert other.calls != a.calls


def _result(name: str, recall20: float, cold_users: float, cold_items: float) -> ModelResult:
    """A result of 100 tests (50 per slice) with the given Recall@20 figures."""
    def part(n: int, recall: float) -> SliceResult:
        s = SliceResult(n_evaluated=n)
        s.hits = {10: 0, 20: round(recall * n)}
        return s

    return ModelResult(name, overall=part(100, recall20),
                       slices={"cold_users": part(50, cold_users),
                               "cold_items": part(50, cold_items),
                               "repeat_items": part(40, 0.5), "new_to_user": part(60, 0.0)})


def test_table_ratios_leave_out_the_tuned_model() -> None:
    results = {r.name: r for r in (_result("freshrec", 0.30, 0.20, 0.10),
                                   _result("freshrec_tuned", 0.50, 0.40, 0.40),
                                   _result("popularity", 0.20, 0.20, 0.04),
                                   _result("item_knn", 0.25, 0.10, 0.20))}
    table = format_table(results, "learning_rate=0.1 dim=64 l2=0.001, tuned on the first "
                                  "1,234,567 events")
    lines = table.splitlines()
    assert max(len(line) for line in lines) < 100
    assert "freshrec Recall@20 / best baseline (item_knn): 1.20x (goal >= 1.20x: met)" in lines
    assert ("freshrec_tuned Recall@20 / best baseline (item_knn): 2.00x (goal >= 1.20x: met)"
            in lines)
    assert ("freshrec cold users R@20 / best baseline (popularity): 1.00x "
            "(goal >= 1.00x: met)") in lines
    assert ("freshrec cold items R@20 / best baseline (item_knn): 0.50x "
            "(goal >= 1.00x: NOT met)") in lines
    assert any(line.startswith("freshrec_tuned* ") for line in lines)
    assert any(line.split()[:5] == ["tests", "50", "50", "40", "60"] for line in lines)


def test_a_slice_nobody_hits_says_so_instead_of_a_ratio() -> None:
    results = {r.name: r for r in (_result("freshrec", 0.30, 0.0, 0.10),
                                   _result("popularity", 0.20, 0.0, 0.04))}
    lines = format_table(results).splitlines()
    assert ("freshrec cold users R@20 / best baseline (popularity): no hits by any model "
            "(goal >= 1.00x: NOT met)") in lines
    assert not any("nan" in line for line in lines)
