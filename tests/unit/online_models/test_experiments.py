"""A/B experiments: bucketing, experiment files, replay side by side, and the `freshrec
experiments` report. The user side's variants: flink_jobs/test_user_side_experiments.py."""

from __future__ import annotations

from collections import Counter

import pytest

from freshrec.experiments import counts_from_exposition, read_exposition, report, totals
from freshrec.generator import generate_events
from freshrec.replay import format_experiment
from online_models.config import ModelConfig
from online_models.evaluate import prequential
from online_models.experiment_model import ExperimentModel
from online_models.experiments import (
    USER_GROUPS,
    Experiment,
    ExperimentError,
    clustered_rate,
    compare_clustered,
)

USERS = [f"user-{n}" for n in range(20_000)]


def experiment(shares: dict[str, float], key: str = "k", **extra: dict) -> Experiment:
    return Experiment.from_mapping({"key": key, "variants": {
        name: {"share": share, **extra.get(name, {})} for name, share in shares.items()}})


def test_assignment_is_stable_and_follows_the_shares() -> None:
    exp = experiment({"a": 0.2, "b": 0.3, "c": 0.5})
    first = [exp.variant_of(u) for u in USERS]
    assert first == [exp.variant_of(u) for u in USERS]
    for name, share in (("a", 0.2), ("b", 0.3), ("c", 0.5)):
        assert abs(first.count(name) / len(USERS) - share) < 0.015
    other_key = experiment({"a": 0.2, "b": 0.3, "c": 0.5}, key="other")
    moved = sum(a != other_key.variant_of(u) for u, a in zip(USERS, first, strict=True))
    assert moved > 0.4 * len(USERS)  # a new key reshuffles


def test_a_users_cell_is_its_variant_and_group() -> None:
    exp = experiment({"a": 0.2, "b": 0.3, "c": 0.5})
    assert [exp.cell_of(u) for u in USERS[:2000]] == [
        (exp.variant_of(u), str(exp.group_of(u))) for u in USERS[:2000]]


def test_changing_a_share_moves_only_the_users_between_the_boundaries() -> None:
    before = experiment({"control": 0.5, "treatment": 0.5})
    after = experiment({"control": 0.6, "treatment": 0.4})
    moves = [(before.variant_of(u), after.variant_of(u)) for u in USERS]
    changed = [m for m in moves if m[0] != m[1]]
    assert set(changed) == {("treatment", "control")}
    assert abs(len(changed) / len(USERS) - 0.1) < 0.01


def test_experiment_files_are_checked_naming_the_key(tmp_path) -> None:
    with pytest.raises(ExperimentError, match=r"variants.b.dim: not a setting"):
        experiment({"a": 0.5, "b": 0.5}, b={"dim": 8})
    with pytest.raises(ExperimentError, match=r"variants.a.share: must be a number > 0"):
        experiment({"a": 0.0})
    with pytest.raises(ExperimentError, match=r"variants.a: exploration"):
        experiment({"a": 1.0}, a={"exploration": 3.0})
    with pytest.raises(ExperimentError, match="does not exist"):
        Experiment.load(tmp_path / "nope.toml")
    path = tmp_path / "exp.toml"
    path.write_text('key = "x"\n[variants.control]\nshare = 3\n'
                    '[variants.boost]\nshare = 1\nrecency_boost = 2.0\n'
                    '[variants.trending]\nshare = 1\ntrending_only = true\n')
    exp = Experiment.load(path)
    assert exp.names == ["control", "boost", "trending"]
    assert [v.share for v in exp.variants] == [0.6, 0.2, 0.2]
    assert exp.config("boost", ModelConfig()).recency_boost == 2.0
    assert exp.variant("trending").trending_only


def test_intervals_and_the_z_test() -> None:
    # Users, not tests, are the unit: with one test each the two agree; one heavy user's
    # 1,000 hits are one observation, and the interval widens accordingly.
    single = [(1, 1)] * 60 + [(1, 0)] * 140
    rate, se = clustered_rate(single)
    assert rate == 0.3 and abs(se - (0.3 * 0.7 / 200) ** 0.5) < 0.002
    heavy = [(1000, 1000)] + [(1, 0)] * 200
    rate, se = clustered_rate(heavy)
    assert abs(rate - 1000 / 1200) < 1e-12
    assert se > 10 * (rate * (1 - rate) / 1200) ** 0.5
    assert compare_clustered(single, single) == (0.0, 1.0)


def test_user_groups_are_stable_spread_and_independent_of_the_variant() -> None:
    exp = experiment({"a": 0.5, "b": 0.5})
    assert exp.group_of("user-7") == exp.group_of("user-7")
    cells = Counter((exp.variant_of(f"u{n}"), exp.group_of(f"u{n}")) for n in range(64_000))
    # Every variant has users in every group, about evenly: 64,000 / 2 / 32 = 1,000 each.
    assert len(cells) == 2 * USER_GROUPS
    assert min(cells.values()) > 850 and max(cells.values()) < 1_150



def test_replay_runs_the_variants_side_by_side_on_one_item_side() -> None:
    events = list(generate_events(4000, seed=5, n_users=300, n_items=400))
    exp = experiment({"a": 0.5, "b": 0.5}, b={"recency_boost": 2.0})
    model = ExperimentModel(exp, ModelConfig(dim=16, seed=5))
    res = prequential({"experiment": model}, events, negatives=0)["experiment"]
    a, b = res.slices["variant:a"], res.slices["variant:b"]
    assert a.n_evaluated + b.n_evaluated == res.overall.n_evaluated > 1000
    assert a.hits[20] + b.hits[20] == res.overall.hits[20]
    for name, part in (("a", a), ("b", b)):
        users = model.per_user[name]
        assert sum(t for t, _ in users.values()) == part.n_evaluated
        assert sum(h for _, h in users.values()) == part.hits[20]
        assert {exp.variant_of(u) for u in users} == {name}
    table = format_experiment(model)
    assert "not significant" in table or "significant" in table
    assert table.splitlines()[2].startswith("a ")
    assert model.models["a"].replica is model.models["b"].replica
    assert not set(model.models["a"].users) & set(model.models["b"].users)
    assert model.models["b"].config.recency_boost == 2.0


_P = "flink_taskmanager_job_task_operator_freshrec_"


def _exposition(hits_per_group: dict[str, tuple[int, int]], tests: int = 100) -> str:
    """The job's endpoint for variants whose 32 user groups alternate between two hit
    counts out of ``tests`` each; the counts of each group split over two subtasks."""
    lines = [f"# TYPE {_P}variant_user_group_job_experiment_tests_total gauge"]
    for variant, (even, odd) in hits_per_group.items():
        lines.append(f'{_P}variant_job_experiment_lists_total{{variant="{variant}",'
                     f'subtask_index="0"}} {USER_GROUPS * tests}')
        for g in range(USER_GROUPS):
            for kind, n in (("tests", tests), ("hits", even if g % 2 == 0 else odd),
                            ("hits_at_10", 0)):
                for subtask, share in ((0, n // 2), (1, n - n // 2)):
                    lines.append(f'{_P}variant_user_group_job_experiment_{kind}_total'
                                 f'{{variant="{variant}",user_group="{g}",'
                                 f'subtask_index="{subtask}"}} {float(share)}')
    return "\n".join([*lines, f'{_P}job_recommendations_published_total{{subtask_index="0"}} 1.0',
                      ""])


def test_experiments_report_takes_users_in_groups_as_the_unit() -> None:
    similar = counts_from_exposition(_exposition({"control": (25, 35), "boost": (35, 45)}))
    assert set(similar["boost"]) == {"", *map(str, range(USER_GROUPS))}
    assert totals(similar)["boost"] == {"lists": 3200, "tests": 3200, "hits": 1280,
                                        "hits_at_10": 0}
    lines = report(similar, ["control", "boost"]).splitlines()
    control = next(x for x in lines if x.startswith("control"))
    boost = next(x for x in lines if x.startswith("boost"))
    assert "0.3000" in control and "0.4000" in boost and "+0.1000" in boost
    assert boost.endswith("significant") and "not significant" not in boost
    # The same hit rates with users far apart (groups at 10 % and 50 %): tests taken one by
    # one would call +0.05 on 3,200 tests each significant (z ~ 4); with users as the unit
    # it is not (z ~ 1).
    apart = counts_from_exposition(_exposition({"control": (10, 50), "boost": (15, 55)}))
    boost = next(x for x in report(apart, ["control", "boost"]).splitlines()
                 if x.startswith("boost"))
    assert "+0.0500" in boost and boost.endswith("not significant")
    assert "no experiment figures" in report({}, ["control"])


def test_a_metrics_read_the_server_closed_without_answering_is_tried_again() -> None:
    """A real HTTP server on 127.0.0.1 that closes its first connection unanswered (as
    Flink's reporter does when collecting a metric fails) and answers the second; one that
    never answers still fails the read."""
    import http.client
    import socket
    import threading

    body = _exposition({"control": (25, 35)}).encode()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def serve(answer_from: int, connections: int) -> None:
            for n in range(connections):
                conn, _ = server.accept()
                with conn:
                    conn.recv(65536)
                    if n >= answer_from:
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                                     % (len(body), body))

        thread = threading.Thread(target=serve, args=(1, 2), daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{port}/metrics"
        assert totals(counts_from_exposition(read_exposition(url, pause_s=0)))["control"][
            "tests"] == 3200
        thread.join(5)
        thread = threading.Thread(target=serve, args=(9, 2), daemon=True)
        thread.start()
        with pytest.raises(http.client.RemoteDisconnected):
            read_exposition(url, attempts=2, pause_s=0)
        thread.join(5)
