"""Event v1 codec: bytes -> :class:`Event` or :class:`DecodeError`, never an exception.

The rules (event types, required fields per type, id limits, timestamp bounds) are read
from ``event.v1.json`` at import, so the JSON Schema file stays the single source of
truth (the checks of single fields are in :mod:`schemas.event_fields`);
``tests/unit/schemas/test_schemas.py`` cross-checks this codec against the ``jsonschema``
package on generated documents.

>>> ev = decode_event(b'{"event_id":"e1","event_type":"view","user_id":"u1",'
...                   b'"item_id":"i9","ts":1700000000000}')
>>> ev.event_type, ev.user_id, ev.item_id, ev.ts_ms
('view', 'u1', 'i9', 1700000000000)
>>> err = decode_event(b'{"event_id":"e1","event_type":"view","user_id":"u1","ts":1}')
>>> err.code, err.field
('missing_field', '$.item_id')
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from schemas.event_fields import (
    EVENT_SCHEMA,
    ID_MAX_LENGTH,
    DecodeError,
    check_context,
    check_id,
    err,
    parse_ts,
)

_PROPS: dict[str, Any] = EVENT_SCHEMA["properties"]
EVENT_TYPES: tuple[str, ...] = tuple(_PROPS["event_type"]["enum"])
INTERACTION_TYPES: tuple[str, ...] = tuple(
    EVENT_SCHEMA["allOf"][0]["if"]["properties"]["event_type"]["enum"]
)
_REQUIRED_TOP: tuple[str, ...] = tuple(EVENT_SCHEMA["required"])
_REQUIRED_BY_TYPE: dict[str, tuple[str, ...]] = {}
for _rule in EVENT_SCHEMA["allOf"]:
    _cond = _rule["if"]["properties"]["event_type"]
    for _t in _cond.get("enum", [_cond.get("const")]):
        _REQUIRED_BY_TYPE[_t] = tuple(_rule["then"]["required"])

_KNOWN_FIELDS = frozenset(_PROPS)
_ID_FIELDS = ("event_id", "user_id", "item_id", "session_id")
_LABEL_FIELDS = ("category", "brand")
_EVENT_TYPE_SET = frozenset(EVENT_TYPES)
_QUANTITY_MAX: int = _PROPS["quantity"]["maximum"]
_PRICE_MAX: float = _PROPS["price"]["maximum"]
_TITLE_MAX: int = _PROPS["title"]["maxLength"]
_DESCRIPTION_MAX: int = _PROPS["description"]["maxLength"]
_LABEL_MAX: int = EVENT_SCHEMA["$defs"]["label"]["maxLength"]
_ABSENT = object()
DEFAULT_MAX_PAYLOAD_BYTES = 65536


@dataclass(frozen=True, slots=True)
class Event:
    """A validated storefront event (event v1). ``ts_ms`` is always epoch milliseconds."""

    event_id: str
    event_type: str
    ts_ms: int
    user_id: str | None = None
    item_id: str | None = None
    session_id: str | None = None
    quantity: int | None = None
    price: float | None = None
    category: str | None = None
    brand: str | None = None
    title: str | None = None
    available: bool | None = None
    context: dict[str, Any] | None = None
    description: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The wire form (event v1), omitting absent optional fields."""
        doc: dict[str, Any] = {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "ts": self.ts_ms,
        }
        for key, value in asdict(self).items():
            if key not in ("event_id", "event_type", "ts_ms") and value is not None:
                doc[key] = value
        return doc


def encode_event(event: Event) -> bytes:
    """Serialise an event to compact UTF-8 JSON (event v1)."""
    return json.dumps(event.to_json(), separators=(",", ":"), ensure_ascii=False).encode()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# One decoder for all calls: json.loads(..., parse_constant=...) builds a new one each time.
_DECODE_JSON = json.JSONDecoder(parse_constant=_reject_constant).decode
# The parser's own limit is the interpreter's recursion limit less the caller's stack, so
# the same record nested ~1,000 deep passed in one process and not in the job: nesting is
# judged here, the same everywhere (an event nests 2 deep: itself and its context).
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(r"[\[\]{}]")


def _nests_too_deep(text: str) -> bool:
    """Whether the JSON in ``text`` nests deeper than :data:`MAX_JSON_DEPTH` (brackets
    inside strings do not count).

    >>> _nests_too_deep('{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}')
    False
    >>> _nests_too_deep("[" * 65 + "]" * 65), _nests_too_deep("[" * 64 + "]" * 64)
    (True, False)
    """
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return False
    depth = 0
    for bracket in _BRACKETS.findall(_JSON_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            return True
    return False


def _first_missing(doc: dict[str, Any], names: tuple[str, ...], why: str) -> DecodeError:
    name = next(n for n in names if n not in doc)
    return err("missing_field", f"$.{name}", f"{name} is required{why}")


def validate_event(doc: Any, max_id_length: int = ID_MAX_LENGTH) -> Event | DecodeError:
    """Validate a parsed JSON value against event v1.

    Returns the :class:`Event`, or a :class:`DecodeError` for the first rule broken.

    >>> validate_event({"event_id": "e", "event_type": "buy", "ts": 1}).code
    'unknown_event_type'
    """
    if type(doc) is not dict:
        return err("not_an_object", "$", "an event must be a JSON object")
    try:
        event_id = doc["event_id"]
        event_type = doc["event_type"]
        raw_ts = doc["ts"]
    except KeyError:
        return _first_missing(doc, _REQUIRED_TOP, "")
    if not doc.keys() <= _KNOWN_FIELDS:
        name = min(doc.keys() - _KNOWN_FIELDS)[:64]
        return err("unknown_field", f"$.{name}", f"field {name!r} is not in event v1")
    get = doc.get
    version = get("schema_version", 1)
    if version != 1 or type(version) not in (int, float):  # const 1: 1.0 equals, true doesn't
        return err("bad_version", "$.schema_version", "schema_version must be 1")
    if type(event_type) is not str:
        return err("wrong_type", "$.event_type", "event_type must be a string")
    if event_type not in _EVENT_TYPE_SET:
        return err(
            "unknown_event_type", "$.event_type",
            f"event_type {event_type[:40]!r} is not one of {', '.join(EVENT_TYPES)}",
        )
    event_id = check_id(event_id, "event_id", max_id_length)
    if type(event_id) is DecodeError:
        return event_id
    # The three optional ids, checked only when present (absent -> None).
    user_id = get("user_id", _ABSENT)
    if user_id is not _ABSENT:
        user_id = check_id(user_id, "user_id", max_id_length)
        if type(user_id) is DecodeError:
            return user_id
    item_id = get("item_id", _ABSENT)
    if item_id is not _ABSENT:
        item_id = check_id(item_id, "item_id", max_id_length)
        if type(item_id) is DecodeError:
            return item_id
    session_id = get("session_id", _ABSENT)
    if session_id is not _ABSENT:
        session_id = check_id(session_id, "session_id", max_id_length)
        if type(session_id) is DecodeError:
            return session_id
    needs = _REQUIRED_BY_TYPE.get(event_type, ())
    if needs and not all(n in doc for n in needs):
        return _first_missing(doc, needs, f" for {event_type}")
    ts = parse_ts(raw_ts)
    if type(ts) is DecodeError:
        return ts
    if len(doc) > 3 + (user_id is not _ABSENT) + (item_id is not _ABSENT) + (
        session_id is not _ABSENT
    ):
        return _validate_optional(doc, event_id, event_type, ts,  # type: ignore[arg-type]
                                  _opt(user_id), _opt(item_id), _opt(session_id))
    return Event(event_id, event_type, ts, _opt(user_id), _opt(item_id),  # type: ignore[arg-type]
                 _opt(session_id))


def _opt(value: Any) -> Any:
    return None if value is _ABSENT else value


def _validate_optional(
    doc: dict[str, Any], event_id: str, event_type: str, ts: int,
    user_id: str | None, item_id: str | None, session_id: str | None,
) -> Event | DecodeError:
    """The rarer fields: quantity, price, labels, title, description, available, context."""
    get = doc.get
    labels: dict[str, str | None] = {}
    for name in _LABEL_FIELDS:
        value = get(name, _ABSENT)
        if value is _ABSENT:
            labels[name] = None
            continue
        checked = check_id(value, name, _LABEL_MAX)
        if type(checked) is DecodeError:
            return checked
        labels[name] = checked  # type: ignore[assignment]
    quantity = get("quantity", _ABSENT)
    if quantity is _ABSENT:
        quantity = None
    else:
        kind = type(quantity)
        if kind is float and quantity.is_integer():
            quantity = int(quantity)  # JSON Schema: 2.0 is an integer
        elif kind is not int:
            return err("wrong_type", "$.quantity", "quantity must be an integer")
        if not 1 <= quantity <= _QUANTITY_MAX:
            return err("out_of_range", "$.quantity", f"quantity must be in 1..{_QUANTITY_MAX}")
    price = get("price", _ABSENT)
    if price is _ABSENT:
        price = None
    else:
        kind = type(price)
        if kind is not float and kind is not int:
            return err("wrong_type", "$.price", "price must be a number")
        # Bounds first: math.isfinite() of a 300-digit int raises OverflowError.
        if not (0 <= price <= _PRICE_MAX and math.isfinite(price)):
            return err("out_of_range", "$.price", f"price must be a number in 0..{_PRICE_MAX:g}")
        price = float(price)
    texts: dict[str, str | None] = {}
    for name, limit in (("title", _TITLE_MAX), ("description", _DESCRIPTION_MAX)):
        text = get(name, _ABSENT)
        if text is _ABSENT:
            text = None
        elif type(text) is not str:
            return err("wrong_type", f"$.{name}", f"{name} must be a string")
        elif len(text) > limit:
            return err("bad_length", f"$.{name}", f"{name} must be at most {limit} characters")
        texts[name] = text
    available = get("available", _ABSENT)
    if available is _ABSENT:
        available = None
    elif type(available) is not bool:
        return err("wrong_type", "$.available", "available must be true or false")
    context = get("context", _ABSENT)
    if context is _ABSENT:
        context = None
    else:
        context = check_context(context)
        if type(context) is DecodeError:
            return context
    return Event(
        event_id=event_id, event_type=event_type, ts_ms=ts,
        user_id=user_id, item_id=item_id, session_id=session_id,
        quantity=quantity, price=price, category=labels["category"], brand=labels["brand"],
        title=texts["title"], available=available, context=context,
        description=texts["description"],
    )


def _unencodable_field(doc: dict[str, Any]) -> str | None:
    """Path of the first string holding a lone surrogate (from a ``\\ud800`` escape)."""
    for key, value in doc.items():
        for text in (key, value) if not isinstance(value, dict) else (key, *value, *value.values()):
            if isinstance(text, str):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    return f"$.{key[:64]!s}".encode("utf-8", "replace").decode()
    return None


def decode_event(
    payload: bytes | None,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    max_id_length: int = ID_MAX_LENGTH,
) -> Event | DecodeError:
    """Decode one Kafka record value. Never raises, whatever the bytes.

    >>> decode_event(b'\\xff').code, decode_event(None).code, decode_event(b'[]').code
    ('invalid_utf8', 'null_payload', 'not_an_object')
    """
    if payload is None:
        return err("null_payload", "$", "record value is null")
    if type(payload) is not bytes:
        if not isinstance(payload, bytes | bytearray | memoryview):
            return err("wrong_type", "$", f"record value must be bytes, not {type(payload)}")
        payload = bytes(payload)
    if len(payload) > max_payload_bytes:
        return err(
            "payload_too_large", "$",
            f"record is {len(payload)} bytes; the limit is {max_payload_bytes}",
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return err("invalid_utf8", "$", f"not valid UTF-8 at byte {exc.start}")
    if _nests_too_deep(text):
        return err("too_deep", "$", "JSON nesting is too deep")
    try:
        doc = _DECODE_JSON(text)
    except RecursionError:
        return err("too_deep", "$", "JSON nesting is too deep")
    except ValueError as exc:  # JSONDecodeError, huge integers, NaN/Infinity
        return err("invalid_json", "$", f"invalid JSON: {str(exc)[:200]}")
    if "\\u" in text and ("\\ud" in text.lower()) and type(doc) is dict:
        # A lone surrogate escape decodes to a str that cannot be encoded back to UTF-8
        # (nor used as a Kafka key): refuse it here rather than crash a producer later.
        bad = _unencodable_field(doc)
        if bad is not None:
            return err("invalid_unicode", bad, "string holds a lone UTF-16 surrogate")
    try:
        return validate_event(doc, max_id_length)
    except RecursionError:  # pragma: no cover - validation does not recurse; belt and braces
        return err("too_deep", "$", "JSON nesting is too deep")
