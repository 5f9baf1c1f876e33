"""``freshrec replay`` end to end on a small generated JSONL log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from freshrec.cli import main
from freshrec.generator import generate_events
from schemas.events import encode_event

KEYS = {"recall@10", "recall@20", "ndcg@20", "coverage", "learn_events_per_s",
        "recommend_p99_ms"}


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("replay") / "events.jsonl"
    events = generate_events(1200, seed=9, n_users=60, n_items=300, n_categories=8)
    path.write_bytes(b"\n".join(encode_event(e) for e in events) + b"\n")
    return path


def test_replay_prints_table_and_writes_json(log: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.json"
    rc = main(["replay", str(log), "--format", "jsonl", "--models",
               "freshrec,popularity,river_funkmf,river_biasedmf,bpr", "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert set(doc) == {"freshrec", "popularity", "river_funkmf", "river_biasedmf", "bpr"}
    for figures in doc.values():
        assert set(figures) >= KEYS
        assert 0.0 <= figures["recall@10"] <= figures["recall@20"] <= 1.0
        assert figures["learn_events_per_s"] > 0
    # The planted tastes make the default model beat popularity clearly.
    assert doc["freshrec"]["recall@20"] > doc["popularity"]["recall@20"]
    captured = capsys.readouterr()
    assert "recall@20" in captured.out and "freshrec" in captured.out
    assert "replay [" in captured.err  # progress bar on stderr


def test_replay_rejects_unknown_model(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(log), "--format", "jsonl", "--models", "magic"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_replay_tune_prints_choice(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["replay", str(log), "--format", "jsonl", "--models", "freshrec", "--tune",
               "--tune-fraction", "0.5"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "tune: chose learning_rate=" in out
