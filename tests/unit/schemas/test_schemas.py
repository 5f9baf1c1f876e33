"""Schemas: round trips of the three wire formats, every named decode error, and a
cross-check of the event codec against the ``jsonschema`` package on generated documents."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from schemas.dlq import DLQ_SCHEMA, DeadLetter, encode_dead_letter
from schemas.event_fields import EVENT_SCHEMA, TS_MAX_MS, TS_MIN_MS, DecodeError, parse_ts
from schemas.events import (
    EVENT_TYPES,
    INTERACTION_TYPES,
    Event,
    decode_event,
    encode_event,
    validate_event,
)
from schemas.recommendation import RECOMMENDATION_SCHEMA, Recommendation, ScoredItem
from tests.fuzzing import examples

Draft = jsonschema.Draft202012Validator

VIEW = {"event_id": "e1", "event_type": "view", "user_id": "u1", "item_id": "i1",
        "ts": 1_700_000_000_000}


def enc(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def expect_error(payload: bytes | None, code: str, field: str, **kw: Any) -> DecodeError:
    got = decode_event(payload, **kw)
    assert isinstance(got, DecodeError), got
    assert (got.code, got.field) == (code, field), got
    assert got.message
    return got


# --- round trips ----------------------------------------------------------------------------


def test_event_round_trip_full() -> None:
    ev = Event("e9", "purchase", 1_700_000_000_123, user_id="u1", item_id="i2",
               session_id="s1", quantity=2, price=19.5, category="shoes", brand="acme",
               context={"page": "home", "pos": 3, "ab": True, "x": None, "w": 0.5})
    doc = ev.to_json()
    assert Draft(EVENT_SCHEMA).is_valid(doc)
    assert decode_event(encode_event(ev)) == ev


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_event_round_trip_each_type(event_type: str) -> None:
    ev = Event(f"e-{event_type}", event_type, 1_700_000_000_000, user_id="u1", item_id="i1")
    if event_type == "item_upsert":
        ev = Event("e", event_type, 1_700_000_000_000, item_id="i1", title="Shoe",
                   category="c", brand="b", price=10.0, available=False)
    assert decode_event(encode_event(ev)) == ev
    assert Draft(EVENT_SCHEMA).is_valid(ev.to_json())


def test_event_rfc3339_ts_decodes_to_exact_ms() -> None:
    doc = dict(VIEW, ts="2023-11-14T23:13:20.001+01:00")
    ev = decode_event(enc(doc))
    assert isinstance(ev, Event) and ev.ts_ms == 1_700_000_000_001
    assert decode_event(encode_event(ev)) == ev  # re-encoded as epoch ms


def test_non_ascii_ids_round_trip() -> None:
    ev = Event("é-1", "view", 1_700_000_000_000, user_id="用户", item_id="i☃")
    assert decode_event(encode_event(ev)) == ev


def test_recommendation_round_trip_and_schema() -> None:
    rec = Recommendation("u1", (ScoredItem("i2", 0.91, "bought with i1"),
                                ScoredItem("i3", 0.5, "popular now")),
                         "seq-1", 1_700_000_000_500, 1_700_000_000_000, "e7", 3, cold_start=True)
    Draft(RECOMMENDATION_SCHEMA).validate(rec.to_json())
    assert Recommendation.from_json(rec.to_bytes()) == rec
    assert Recommendation.from_json(rec.to_json()) == rec


def test_recommendation_missing_field_names_it() -> None:
    doc = Recommendation("u", (), "m", 1, 1, "e", 1).to_json()
    del doc["seq"]
    with pytest.raises(ValueError, match="seq"):
        Recommendation.from_json(json.dumps(doc))


@pytest.mark.parametrize("value", [b'{"a":1}', b"\xff\xfe\x00", None, b""])
def test_dead_letter_round_trip_keeps_bytes(value: bytes | None) -> None:
    dl = DeadLetter.build(value, b"\x00k", "invalid_json", "$", "bad", "freshrec.events",
                          1, 42, 1_700_000_000_000)
    Draft(DLQ_SCHEMA).validate(dl.to_json())
    back = DeadLetter.from_json(encode_dead_letter(dl))
    assert back == dl
    assert back.original_bytes() == value


# --- every invalid case names its error -----------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "code", "field"),
    [
        (dict(VIEW, user_id=5), "wrong_type", "$.user_id"),
        (dict(VIEW, ts=True), "wrong_type", "$.ts"),
        (dict(VIEW, ts=1.5e12 + 0.5), "wrong_type", "$.ts"),
        (dict(VIEW, price="9.99"), "wrong_type", "$.price"),
        (dict(VIEW, quantity=1.5), "wrong_type", "$.quantity"),
        (dict(VIEW, available="yes"), "wrong_type", "$.available"),
        (dict(VIEW, context=[1]), "wrong_type", "$.context"),
        (dict(VIEW, event_type=7), "wrong_type", "$.event_type"),
        (dict(VIEW, session_id=None), "wrong_type", "$.session_id"),
        (dict(VIEW, title=None), "wrong_type", "$.title"),
        ({k: v for k, v in VIEW.items() if k != "item_id"}, "missing_field", "$.item_id"),
        ({k: v for k, v in VIEW.items() if k != "ts"}, "missing_field", "$.ts"),
        ({k: v for k, v in VIEW.items() if k != "event_id"}, "missing_field", "$.event_id"),
        ({"event_id": "e", "event_type": "forget_user", "ts": 1_700_000_000_000},
         "missing_field", "$.user_id"),
        (dict(VIEW, event_type="pv"), "unknown_event_type", "$.event_type"),
        (dict(VIEW, event_type="VIEW"), "unknown_event_type", "$.event_type"),
        (dict(VIEW, ts="yesterday"), "bad_timestamp", "$.ts"),
        (dict(VIEW, ts="2023-02-30T00:00:00Z"), "bad_timestamp", "$.ts"),
        (dict(VIEW, ts="2023-01-01T24:00:00Z"), "bad_timestamp", "$.ts"),
        (dict(VIEW, ts="2023-01-01T00:00:00"), "bad_timestamp", "$.ts"),  # no offset
        (dict(VIEW, ts="2023-01-01 00:00:00Z"), "bad_timestamp", "$.ts"),  # not date-time
        (dict(VIEW, ts="2023-01-01T00:00:00Z\n"), "bad_timestamp", "$.ts"),
        (dict(VIEW, ts="٢٠٢٣-01-01T00:00:00Z"), "bad_timestamp", "$.ts"),  # non-ASCII digits
        (dict(VIEW, ts=0), "bad_timestamp", "$.ts"),  # seconds, not ms: 1970
        (dict(VIEW, ts=1_700_000_000), "bad_timestamp", "$.ts"),  # seconds: 1970-01-20
        (dict(VIEW, ts="1989-12-31T23:59:59Z"), "bad_timestamp", "$.ts"),
        (dict(VIEW, ts=10**30), "bad_timestamp", "$.ts"),  # huge number
        (dict(VIEW, quantity=10**30), "out_of_range", "$.quantity"),
        (dict(VIEW, price=1e300), "out_of_range", "$.price"),
        (dict(VIEW, price=-1), "out_of_range", "$.price"),
        (dict(VIEW, extra=1), "unknown_field", "$.extra"),
        (dict(VIEW, userId="u1"), "unknown_field", "$.userId"),
        (dict(VIEW, user_id="u\x001"), "bad_id", "$.user_id"),
        (dict(VIEW, item_id="i\n"), "bad_id", "$.item_id"),
        (dict(VIEW, event_id="e\x7f"), "bad_id", "$.event_id"),
        (dict(VIEW, brand="b\t"), "bad_id", "$.brand"),
        (dict(VIEW, user_id=""), "bad_length", "$.user_id"),
        (dict(VIEW, item_id="x" * 129), "bad_length", "$.item_id"),
        (dict(VIEW, title="t" * 513), "bad_length", "$.title"),
        (dict(VIEW, context={"k": {"deeper": {}}}), "too_deep", "$.context.k"),
        (dict(VIEW, context={f"k{i}": i for i in range(33)}), "too_many_fields", "$.context"),
        (dict(VIEW, schema_version=2), "bad_version", "$.schema_version"),
        ([VIEW], "not_an_object", "$"),
        ("view", "not_an_object", "$"),
    ],
)
def test_invalid_document_names_code_and_field(doc: Any, code: str, field: str) -> None:
    expect_error(enc(doc), code, field)
    # The schema agrees that each of these is invalid (the 1990 bound on strings is the
    # one rule JSON Schema cannot state; its description does).
    if not (isinstance(doc, dict) and doc.get("ts") == "1989-12-31T23:59:59Z"):
        assert not ecma_validator().is_valid(doc)


def test_null_payload() -> None:
    expect_error(None, "null_payload", "$")


def test_json_null_is_not_an_object() -> None:
    expect_error(b"null", "not_an_object", "$")


@pytest.mark.parametrize("payload", [b"\xff", b'{"event_id":"\xc3\x28"}', b"\xed\xa0\x80"])
def test_non_utf8(payload: bytes) -> None:
    expect_error(payload, "invalid_utf8", "$")


def test_lone_surrogate_escape_is_refused() -> None:
    # Valid JSON, but the id could never be encoded back to UTF-8 (or used as a key).
    got = expect_error(enc(VIEW).replace(b'"u1"', b'"u\\ud800"'), "invalid_unicode", "$.user_id")
    assert "surrogate" in got.message


def test_one_megabyte_payload() -> None:
    big = enc(dict(VIEW, title="x" * 1_000_000))
    got = expect_error(big, "payload_too_large", "$")
    assert "65536" in got.message
    # A deployment that raises the limit still gets the field rule.
    expect_error(big, "bad_length", "$.title", max_payload_bytes=2_000_000)


@pytest.mark.parametrize(("depth", "field"), [(50, "$.context.a"), (63, "$"), (990, "$"),
                                             (60_000, "$")])
def test_deep_nesting(depth: int, field: str) -> None:
    # Shallow nesting breaks the "flat context" rule; deeper than MAX_JSON_DEPTH is refused
    # before parsing (the event and its context take 2 levels).
    nested = enc(VIEW)[:-1] + b',"context":{"a":' + b"[" * depth + b"]" * depth + b"}}"
    expect_error(nested, "too_deep", field, max_payload_bytes=1 << 20)
    expect_error(b"[" * 60_000 + b"]" * 60_000, "too_deep", "$", max_payload_bytes=1 << 20)


def test_nesting_verdict_does_not_depend_on_the_callers_stack() -> None:
    # The job decodes many frames deep inside Flink's runner; a test decodes near the top.
    nested = enc(VIEW)[:-1] + b',"context":{"a":' + b"[" * 900 + b"]" * 900 + b"}}"

    def deep(frames: int) -> Event | DecodeError:
        return deep(frames - 1) if frames else decode_event(nested, max_payload_bytes=1 << 20)

    shallow = decode_event(nested, max_payload_bytes=1 << 20)
    assert isinstance(shallow, DecodeError) and (shallow.code, shallow.field) == ("too_deep", "$")
    assert deep(sys.getrecursionlimit() - 200) == shallow


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_not_json(literal: bytes) -> None:
    expect_error(enc(VIEW)[:-1] + b',"price":' + literal + b"}", "invalid_json", "$")


@pytest.mark.parametrize("number", [b"1e400", b"-1e400"])
def test_numbers_that_overflow_to_infinity(number: bytes) -> None:
    expect_error(enc(VIEW)[:-1] + b',"price":' + number + b"}", "out_of_range", "$.price")
    expect_error(enc(VIEW)[:-1] + b',"context":{"n":' + number + b"}}", "out_of_range",
                 "$.context.n")
    expect_error(enc(dict(VIEW, ts=0)).replace(b'"ts": 0', b'"ts": ' + number), "wrong_type",
                 "$.ts")


def test_integer_with_too_many_digits() -> None:
    expect_error(enc(VIEW).replace(b"1700000000000", b"1" * 5000), "invalid_json", "$")


@pytest.mark.parametrize("payload", [b"", b"{", b'{"a":1}x', b"\x00", b"   "])
def test_not_json(payload: bytes) -> None:
    expect_error(payload, "invalid_json", "$")


def test_integral_floats_count_as_integers() -> None:
    # JSON Schema: 1.7e12 and 2.0 are integers; the codec normalises them to int.
    ev = decode_event(enc(dict(VIEW, ts=1.7e12, quantity=2.0, schema_version=1.0)))
    assert isinstance(ev, Event)
    assert (ev.ts_ms, ev.quantity) == (1_700_000_000_000, 2)
    assert type(ev.ts_ms) is int and type(ev.quantity) is int


def test_ts_bounds_are_inclusive_of_the_schema_limits() -> None:
    assert parse_ts(TS_MIN_MS) == TS_MIN_MS and parse_ts(TS_MAX_MS) == TS_MAX_MS
    assert isinstance(parse_ts(TS_MIN_MS - 1), DecodeError)
    assert isinstance(parse_ts(TS_MAX_MS + 1), DecodeError)
    assert parse_ts("1990-01-01T00:00:00Z") == TS_MIN_MS
    assert parse_ts("2099-12-31T23:59:59.999999999Z") == TS_MAX_MS
    assert parse_ts("2100-01-01T00:00:00Z") != TS_MAX_MS + 1  # a DecodeError


def test_max_id_length_is_configurable() -> None:
    doc = dict(VIEW, user_id="u" * 20)
    assert isinstance(decode_event(enc(doc)), Event)
    expect_error(enc(doc), "bad_length", "$.user_id", max_id_length=16)


@pytest.mark.parametrize("arg", ["text", 5, 1.5, object()])
def test_non_bytes_argument_does_not_raise(arg: Any) -> None:
    got = decode_event(arg)
    assert isinstance(got, DecodeError) and got.code == "wrong_type"


def test_bytearray_and_memoryview_decode() -> None:
    assert isinstance(decode_event(bytearray(enc(VIEW))), Event)
    assert isinstance(decode_event(memoryview(enc(VIEW))), Event)


def test_validate_event_on_parsed_dict() -> None:
    assert isinstance(validate_event(dict(VIEW)), Event)
    assert validate_event(dict(VIEW, event_type="buy")).code == "unknown_event_type"


# --- cross-check against the jsonschema package --------------------------------------------


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    """JSON Schema patterns are ECMA-262: ``$`` never matches before a trailing newline.

    jsonschema uses Python's ``re.search``, where ``^[^\\x00-\\x1f]+$`` accepts ``"u1\\n"``;
    this keyword implementation fixes only that difference.
    """
    if validator.is_type(instance, "string"):
        py = pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern
        if not re.search(py, instance):
            yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


def _date_time_checker() -> jsonschema.FormatChecker:
    try:
        from rfc3339_validator import validate_rfc3339  # what jsonschema itself uses
    except ImportError:  # pragma: no cover - a broken dev install
        pytest.fail("the cross-check needs rfc3339-validator (dev extra) for date-time checks")
    checker = jsonschema.FormatChecker(formats=())

    @checker.checks("date-time")
    def is_datetime(value: object) -> bool:
        # Same trailing-newline fix as for patterns (validate_rfc3339 ends in a Python $).
        if not isinstance(value, str):
            return True
        return not value.endswith("\n") and validate_rfc3339(value.upper())

    return checker


_VALIDATOR: list[Any] = []


def ecma_validator() -> Any:
    if not _VALIDATOR:
        cls = jsonschema.validators.extend(Draft, {"pattern": _ecma_pattern})
        _VALIDATOR.append(cls(EVENT_SCHEMA, format_checker=_date_time_checker()))
    return _VALIDATOR[0]


def test_stock_jsonschema_checks_date_time_here() -> None:
    # Without rfc3339-validator installed jsonschema silently skips "date-time".
    assert "date-time" in Draft.FORMAT_CHECKER.checkers
    assert not Draft(EVENT_SCHEMA, format_checker=Draft.FORMAT_CHECKER).is_valid(
        dict(VIEW, ts="2023-02-30T00:00:00Z"))


# Strings: printable mostly, with a few control characters and non-ASCII thrown in.
_text = st.text(
    alphabet=st.characters(codec="utf-8", categories=("L", "N", "P", "S", "Zs", "Cc")),
    max_size=12,
)
_good_id = st.from_regex(r"[a-z0-9_-]{1,10}", fullmatch=True)
# st.one_of has no weights: repeating a branch makes it likelier (about half stay valid).
_ids = st.one_of(_good_id, _good_id, _good_id, _good_id, _good_id, _good_id,
                 _text.filter(bool), st.just(""), st.just("x" * 128), st.just("x" * 129))
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                     st.floats(allow_nan=False, allow_infinity=False), _text)
_json = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(_text, inner, max_size=3)), max_leaves=6)


@st.composite
def _ts_string(draw: st.DrawFn) -> str:
    # Years away from the 1990/2100 bounds: the schema cannot state them for strings.
    y = draw(st.integers(1991, 2098))
    mo = draw(st.integers(1, 12))
    d = draw(st.integers(1, 31))  # invalid days (Feb 30) on purpose
    hh, mm, ss = draw(st.integers(0, 24)), draw(st.integers(0, 59)), draw(st.integers(0, 60))
    frac = draw(st.one_of(st.just(""), st.from_regex(r"\.[0-9]{1,12}", fullmatch=True)))
    tz = draw(st.sampled_from(["Z", "z", "+05:30", "-08:00", "+24:00", "", "+0530"]))
    sep = draw(st.sampled_from(["T", "T", "t", " "]))
    return f"{y:04d}-{mo:02d}-{d:02d}{sep}{hh:02d}:{mm:02d}:{ss:02d}{frac}{tz}"


_ts = st.one_of(
    st.integers(TS_MIN_MS - 10, TS_MAX_MS + 10),
    st.integers(TS_MIN_MS, TS_MAX_MS),
    st.integers(TS_MIN_MS, TS_MAX_MS),
    st.sampled_from([TS_MIN_MS, TS_MAX_MS, TS_MIN_MS - 1, TS_MAX_MS + 1, 0, -1]),
    st.integers(TS_MIN_MS, TS_MAX_MS).map(float),
    _ts_string(),
)

_optional = {
    "session_id": _ids,
    "quantity": st.one_of(st.integers(1, 100_000), st.integers(-2, 100_002),
                          st.sampled_from([2.0, 1.5, 0.0])),
    "price": st.one_of(st.floats(-1, 2e9, allow_nan=False), st.integers(-5, 10**10)),
    "category": _ids,
    "brand": _ids,
    "title": st.one_of(_text, _text, st.just("t" * 512), st.just("t" * 513)),
    "available": st.booleans(),
    "context": st.dictionaries(
        st.one_of(_text, st.just("k" * 65)),
        st.one_of(_scalars, st.just("v" * 257), st.lists(st.integers(), max_size=1)),
        max_size=4,
    ),
    "schema_version": st.sampled_from([1, 1, 1, 1.0, 2, True]),
}


@st.composite
def event_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A plausible event, then zero to three mutations of it."""
    event_type = draw(st.sampled_from(EVENT_TYPES))
    doc: dict[str, Any] = {"event_id": draw(_ids), "event_type": event_type, "ts": draw(_ts)}
    if event_type in INTERACTION_TYPES or event_type == "forget_user" or draw(st.booleans()):
        doc["user_id"] = draw(_ids)
    if event_type != "forget_user" or draw(st.booleans()):
        doc["item_id"] = draw(_ids)
    for name in draw(st.lists(st.sampled_from(sorted(_optional)), max_size=4, unique=True)):
        doc[name] = draw(_optional[name])
    for _ in range(draw(st.sampled_from([0, 0, 0, 0, 1, 2, 3]))):
        how = draw(st.sampled_from(["drop", "retype", "add", "event_type"]))
        if how == "drop" and doc:
            doc.pop(draw(st.sampled_from(sorted(doc))))
        elif how == "retype" and doc:
            doc[draw(st.sampled_from(sorted(doc)))] = draw(_json)
        elif how == "add":
            doc[draw(st.sampled_from(["extra", "userId", "ts_ms", "price"]))] = draw(_json)
        else:
            doc["event_type"] = draw(st.sampled_from(["buy", "pv", "", *EVENT_TYPES]))
    return doc


@settings(max_examples=examples(3000), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_documents())
def test_codec_agrees_with_jsonschema(doc: dict[str, Any]) -> None:
    payload = json.dumps(doc, allow_nan=False).encode()
    got = decode_event(payload, max_payload_bytes=1 << 20)
    errors = list(ecma_validator().iter_errors(json.loads(payload)))
    assert isinstance(got, Event) == (not errors), (got, [e.message for e in errors])
    # Shown by --hypothesis-show-statistics: how many were accepted, why others were not.
    event("accepted" if isinstance(got, Event) else f"rejected: {got.code} {got.field}")
    if isinstance(got, Event):
        # Whatever is accepted re-encodes to an equal, schema-valid event.
        assert decode_event(encode_event(got)) == got
        assert ecma_validator().is_valid(got.to_json())
