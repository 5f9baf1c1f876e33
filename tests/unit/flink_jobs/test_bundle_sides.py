"""The job's operator logic over bundles, without a JVM (flink_jobs.user_side, item_side)."""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import pytest

from flink_jobs.bundles import (
    COVISIT_MESSAGE,
    DEAD_LETTERS,
    GRADIENT_MESSAGE,
    ITEM_EMBEDDINGS,
    ITEM_GRADIENTS,
    RECOMMENDATIONS,
    UPSERT_MESSAGE,
    RawRecord,
    decode_output_bundle,
    decode_record_bundle,
    encode_record_bundle,
)
from flink_jobs.item_side import BACKGROUND_SLOTS, ItemSide, background_slot, pack_due, unpack_due
from flink_jobs.shard_keys import shard_of
from flink_jobs.user_side import UserSide
from flink_jobs.user_value import id_hash, unpack_user_value
from freshrec_common.privacy import pseudonymize
from online_models.covisit import CoVisits, CoVisitTable
from online_models.item_state import ItemState
from online_models.state import UserState
from schemas.item_embedding import ItemEmbedding
from schemas.recommendation import Recommendation
from tests.unit.flink_jobs.bundle_sides import (
    CFG,
    T0,
    Store,
    catalogue,
    event,
    record,
    settings,
)

pytestmark = pytest.mark.unit

def test_record_bundles_round_trip() -> None:
    recs = [RawRecord(1, 5, 7, b"k", b"v", 3), RawRecord(0, 6, 8, None, None)]
    assert decode_record_bundle(encode_record_bundle(recs)) == recs


def test_a_call_with_several_shards_names_each_users_shard() -> None:
    """A bundle holds every shard of a subtask: each user is read, written and owed a list
    under the shard of its records, and due users under the shard they were owed in."""
    side = UserSide(settings(refresh_interval_ms=100))
    catalogue(side)
    store, asked = Store(), []

    def load(users: Mapping[str, int]) -> dict[str, bytes | None]:
        asked.append(dict(users))
        return store.load(users)

    first = side.process([event(1, "u1", "i1")._replace(shard=2),
                          event(2, "u2", "i2")._replace(shard=0)], load, now=T0)
    assert asked == [{"u1": 2, "u2": 0}]
    assert first.shards == {"u1": 2, "u2": 0}
    store.apply(first.writes)
    # u1 again within the interval: owed a list, in shard 2; u3 arrives in shard 1.
    second = side.process([event(3, "u1", "i3")._replace(shard=2),
                           event(4, "u3", "i4")._replace(shard=1)], load, now=T0 + 10)
    assert second.owed.keys() == {"u1"} and second.shards == {"u1": 2, "u3": 1}
    store.apply(second.writes)
    third = side.process([event(5, "u2", "i5")._replace(shard=0)], load, now=T0 + 200,
                         due={"u1": 2})
    assert asked[-1] == {"u1": 2, "u2": 0}
    assert third.shards == {"u1": 2, "u2": 0}
    listed = [k for k, _ in decode_output_bundle(third.output.to_bytes())[RECOMMENDATIONS]]
    assert sorted(listed) == [b"u1", b"u2"]


def test_bad_records_are_dead_lettered_one_by_one_and_good_ones_learned() -> None:
    side, store = UserSide(settings()), Store()
    catalogue(side)
    result = side.process([record(b"\xff\xfe", 1, b"k1"), record(None, 2),
                           record({"event_type": "view"}, 3), event(4, "u1", "i1")],
                          store.load, now=T0)
    out = decode_output_bundle(result.output.to_bytes())
    dead = [json.loads(v) for _, v in out[DEAD_LETTERS]]
    assert [d["source"]["offset"] for d in dead] == [1, 2, 3]
    assert [k for k, _ in out[DEAD_LETTERS]] == [b"k1", None, None]
    assert result.stats.dead_letters == 3 and result.stats.consumed == {"view": 1}
    assert sum(result.stats.invalid.values()) == 3
    rec = Recommendation.from_json(out[RECOMMENDATIONS][0][1])
    assert rec.user_id == "u1" and rec.seq == 1 and len(rec.items) == CFG.top_k


def test_duplicates_are_dropped_within_and_across_bundles() -> None:
    side, store = UserSide(settings()), Store()
    catalogue(side)
    first = side.process([event(1, "u1", "i1"), event(1, "u1", "i1")], store.load, now=T0)
    store.apply(first.writes)
    again = side.process([event(1, "u1", "i1")], store.load, now=T0 + 1000)
    assert (first.stats.duplicates, again.stats.duplicates) == (1, 1)
    user = UserState.from_bytes(unpack_user_value(store.values["u1"])[0])
    assert user.n_events == 1


def test_refreshes_within_the_interval_are_owed_then_scored() -> None:
    side, store = UserSide(settings()), Store()
    catalogue(side)
    r1 = side.process([event(1, "u1", "i1")], store.load, now=T0 + 10)
    store.apply(r1.writes)
    r2 = side.process([event(2, "u1", "i2"), event(3, "u2", "i3")], store.load, now=T0 + 60)
    store.apply(r2.writes)
    assert r2.owed == {"u1": T0 + 250}  # 200 ms after the last list, up to the 50 ms grid
    published = decode_output_bundle(r2.output.to_bytes())[RECOMMENDATIONS]
    assert [k for k, _ in published] == [b"u2"] and r2.stats.coalesced == 1
    r3 = side.refresh({"u1": 0}, store.load, now=T0 + 250)
    store.apply(r3.writes)
    rec = Recommendation.from_json(decode_output_bundle(r3.output.to_bytes())
                                    [RECOMMENDATIONS][0][1])
    assert (rec.seq, rec.last_event_id, rec.events_applied) == (2, "e2", 2)
    _, state = unpack_user_value(store.values["u1"])
    assert not state.timer_pending and state.last_event_id == ""  # in the list, not kept
    assert state.shown_hashes == tuple(id_hash(i.item_id) for i in rec.items)
    assert r3.stats.event_latency_s and r3.stats.scored == 1


def test_owed_lists_that_fell_due_go_with_the_next_bundle() -> None:
    side, store = UserSide(settings()), Store()
    catalogue(side)
    for n, (user, now) in enumerate((("u1", T0 + 10), ("u2", T0 + 10), ("u1", T0 + 60),
                                     ("u2", T0 + 60)), 1):
        store.apply(side.process([event(n, user, f"i{n}")], store.load, now=now).writes)
    # Both owed at T0 + 250; a bundle of u2 and u3 at T0 + 260 scores u1 (no event here,
    # its state unchanged), u2 (its new event too) and u3 together, none left owed.
    before = unpack_user_value(store.values["u1"])[0]
    r = side.process([event(5, "u2", "i5"), event(6, "u3", "i6")], store.load, now=T0 + 260,
                     due={"u1": 0, "u2": 0})
    store.apply(r.writes)
    recs = {k: Recommendation.from_json(v)
            for k, v in decode_output_bundle(r.output.to_bytes())[RECOMMENDATIONS]}
    assert sorted(recs) == [b"u1", b"u2", b"u3"] and r.owed == {} and r.stats.coalesced == 0
    assert (recs[b"u1"].events_applied, recs[b"u2"].events_applied) == (2, 3)
    blob, state = unpack_user_value(store.values["u1"])
    assert blob == before and not state.timer_pending and state.seq == 2
    # A user owed a list but forgotten in the same bundle gets no list.
    r = side.process([event(7, "u1", "i7")], store.load, now=T0 + 300)
    store.apply(r.writes)
    assert "u1" in r.owed
    forget = record({"event_id": "e8", "event_type": "forget_user", "ts": T0 + 8,
                     "user_id": "u1"}, offset=8, key=b"u1")
    r = side.process([forget], store.load, now=T0 + 500, due={"u1": 0})
    assert (r.stats.scored, r.stats.tombstones, r.removes) == (0, 1, ["u1"])


def test_forget_user_tombstones_and_removes_and_a_return_starts_fresh() -> None:
    side, store = UserSide(settings()), Store()
    catalogue(side)
    store.apply(side.process([event(1, "u1", "i1"), event(2, "u2", "i2")], store.load,
                             now=T0).writes)
    forget = {"event_id": "f", "event_type": "forget_user", "ts": T0 + 5, "user_id": "u1"}
    r = side.process([record(forget)], store.load, now=T0 + 1000)
    store.apply(r.writes, r.removes)
    assert decode_output_bundle(r.output.to_bytes())[RECOMMENDATIONS] == [(b"u1", None)]
    assert r.removes == ["u1"] and "u1" not in store.values and "u2" in store.values
    back = side.process([record(forget), event(9, "u1", "i9")], store.load, now=T0 + 2000)
    recs = decode_output_bundle(back.output.to_bytes())[RECOMMENDATIONS]
    assert recs[0] == (b"u1", None)
    rec = Recommendation.from_json(recs[1][1])
    assert (rec.seq, rec.events_applied, rec.cold_start) == (1, 1, True)


def test_gradients_reach_the_item_side_and_come_back_through_the_changelog() -> None:
    side, store = UserSide(settings()), Store()
    catalogue(side)
    upsert = {"event_id": "up", "event_type": "item_upsert", "ts": T0, "item_id": "new-1",
              "category": "c1"}
    r = side.process([event(1, "u1", "i1", "purchase"), event(2, "u2", "i2"),
                      record(upsert)], store.load, now=T0)
    messages = decode_output_bundle(r.output.to_bytes())[ITEM_GRADIENTS]
    assert {s for s, _ in messages} <= set(range(4))
    upserts = [p for _, p in messages if p[:1] == UPSERT_MESSAGE]
    assert len(upserts) == 1 and [s for s, p in messages if p[:1] == UPSERT_MESSAGE] == [
        shard_of("new-1", 4)]
    assert all(p[:1] in (GRADIENT_MESSAGE, UPSERT_MESSAGE, COVISIT_MESSAGE)
               for _, p in messages)
    items, item_side = Store(), ItemSide(CFG, 200, 5000)
    res = item_side.process([p for _, p in messages], items.load, lambda _: False, T0)
    items.apply(res.writes)
    assert {"i1", "i2", "new-1"} <= set(res.writes)
    assert {"i1", "i2", "new-1"} <= set(res.soon) and res.soon_at == T0 + 200
    later = {i for ids in res.later.values() for i in ids}
    assert later and not set(res.soon) & later
    assert all(T0 < at <= T0 + 5000 and at % 200 == 0 for at in res.later)
    dup = item_side.process(upserts, items.load, lambda e: e in res.upsert_ids, T0)
    assert dup.duplicates == 1 and not dup.writes
    out, n = item_side.publish(["i1", "new-1"], items.load(["i1", "new-1"]))
    records = decode_output_bundle(out.to_bytes())[ITEM_EMBEDDINGS]
    emb = ItemEmbedding.from_bytes(records[0][1])
    assert n == 2 and emb.item_id == "i1" and emb.n_events == 1
    replica_side = UserSide(settings())
    applied, newest = replica_side.apply_changelog(
        [RawRecord(0, j, T0 + j, k, v) for j, (k, v) in enumerate(records)]
        + [RawRecord(0, 9, T0 + 9, b"gone", None)])
    assert applied == 2 and newest == T0 + 1
    assert replica_side.replica.row("i1") >= 0 and "gone" not in replica_side.replica
    row = replica_side.replica.row("i1")
    np.testing.assert_array_equal(replica_side.replica.vectors[row],
                                  np.asarray(emb.vector, dtype=np.float32))


def test_covisitation_pairs_reach_item_state_and_the_replica_through_the_changelog() -> None:
    # u1 views i1 then i2 (one bundle), u2 views i2 then i1 (next bundle): each item's owner
    # keeps the other as a neighbour, the changelog carries it, and another instance's
    # replica scores i2 for a user whose last item is i1, with the co-visitation reason.
    side, store = UserSide(settings()), Store()
    catalogue(side)
    r1 = side.process([event(1, "u1", "i1"), event(2, "u1", "i2")], store.load, now=T0)
    store.apply(r1.writes)
    r2 = side.process([event(3, "u2", "i2"), event(4, "u2", "i1")], store.load, now=T0 + 1000)
    messages = [p for r in (r1, r2)
                for _, p in decode_output_bundle(r.output.to_bytes())[ITEM_GRADIENTS]]
    pair_msgs = [p for p in messages if p[:1] == COVISIT_MESSAGE]
    assert pair_msgs, "no co-visitation message sent"
    items, item_side = Store(), ItemSide(CFG, 200, 5000)
    res = item_side.process(messages, items.load, lambda _: False, T0 + 1000)
    items.apply(res.writes)
    i1 = ItemState.from_bytes(items.values["i1"])
    assert dict(i1.neighbours) == {"i2": 2.0} and i1.n_events == 2
    out, _ = item_side.publish(["i1", "i2"], items.load(["i1", "i2"]))
    records = decode_output_bundle(out.to_bytes())[ITEM_EMBEDDINGS]
    assert dict(ItemEmbedding.from_bytes(records[0][1]).neighbours) == {"i2": 2.0}
    reader = UserSide(settings())
    catalogue(reader)
    reader.apply_changelog([RawRecord(0, j, T0, k, v) for j, (k, v) in enumerate(records)])
    assert reader.covisit.neighbours("i1") == {"i2": 2.0} and reader.covisit.count["i1"] == 2
    rec = Recommendation.from_json(decode_output_bundle(reader.process(
        [event(5, "u3", "i1")], Store().load, now=T0 + 2000).output.to_bytes())
        [RECOMMENDATIONS][0][1])
    assert "i2" in [it.item_id for it in rec.items]
    assert {it.item_id: it.reason for it in rec.items}["i2"] == "often viewed with i1"


def test_the_job_keeps_and_publishes_the_neighbours_the_replay_keeps() -> None:
    # The same pairs, in two item bundles, through item state and the changelog, and into
    # the in-memory CoVisitTable (the replay's): the same neighbours, up to twice the cap,
    # published strongest first, pruned to the cap once they pass twice it.
    cfg = CFG.replace(covisit_neighbours=2)
    weights = [5.0, 1.0, 4.0, 0.5, 3.0, 0.25]
    first, second = CoVisits(), CoVisits()
    for n, w in enumerate(weights):
        bundle = first if n < 3 else second
        bundle.a.append("a")
        bundle.b.append(f"n{n}")
        bundle.w.append(w)
    table = CoVisitTable(cfg.covisit_neighbours, rows={})
    items, item_side = Store(), ItemSide(cfg, 200, 5000)
    published = []
    for bundle in (first, second):
        table.add(bundle)
        res = item_side.process([COVISIT_MESSAGE + bundle.to_bytes()], items.load,
                                lambda _: False, T0)
        items.apply(res.writes)
        out, _ = item_side.publish(["a"], items.load(["a"]))
        (_, value), = decode_output_bundle(out.to_bytes())[ITEM_EMBEDDINGS]
        published.append(ItemEmbedding.from_bytes(value).neighbours)
    # After 3 pairs (room up to 4): all kept, strongest first.
    assert published[0] == (("n0", 5.0), ("n2", 4.0), ("n1", 1.0))
    # The 5th pair passed 4: pruned to the 2 strongest, then n5 came in.
    assert dict(published[1]) == table.neighbours("a") == {"n0": 5.0, "n2": 4.0, "n5": 0.25}
    assert [w for _, w in published[1]] == [5.0, 4.0, 0.25]


def test_learn_items_off_sends_no_gradients() -> None:
    side, store = UserSide(settings(learn_items=False)), Store()
    catalogue(side)
    r = side.process([event(1, "u1", "i1")], store.load, now=T0)
    assert ITEM_GRADIENTS not in decode_output_bundle(r.output.to_bytes())


def test_pseudonymised_users() -> None:
    key = b"k" * 32
    side, store = UserSide(settings(), key), Store()
    catalogue(side)
    r = side.process([event(1, "alice", "i1")], store.load, now=T0)
    assert list(r.writes) == [pseudonymize(key, "alice")]


def test_publish_schedule_round_trips() -> None:
    assert unpack_due(pack_due({"a ✓": 1, "b": T0})) == {"a ✓": 1, "b": T0}
    assert unpack_due(None) == {}


def test_nudged_items_publish_spread_over_the_background_interval_once_per_interval() -> None:
    now, fore, back = T0 + 1234, 500, 30_000
    ids = [f"item-{n}" for n in range(4000)]
    slots = [background_slot(i, now, fore, back) for i in ids]
    assert all(now < at <= now + back and at % fore == 0 for at in slots)
    counts = sorted(slots.count(at) for at in set(slots))
    # Every slot is used, none holds much more than its share (a burst at one tick).
    assert len(counts) == BACKGROUND_SLOTS and counts[-1] < 2 * len(ids) / BACKGROUND_SLOTS
    # Nudged again before its slot: the same slot; after it: the next interval's.
    pairs = list(zip(ids, slots, strict=True))
    assert [background_slot(i, at - 1, fore, back) for i, at in pairs] == slots
    assert [background_slot(i, at, fore, back) for i, at in pairs] == [at + back for at in slots]


def test_a_bad_changelog_record_is_skipped_not_fatal() -> None:
    side = UserSide(settings())
    good = ItemEmbedding("ok", (0.1,) * CFG.dim, 0.0, -1.0, 1, T0).to_bytes()
    nan = ItemEmbedding("nan", (float("nan"),) * CFG.dim, 0.0, -1.0, 1, T0).to_bytes()
    applied, _ = side.apply_changelog([RawRecord(0, 0, T0, b"nan", nan),
                                       RawRecord(0, 1, T0, b"junk", b"\xff not json"),
                                       RawRecord(0, 2, T0, b"ok", good)])
    assert applied == 1 and "ok" in side.replica and "nan" not in side.replica


def test_a_new_untagged_item_reaches_the_list_of_a_user_of_similar_items(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """similar_new in the job: the replica has the item side's text-placed vector from the
    changelog, so the user path finds the new item without running the encoder."""
    import numpy as np

    from online_models.text import TextEncoder

    def no_encoder(*_: object) -> None:
        raise AssertionError("the user path ran the text encoder")

    monkeypatch.setattr(TextEncoder, "encode", no_encoder)
    a, b = np.eye(CFG.dim)[0], np.eye(CFG.dim)[1]
    rng = np.random.default_rng(0)

    def published(item: str, vector: np.ndarray, n_events: int) -> RawRecord:
        emb = ItemEmbedding(item, tuple(vector.tolist()), 0.0, 0.0, n_events, T0,
                            acc=float(n_events), title=f"{item} words")
        return RawRecord(0, 0, T0, item.encode(), emb.to_bytes())

    side = UserSide(settings())
    side.apply_changelog(
        [published(f"{c}{n}", base + 0.1 * rng.standard_normal(CFG.dim), 9)
         for n in range(10) for c, base in (("a", a), ("b", b))]
        + [published("new-a", 0.5 * a, 0), published("new-b", 0.5 * b, 0)])
    rec = Recommendation.from_json(decode_output_bundle(side.process(
        [event(1, "u1", "a0"), event(2, "u1", "a1")], Store().load, now=T0 + 10)
        .output.to_bytes())[RECOMMENDATIONS][0][1])
    reasons = {it.item_id: it.reason for it in rec.items}
    assert reasons.get("new-a") in {"similar to a0 you viewed", "similar to a1 you viewed"}, \
        reasons
    assert "new-b" not in reasons
