"""``freshrec serve`` as a real process, against the real broker, over real HTTP.

Lists come from a transactional producer (committed and aborted), from the real job
(``test_serves_what_the_job_publishes``), and every check reads what the service answers.
"""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freshrec.serve_store import Store
from freshrec.signals import STOP_SIGNALS, exit_code
from freshrec_common.polling import wait_until
from freshrec_common.privacy import pseudonymize
from schemas.events import Event
from schemas.item_embedding import ItemEmbedding
from schemas.recommendation import Recommendation, ScoredItem
from tests.fuzzing import examples
from tests.integration.job_harness import JobProcess, job_settings, latest_by_key
from tests.integration.serve_harness import Reply, ServeProcess

COMPACT = {"cleanup.policy": "compact"}
NOW = int(time.time() * 1000)


def a_list(user: str, seq: int, n: int = 20) -> Recommendation:
    items = tuple(ScoredItem(f"i{(seq + j) % 50}", round(1.0 - j / 100, 4), f"reason {j}")
                  for j in range(n))
    return Recommendation(user, items, "m-d32", NOW + seq, NOW, f"e-{user}-{seq}", seq)


def an_item(item_id: str, vector: Iterable[float]) -> ItemEmbedding:
    return ItemEmbedding(item_id, tuple(float(x) for x in vector), 0.0, 0.5, 4, NOW)


class Topics:
    """Fresh compacted topics, a producer that writes committed (or aborted) transactions,
    and the overrides for a service reading them."""

    def __init__(self, broker: Any, fresh_topic: Callable[..., str], tmp: Path) -> None:
        self.broker = broker
        self.recs = fresh_topic(partitions=2, configs=COMPACT, prefix="serve-recs")
        self.items = fresh_topic(partitions=2, configs=COMPACT, prefix="serve-items")
        self.store_dir = tmp / "store"
        self.producer = broker.producer(transactional_id=f"serve-test-{uuid.uuid4().hex[:8]}")
        self.producer.init_transactions()

    def overrides(self, *extra: str) -> list[str]:
        return [f"kafka.bootstrap_servers={self.broker.bootstrap}",
                f"topics.recommendations={self.recs}", f"topics.item_embeddings={self.items}",
                f"serve.store_dir={self.store_dir}", *extra]

    def send(self, lists: Iterable[Recommendation] = (), items: Iterable[ItemEmbedding] = (),
             tombstones: Iterable[str] = (), abort: bool = False) -> None:
        p = self.producer
        p.begin_transaction()
        for rec in lists:
            p.send(self.recs, key=rec.user_id.encode(), value=rec.to_bytes())
        for emb in items:
            p.send(self.items, key=emb.item_id.encode(), value=emb.to_bytes())
        for user in tombstones:
            p.send(self.recs, key=user.encode(), value=None)
        if abort:
            p.flush()
            p.abort_transaction()
        else:
            p.commit_transaction()

    def close(self) -> None:
        self.producer.close()


@pytest.fixture
def topics(kafka_broker: Any, fresh_topic: Callable[..., str], tmp_path: Path) -> Any:
    t = Topics(kafka_broker, fresh_topic, tmp_path)
    yield t
    t.close()


@pytest.fixture
def serve_process(tmp_path: Path) -> Any:
    """Factory: ``serve_process(overrides, env=None) -> started ServeProcess``; every one
    still running at the end is stopped (and must stop cleanly)."""
    started: list[ServeProcess] = []

    def make(overrides: list[str], env: dict[str, str] | None = None) -> ServeProcess:
        proc = ServeProcess(overrides, tmp_path / f"serve-{len(started)}.log", env or {})
        started.append(proc.start())
        return proc

    yield make
    clean = {exit_code(sig) for sig in STOP_SIGNALS}  # a test may have stopped it already
    for proc in started:
        assert proc.stop() in clean, proc.log_tail()


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    assert wait_until(check, timeout_s, interval_s=0.05), \
        f"timed out after {timeout_s:.0f}s waiting for {what}"


def served_items(reply: Reply) -> list[str]:
    return [it["item_id"] for it in reply.json()["items"]]


def test_lists_etag_tombstones_and_aborted_lists(topics: Topics, serve_process: Any) -> None:
    users = [f"u{n}" for n in range(20)]
    topics.send(lists=[a_list(u, 1) for u in users])
    topics.send(lists=[a_list("u0", 99), a_list("ghost", 1)], abort=True)
    serve = serve_process(topics.overrides())
    serve.wait_ready()

    reply = serve.get("/v1/users/u0/recommendations")
    assert reply.status == 200, reply.body
    doc = reply.json()
    want = a_list("u0", 1)
    assert doc == {"user_id": "u0", "seq": 1, "model": "m-d32", "produced_at": want.generated_at,
                   "cold_start": False,
                   "items": [{"item_id": it.item_id, "score": it.score, "reason": it.reason}
                             for it in want.items[:10]]}
    etag = reply.headers["ETag"]
    assert served_items(serve.get("/v1/users/u0/recommendations?k=3")) == served_items(reply)[:3]
    assert len(served_items(serve.get("/v1/users/u0/recommendations?k=100"))) == 20
    not_modified = serve.get("/v1/users/u0/recommendations", {"If-None-Match": etag})
    assert (not_modified.status, not_modified.body, not_modified.headers["ETag"]) == (
        304, b"", etag)
    # Aborted lists are never served (read_committed).
    assert serve.get("/v1/users/ghost/recommendations").status == 404
    assert serve.get("/v1/users/ghost/recommendations").json()["error"]

    topics.send(lists=[a_list("u0", 2)], tombstones=["u5"])
    wait_for(lambda: serve.get("/v1/users/u0/recommendations").json()["seq"] == 2, "seq 2")
    changed = serve.get("/v1/users/u0/recommendations", {"If-None-Match": etag})
    assert changed.status == 200 and changed.headers["ETag"] != etag
    wait_for(lambda: serve.get("/v1/users/u5/recommendations").status == 404, "u5 forgotten")
    assert serve.get("/v1/users/u6/recommendations").status == 200
    assert serve.metric("freshrec_serve_list_staleness_seconds_count") >= 5
    assert serve.stop() == 143

    # The forgotten user's list is gone from the store itself, not only hidden.
    store = Store(topics.store_dir, 2**30, topics.recs, topics.items)
    try:
        assert store.get_list("u5") is None and store.get_list("ghost") is None
        assert store.get_list("u0").seq == 2 and len(store) == 19
    finally:
        store.close()


def test_hostile_records_on_the_topics_are_skipped(topics: Topics, serve_process: Any
                                                   ) -> None:
    good = a_list("u1", 1).to_bytes()
    doc = a_list("u1", 1).to_json()
    bad_lists: list[tuple[bytes, bytes]] = [
        # (A compacted topic refuses records without a key.) Empty, too long for LMDB:
        (b"", good), (b"x" * 600, good),
        (b"u1", b"not json"), (b"u1", b"[]"), (b"u1", b'{"schema_version": 2}'),
        (b"u1", orjson.dumps({**doc, "seq": -1})),
        (b"u1", json.dumps({**doc, "seq": 2**65}).encode()),
        (b"u1", orjson.dumps({**doc, "items": [1, 2]})),
    ]
    p = topics.producer
    p.begin_transaction()
    for key, value in bad_lists:
        p.send(topics.recs, key=key, value=value)
    p.send(topics.items, key=b"i1", value=b"{}")
    p.send(topics.items, key=b"", value=an_item("i2", np.ones(32)).to_bytes())
    p.commit_transaction()
    topics.send(lists=[a_list("after", 1)])
    serve = serve_process(topics.overrides())
    serve.wait_ready()
    assert serve.get("/v1/users/after/recommendations").status == 200
    assert serve.get("/v1/users/u1/recommendations").status == 404
    assert serve.get("/v1/items/i1/similar").status == 404
    skipped = "freshrec_serve_records_skipped_total"
    assert serve.metric(skipped, topic=topics.recs) == len(bad_lists)
    assert serve.metric(skipped, topic=topics.items) == 2
    # 128 characters, 512 bytes of UTF-8: a valid id that no store key can hold.
    assert serve.get("/v1/users/" + quote("\U0001f600" * 128) + "/recommendations").status == 404


def test_similar_items_by_learned_vectors(topics: Topics, serve_process: Any) -> None:
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((3, 16)) * 3
    items = [an_item(f"c{c}-{n}", centres[c] + 0.1 * rng.standard_normal(16))
             for c in range(3) for n in range(10)]
    topics.send(items=items)
    serve = serve_process(topics.overrides("model.dim=16"))
    serve.wait_ready()
    reply = serve.get("/v1/items/c1-0/similar?k=9")
    assert reply.status == 200, reply.body
    found = served_items(reply)
    # The nine nearest of an item are the rest of its own cluster, best first.
    assert sorted(found) == [f"c1-{n}" for n in range(1, 10)]
    scores = [it["score"] for it in reply.json()["items"]]
    assert scores == sorted(scores, reverse=True)
    assert serve.get("/v1/items/c1-0/similar").status == 200
    assert len(served_items(serve.get("/v1/items/c1-0/similar?k=100"))) == 29
    assert serve.get("/v1/items/nope/similar").status == 404
    # A later vector moves the item: c2-0 now sits in cluster 0.
    topics.send(items=[an_item("c2-0", centres[0])])
    wait_for(lambda: "c2-0" in served_items(serve.get("/v1/items/c0-1/similar?k=3")),
               "the moved item among cluster 0's neighbours")


def test_restart_resumes_from_stored_offsets(topics: Topics, serve_process: Any) -> None:
    rng = np.random.default_rng(0)
    topics.send(lists=[a_list(f"u{n}", 1) for n in range(50)],
                items=[an_item(f"i{n}", rng.standard_normal(32)) for n in range(10)])
    first = serve_process(topics.overrides())
    first.wait_ready()
    read = "freshrec_serve_records_read_total"
    assert first.metric(read, topic=topics.recs) == 50
    assert first.metric(read, topic=topics.items) == 10
    assert first.stop(sig=signal.SIGINT) == 130  # Ctrl-C stops it as cleanly as SIGTERM

    topics.send(lists=[a_list("u1", 2), a_list("u2", 2), a_list("new", 1)],
                tombstones=["u3"])
    second = serve_process(topics.overrides())
    second.wait_ready()
    # Only the 4 records written while it was down are read: no re-read of the topic.
    assert second.metric(read, topic=topics.recs) == 4
    assert second.metric(read, topic=topics.items) == 0
    assert second.get("/v1/users/u1/recommendations").json()["seq"] == 2
    assert second.get("/v1/users/new/recommendations").status == 200
    assert second.get("/v1/users/u3/recommendations").status == 404
    assert second.get("/v1/items/i0/similar?k=3").status == 200  # vectors from the store
    before = {u: second.get(f"/v1/users/{u}/recommendations?k=100").body
              for u in ("u0", "u1", "u2", "new")}
    assert second.stop(sig=signal.SIGHUP) == 129  # and SIGHUP, as every command

    # A wiped store is rebuilt from the topics, to the same answers.
    shutil.rmtree(topics.store_dir)
    third = serve_process(topics.overrides())
    third.wait_ready()
    assert third.metric(read, topic=topics.recs) == 54
    assert {u: third.get(f"/v1/users/{u}/recommendations?k=100").body for u in before} == before
    assert third.get("/v1/users/u3/recommendations").status == 404


# (path, status, words the error must contain); 129 characters is one over job.max_id_length.
BAD_REQUESTS: list[tuple[str, int, str]] = [
    ("/v1/users/" + "u" * 129 + "/recommendations", 400, "user_id must be 1..128"),
    ("/v1/users/u%00x/recommendations", 400, "user_id contains control characters"),
    ("/v1/users/u%1b%5b31m/recommendations", 400, "control characters"),
    ("/v1/users/u%7f/recommendations", 400, "control characters"),
    ("/v1/users/u1/recommendations?k=0", 400, "k must be an integer from 1 to 100"),
    ("/v1/users/u1/recommendations?k=101", 400, "k must be"),
    ("/v1/users/u1/recommendations?k=-1", 400, "k must be"),
    ("/v1/users/u1/recommendations?k=1.5", 400, "k must be"),
    ("/v1/users/u1/recommendations?k=", 400, "k must be"),
    ("/v1/users/u1/recommendations?k=%F0%9F%98%80", 400, "k must be"),
    ("/v1/users/u1/recommendations?k=99999999999999999999", 400, "k must be"),
    ("/v1/items/" + "i" * 129 + "/similar", 400, "item_id must be 1..128"),
    ("/v1/items/i%0a/similar", 400, "item_id contains control characters"),
    ("/v1/items/i1/similar?k=0", 400, "k must be"),
    ("/v1/users/%ff%fe/recommendations", 404, ""),
    ("/v1/users/../../etc/passwd/recommendations", 404, ""),
    ("/v1/users//recommendations", 404, ""),
    ("/v1/nothing", 404, ""),
]


def raw_request(port: int, method: str, path: str, headers: dict[str, str] | None = None
                ) -> tuple[int, bytes]:
    """A request sent as is (urllib would refuse some of these paths)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_bad_requests_get_400s_and_change_nothing(topics: Topics, serve_process: Any) -> None:
    topics.send(lists=[a_list(f"u{n}", 1) for n in range(5)],
                items=[an_item("i1", np.ones(32))])
    serve = serve_process(topics.overrides())
    serve.wait_ready()
    before = {u: serve.get(f"/v1/users/u{u}/recommendations?k=100").body for u in range(5)}
    for path, status, words in BAD_REQUESTS:
        got, body = raw_request(serve.port, "GET", path)
        assert got == status, (path, got, body)
        if words:
            assert words in Reply(got, {}, body).json()["error"], (path, body)
    assert raw_request(serve.port, "POST", "/v1/users/u1/recommendations")[0] == 405
    assert raw_request(serve.port, "DELETE", "/v1/users/u1/recommendations")[0] == 405
    huge = raw_request(serve.port, "GET", "/v1/users/u1/recommendations",
                       {"If-None-Match": "x" * 100_000})[0]
    assert huge in (400, 431)

    @settings(max_examples=examples(150), deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(user=st.text(max_size=200), k=st.text(max_size=8))
    def any_input_is_answered(user: str, k: str) -> None:
        path = f"/v1/users/{quote(user, safe='')}/recommendations?k={quote(k, safe='')}"
        status, _ = raw_request(serve.port, "GET", path)
        assert status in (200, 400, 404), (path, status)

    any_input_is_answered()
    assert serve.get("/healthz").status == 200
    assert serve.metric("freshrec_serve_requests_total", status="500") == 0
    assert {u: serve.get(f"/v1/users/u{u}/recommendations?k=100").body
            for u in range(5)} == before
    assert serve.stop() == 143
    store = Store(topics.store_dir, 2**30, topics.recs, topics.items)
    try:
        assert len(store) == 5
    finally:
        store.close()


def test_token_and_pseudonymised_ids(topics: Topics, serve_process: Any, tmp_path: Path
                                     ) -> None:
    key = "k" * 32
    topics.send(lists=[a_list(pseudonymize(key.encode(), "alice"), 1)])
    token = "t0ken-" + uuid.uuid4().hex
    serve = serve_process(topics.overrides("privacy.pseudonymize_users=true"),
                          {"FRESHREC_SERVE_AUTH_TOKEN": token, "FRESHREC_PSEUDONYM_KEY": key})
    serve.wait_ready()  # /healthz needs no token
    path = "/v1/users/alice/recommendations"
    assert serve.get(path).status == 401
    assert serve.get(path, {"Authorization": "Bearer wrong"}).status == 401
    assert serve.get(path, {"Authorization": token}).status == 401
    assert serve.get("/metrics").status == 401
    reply = serve.get(path, {"Authorization": f"Bearer {token}"})
    assert reply.status == 200 and reply.json()["user_id"] == "alice"
    assert serve.get("/metrics", {"Authorization": f"Bearer {token}"}).status == 200
    # The caller's own id is mapped; a pseudonym sent as an id is just an unknown user.
    pseudo = pseudonymize(key.encode(), "alice")
    assert serve.get(f"/v1/users/{pseudo}/recommendations",
                     {"Authorization": f"Bearer {token}"}).status == 404


def test_binding_beyond_loopback_needs_a_token(topics: Topics, tmp_path: Path) -> None:
    serve = ServeProcess(topics.overrides(), tmp_path / "open.log", host="0.0.0.0").start()
    assert serve.proc is not None and serve.proc.wait(timeout=60) == 2
    assert "FRESHREC_SERVE_AUTH_TOKEN (serve.auth_token)" in serve.log_tail()


def test_serves_what_the_job_publishes(kafka_broker: Any, tmp_path: Path,
                                       serve_process: Any) -> None:
    settings, overrides = job_settings(kafka_broker.settings, tmp_path,
                                       ["model.exploration=0.0"])
    job = JobProcess(settings, overrides, tmp_path / "job.log").start()
    topics = settings.topics
    users = [f"shopper-{n}" for n in range(6)]
    try:
        job.send_events([Event(f"up-{n}", "item_upsert", NOW, item_id=f"sku-{n}",
                               category=f"cat-{n % 3}", title=f"thing {n}")
                         for n in range(30)])
        job.send_events([Event(f"{u}-{j}", "view", NOW + j, user_id=u, item_id=f"sku-{j * 3}")
                         for u in users for j in range(5)])
        serve = serve_process([*overrides, f"serve.store_dir={tmp_path / 'store'}"])
        job.wait_for(topics.recommendations,
                               lambda rs: set(users) <= set(latest_by_key(rs)),
                               timeout_s=180, what="a list for every shopper")
        serve.wait_ready()

        def served_as_topic() -> bool:
            latest = latest_by_key(job.read_topic(topics.recommendations))
            for user in users:
                rec = Recommendation.from_json(latest[user].value)
                reply = serve.get(f"/v1/users/{user}/recommendations?k=100")
                if reply.status != 200 or reply.json()["seq"] != rec.seq:
                    return False
                assert served_items(reply) == [it.item_id for it in rec.items]
            return True

        wait_for(served_as_topic, "the job's latest lists served", timeout_s=60)
        # Item vectors reach the changelog on their own schedule (job.item_publish_*), one
        # item after another: wait until five neighbours of sku-0 are known.
        def similar() -> list[str]:
            reply = serve.get("/v1/items/sku-0/similar?k=5")
            return served_items(reply) if reply.status == 200 else []

        wait_for(lambda: len(similar()) == 5, "five similar items of a catalogue item",
                 timeout_s=90)
        neighbours = similar()
        assert "sku-0" not in neighbours and len(set(neighbours)) == 5
        assert set(neighbours) <= {f"sku-{n}" for n in range(30)}

        job.send_events([Event("forget-0", "forget_user", NOW + 100, user_id=users[0])])
        wait_for(lambda: serve.get(f"/v1/users/{users[0]}/recommendations").status == 404,
                   "the forgotten shopper's list removed", timeout_s=120)
        assert serve.get(f"/v1/users/{users[1]}/recommendations").status == 200
    finally:
        job.stop()
