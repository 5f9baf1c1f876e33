"""user-update's broadcast-state value of a replica item (flink_jobs.replica_value)."""

from __future__ import annotations

import dataclasses
import struct

import numpy as np
import pytest

from flink_jobs.replica_value import pack_replica_value, unpack_replica_value
from schemas.item_embedding import ItemEmbedding
from tests.unit.flink_jobs.bundle_sides import published


@pytest.mark.parametrize("emb", [
    published(0),
    published(100),
    published(3, trend=None, price=None, category=None, brand=None, title=None,
               available=False),
    published(2, category="", brand="", title=""),
])
def test_a_stored_item_reads_back_as_the_record_it_was_packed_from(emb: ItemEmbedding) -> None:
    assert unpack_replica_value(pack_replica_value(emb)) == emb
    assert unpack_replica_value(pack_replica_value(ItemEmbedding.from_bytes(emb.to_bytes()))) \
        == ItemEmbedding.from_bytes(emb.to_bytes())


def test_the_json_record_stored_before_fr1_still_reads() -> None:
    emb = published(5)
    assert unpack_replica_value(emb.to_bytes()) == emb


@pytest.mark.parametrize(("n_neighbours", "most"), [(0, 0.35), (100, 0.6), (200, 0.6)])
def test_the_stored_item_is_well_below_its_json_record(n_neighbours: int, most: float) -> None:
    """Every replica reads every changelog record the bundler packed (and checkpoints of the
    layout before held every item so)."""
    emb = published(n_neighbours)
    assert len(pack_replica_value(emb)) <= most * len(emb.to_bytes())


def test_a_replica_applies_a_packed_record_as_it_applies_its_json() -> None:
    """The job's changelog bundler hands records over packed (FR1): the replica, its
    co-visitation table and the count of records applied come out the same as from the
    record's JSON, and a broken value is skipped like a broken record."""
    from flink_jobs.bundles import RawRecord
    from flink_jobs.user_side import UserSide
    from tests.unit.flink_jobs.bundle_sides import CFG, settings

    def item(n_neighbours: int, **fields: object) -> ItemEmbedding:
        emb = published(n_neighbours, **fields)
        return dataclasses.replace(emb, vector=emb.vector[:CFG.dim])

    records = [item(40, item_id=f"item-{k}", n_events=k) for k in range(3)]
    records.append(item(0, item_id="item-new", n_events=0))
    as_json, packed = UserSide(settings()), UserSide(settings())
    applied_json, _ = as_json.apply_changelog(
        [RawRecord(0, k, 1, b"k", r.to_bytes()) for k, r in enumerate(records)])
    broken = pack_replica_value(records[0])[:-3]
    applied_packed, _ = packed.apply_changelog(
        [RawRecord(0, k, 1, b"k", pack_replica_value(ItemEmbedding.from_bytes(r.to_bytes())))
         for k, r in enumerate(records)] + [RawRecord(0, 9, 1, b"k", broken)])
    assert applied_packed == applied_json == 4  # the broken record is skipped
    assert as_json.replica.ids == packed.replica.ids
    np.testing.assert_array_equal(as_json.replica.vectors, packed.replica.vectors)
    for r in records:
        assert packed.covisit.neighbours(r.item_id) == as_json.covisit.neighbours(r.item_id)
        assert packed.covisit.neighbours(r.item_id) == dict(r.neighbours)


@pytest.mark.parametrize("value", [b"FR1", b"FR1" + bytes(100), b"{}"])
def test_a_broken_stored_value_names_what_is_wrong(value: bytes) -> None:
    from flink_jobs.replica_value import unpack_replica_columns

    with pytest.raises((ValueError, struct.error), match=r"FR1|buffer"):
        unpack_replica_columns(value)
