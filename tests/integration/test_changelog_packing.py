"""The changelog bundler's packing of item-embedding records in Java (``ItemEmbeddingPacker``)
against the replica's own layout (``flink_jobs.replica_value``), in a real JVM."""

from __future__ import annotations

import dataclasses
import json

import pytest

from flink_jobs.recommender_job import job_jars
from flink_jobs.replica_value import pack_replica_value
from freshrec_common.settings import load_settings
from schemas.item_embedding import ItemEmbedding
from tests.unit.flink_jobs.bundle_sides import published

_BASE = {"schema_version": 1, "item_id": "x", "vector": [0.1, 0.2], "bias": 0.0,
         "trend": None, "n_events": 0, "updated_at": 5, "available": True}


@pytest.fixture(scope="module")
def packer():  # type: ignore[no-untyped-def]
    from pyflink.java_gateway import get_gateway
    from pyflink.util.java_utils import add_jars_to_context_class_loader

    jars = job_jars(load_settings(None))
    add_jars_to_context_class_loader([jar.resolve().as_uri() for jar in jars])
    return get_gateway().jvm.io.freshrec.flink.ItemEmbeddingPacker()


@pytest.mark.parametrize("record", [
    published(0).to_bytes(),
    published(150).to_bytes(),
    published(3, trend=None, price=None, category=None, brand=None, title=None,
              available=False).to_bytes(),
    dataclasses.replace(published(2), item_id="é-ünï", category="").to_bytes(),
    json.dumps({**_BASE, "vector": [1, 2], "bias": 1, "trend": 2, "acc": 3, "price": 0,
                "neighbours": [["a", 1], ["b", 2.5]]}).encode(),
    json.dumps(_BASE).encode(),  # no acc, category, brand, title, price, neighbours
    # Doubles at the edges, parsed by Jackson's fast parser: the same bits as Python's.
    json.dumps({**_BASE, "vector": [5e-324, -0.0, 1e-45, 3.4028235e38, 0.1],
                "bias": 2.2250738585072014e-308, "acc": 1.7976931348623157e308,
                "neighbours": [["a", 0.30000000000000004], ["b", 9007199254740993.0],
                               ["c", 4.9406564584124654e-324]]}).encode(),
])
def test_a_record_is_packed_byte_for_byte_as_the_replica_packs_it(packer, record: bytes
                                                                 ) -> None:
    assert bytes(packer.pack(record)) == pack_replica_value(ItemEmbedding.from_bytes(record))


@pytest.mark.parametrize("record", [
    b"not json",
    json.dumps({**_BASE, "schema_version": 2}).encode(),
    json.dumps({**_BASE, "colour": "red"}).encode(),
    json.dumps({**_BASE, "vector": [0.1, None]}).encode(),
    json.dumps({**_BASE, "item_id": 7}).encode(),
    json.dumps({**_BASE, "neighbours": [["a"]]}).encode(),
    json.dumps({k: v for k, v in _BASE.items() if k != "available"}).encode(),
])
def test_a_record_the_layout_does_not_hold_is_left_to_python(packer, record: bytes) -> None:
    """Python parses it, or names what is wrong with it, as for any record."""
    assert packer.pack(record) is None
