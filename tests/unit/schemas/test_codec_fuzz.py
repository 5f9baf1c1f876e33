"""Fuzz: ``decode_event`` never raises, on any bytes or any JSON, and always answers with an
:class:`Event` or a :class:`DecodeError`."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.event_fields import DecodeError
from schemas.events import Event, decode_event, encode_event
from tests.fuzzing import examples
from tests.malformed import malformed_record

FUZZ = settings(max_examples=examples(800), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text()),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20,
)
_keys = st.sampled_from(["event_id", "event_type", "user_id", "item_id", "ts", "session_id",
                         "quantity", "price", "category", "brand", "title", "available",
                         "context", "schema_version", "other"])
# Objects with the right keys and arbitrary values reach deeper into the validator.
_event_like = st.dictionaries(_keys, _json, max_size=10)


def check(payload: Any) -> Event | DecodeError:
    got = decode_event(payload)
    assert type(got) in (Event, DecodeError)
    if isinstance(got, DecodeError):
        assert got.code and got.field.startswith("$") and got.message
    else:
        # Anything accepted can be written back and reads the same.
        assert decode_event(encode_event(got)) == got
    return got


@FUZZ
@given(st.binary(max_size=512))
def test_arbitrary_bytes(payload: bytes) -> None:
    check(payload)


@FUZZ
@given(_json)
def test_arbitrary_json(doc: Any) -> None:
    check(json.dumps(doc).encode())  # NaN/Infinity literals included on purpose


@FUZZ
@given(_event_like)
def test_event_shaped_json(doc: dict[str, Any]) -> None:
    check(json.dumps(doc).encode())


@FUZZ
@given(st.text(st.characters(categories=("L", "N", "Cc", "Cs", "Co")), max_size=300))
def test_arbitrary_text_including_surrogate_escapes(text: str) -> None:
    check(text.encode("utf-8", "surrogatepass"))  # surrogates as raw bytes: invalid UTF-8
    check(json.dumps({"event_id": text, "event_type": "view", "user_id": text,
                      "item_id": "i", "ts": 1_700_000_000_000}).encode())


@FUZZ
@given(st.binary(max_size=64), st.integers(0, 200))
def test_valid_prefix_then_garbage(tail: bytes, cut: int) -> None:
    good = b'{"event_id":"e","event_type":"view","user_id":"u","item_id":"i","ts":1700000000000}'
    check(good[:cut] + tail)
    check(good[:-1] + tail + b"}")


@settings(max_examples=examples(3000), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(malformed_record())
def test_malformed_records_are_rejected_with_a_reason(record: tuple[str, bytes | None,
                                                                    bytes | None]) -> None:
    kind, _, value = record
    got = check(value)
    assert isinstance(got, DecodeError), f"{kind}: accepted {value[:200]!r}"
