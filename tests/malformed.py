"""Hypothesis strategies for hostile input: records the job must dead-letter, never crash on.

``malformed_record()`` draws ``(kind, key, value)``: a Kafka key and value broken in one of
the ways storefronts (or attackers) break them, starting from a valid event so the fault is
the only thing wrong. ``draw_malformed(n)`` runs Hypothesis' engine to collect ``n`` of them
for a replay through the real job; the unit fuzz uses the strategy directly.
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

MIN_TS = 631_152_000_000  # 1990-01-01, the schema's bounds
MAX_TS = 4_102_444_799_999  # 2099-12-31
INTERACTIONS = ["view", "click", "favorite", "unfavorite", "add_to_cart", "remove_from_cart",
                "purchase"]
_STRING_FIELDS = ["event_id", "user_id", "item_id", "session_id", "category", "brand", "title"]
_ID_FIELDS = ["event_id", "user_id", "item_id", "session_id"]

_ids = st.text(st.characters(codec="ascii", categories=("L", "N")), min_size=1, max_size=12)


@st.composite
def valid_event(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "event_id": "fz-" + draw(_ids),
        "event_type": draw(st.sampled_from(INTERACTIONS)),
        "user_id": "fz-user-" + draw(_ids),
        "item_id": "fz-item-" + draw(_ids),
        "ts": draw(st.integers(1_700_000_000_000, 1_800_000_000_000)),
    }
    if draw(st.booleans()):
        doc.update(session_id=draw(_ids), quantity=draw(st.integers(1, 5)),
                   price=draw(st.floats(0, 1000)), category=draw(_ids))
    return doc


def _dump(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


_wrong_for_string = st.one_of(st.integers(), st.booleans(), st.lists(st.integers(), max_size=2),
                              st.dictionaries(_ids, st.integers(), max_size=2))
_wrong_ts = st.one_of(st.booleans(), st.lists(st.integers(), max_size=2),
                      st.floats(1.7e12, 1.8e12).map(lambda x: math.floor(x) + 0.5),
                      st.text(max_size=20).filter(lambda t: t[:1].isalpha()))


@st.composite
def malformed_record(draw: st.DrawFn) -> tuple[str, bytes | None, bytes | None]:
    """One record that violates the event schema (kind, key, value)."""
    doc = draw(valid_event())
    key = None if draw(st.integers(0, 9)) == 0 else doc["user_id"].encode()  # null keys too
    kind = draw(st.sampled_from([
        "invalid_json", "wrong_type", "missing_field", "extra_field", "unknown_type",
        "non_utf8", "null_value", "null_payload", "deep_nesting", "huge_number", "nan",
        "ts_out_of_range", "control_chars", "id_too_long", "not_an_object",
    ]))
    if kind == "invalid_json":
        raw = _dump(doc)
        cut = draw(st.integers(1, len(raw) - 1))
        # raw[:cut] never closes the object; "}}" closes it once too often.
        value = raw[:cut] + draw(st.sampled_from([b"", b"}}", b",", b"'", b"{{", b"]"]))
    elif kind == "wrong_type":
        field = draw(st.sampled_from([*_STRING_FIELDS[:3], "ts", "price", "quantity"]))
        if field == "ts":
            doc["ts"] = draw(_wrong_ts)
        elif field in ("price", "quantity"):
            doc[field] = draw(st.one_of(st.text(max_size=5), st.booleans(), st.just([1])))
        else:
            doc[field] = draw(_wrong_for_string)
        value = _dump(doc)
    elif kind == "missing_field":
        del doc[draw(st.sampled_from(["event_id", "event_type", "ts", "user_id", "item_id"]))]
        value = _dump(doc)
    elif kind == "extra_field":
        doc["x_" + draw(_ids)] = draw(st.one_of(st.integers(), st.text(max_size=5)))
        value = _dump(doc)
    elif kind == "unknown_type":
        doc["event_type"] = draw(st.text(max_size=20).filter(
            lambda t: t not in (*INTERACTIONS, "item_upsert", "forget_user")))
        value = _dump(doc)
    elif kind == "non_utf8":
        raw = _dump(doc)
        at = draw(st.integers(1, len(raw) - 1))
        value = raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80",
                                                 b"\x80"])) + raw[at:]
    elif kind == "null_value":
        doc[draw(st.sampled_from(["event_id", "event_type", "ts", "user_id", "item_id"]))] = None
        value = _dump(doc)
    elif kind == "null_payload":
        value = None
        key = key or b"k"  # kafka-python cannot send a record without key and value
    elif kind == "deep_nesting":
        depth = draw(st.integers(2, 5000))
        value = _dump(doc)[:-1] + b', "context": {"a": ' + b"[" * depth + b"]" * depth + b"}}"
    elif kind == "huge_number":
        field = draw(st.sampled_from(["ts", "quantity", "price"]))
        digits = draw(st.integers(20, 6000))
        value = _dump({**doc, field: 0}).replace(
            f'"{field}": 0'.encode(), f'"{field}": {"9" * digits}'.encode())
    elif kind == "nan":
        field = draw(st.sampled_from(["ts", "price", "quantity"]))
        doc[field] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        value = _dump(doc)
    elif kind == "ts_out_of_range":
        doc["ts"] = draw(st.one_of(st.integers(-(2**62), MIN_TS - 1),
                                   st.integers(MAX_TS + 1, 2**62),
                                   st.sampled_from(["1900-01-01T00:00:00Z",
                                                    "2999-12-31T23:59:59+00:00"])))
        value = _dump(doc)
    elif kind == "control_chars":
        field = draw(st.sampled_from(_ID_FIELDS[:3]))
        ctrl = draw(st.sampled_from(["\x00", "\x01", "\n", "\x1b", "\x7f", "\t"]))
        doc[field] = doc[field][:2] + ctrl + doc[field][2:]
        value = _dump(doc)
    elif kind == "id_too_long":
        doc[draw(st.sampled_from(_ID_FIELDS[:3]))] = "x" * draw(st.integers(129, 2000))
        value = _dump(doc)
    else:  # not_an_object
        value = _dump(draw(st.one_of(st.lists(st.integers(), max_size=3), st.integers(),
                                     st.text(max_size=10), st.none())))
    return kind, key, value


def draw_malformed(n: int, random_seed: int = 0) -> list[tuple[str, bytes | None, bytes | None]]:
    """``n`` malformed records from Hypothesis' engine (reproducible for a given seed)."""
    out: list[tuple[str, bytes | None, bytes | None]] = []

    @seed(random_seed)
    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(malformed_record())
    def collect(record: tuple[str, bytes | None, bytes | None]) -> None:
        out.append(record)

    collect()
    return out
