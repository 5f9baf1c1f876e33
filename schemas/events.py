"""Event v1 codec: bytes -> :class:`Event` or :class:`DecodeError`, never an exception.

The rules (event types, required fields per type, id limits, timestamp bounds) are read
from ``event.v1.json`` at import, so the JSON Schema file stays the single source of
truth; ``tests/unit/test_schemas.py`` cross-checks this codec against the ``jsonschema``
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
from datetime import datetime
from typing import Any

from schemas.loader import load_schema

EVENT_SCHEMA: dict[str, Any] = load_schema("event.v1.json")

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

_ID = EVENT_SCHEMA["$defs"]["id"]
ID_MAX_LENGTH: int = _ID["maxLength"]
_TS_INT = _PROPS["ts"]["oneOf"][0]
TS_MIN_MS: int = _TS_INT["minimum"]
TS_MAX_MS: int = _TS_INT["maximum"]
_TS_STR_MAX: int = _PROPS["ts"]["oneOf"][1]["maxLength"]
_CTX = _PROPS["context"]
_KNOWN_FIELDS = frozenset(_PROPS)
_ID_FIELDS = ("event_id", "user_id", "item_id", "session_id")
_LABEL_FIELDS = ("category", "brand")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)
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


@dataclass(frozen=True, slots=True)
class DecodeError:
    """Why a record is not a valid event: a stable ``code``, the JSON ``field`` path, a message."""

    code: str
    field: str
    message: str


def encode_event(event: Event) -> bytes:
    """Serialise an event to compact UTF-8 JSON (event v1)."""
    return json.dumps(event.to_json(), separators=(",", ":"), ensure_ascii=False).encode()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _err(code: str, field: str, message: str) -> DecodeError:
    return DecodeError(code, field, message)


def parse_ts(value: Any) -> int | DecodeError:
    """Epoch ms from an integer or an RFC 3339 string, within the schema's bounds."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        return _err("wrong_type", "$.ts", "ts must be epoch milliseconds (integer) or RFC 3339")
    if isinstance(value, str):
        if len(value) > _TS_STR_MAX or not _RFC3339.match(value):
            return _err("bad_timestamp", "$.ts", f"ts {value[:40]!r} is not an RFC 3339 date-time")
        try:
            ms = int(datetime.fromisoformat(value.replace("z", "Z")).timestamp() * 1000)
        except ValueError:
            return _err("bad_timestamp", "$.ts", f"ts {value!r} is not a valid date-time")
    else:
        ms = value
    if not TS_MIN_MS <= ms <= TS_MAX_MS:
        return _err("bad_timestamp", "$.ts", "ts must fall between 1990-01-01 and 2100-01-01")
    return ms


def _check_id(doc: dict[str, Any], name: str, max_len: int) -> str | None | DecodeError:
    value = doc.get(name)
    if value is None:
        if name in doc:
            return _err("wrong_type", f"$.{name}", f"{name} must be a string, not null")
        return None
    if type(value) is not str:
        return _err("wrong_type", f"$.{name}", f"{name} must be a string")
    if not value or len(value) > max_len:
        return _err("bad_length", f"$.{name}", f"{name} must be 1..{max_len} characters")
    if _CONTROL.search(value):
        return _err("bad_id", f"$.{name}", f"{name} contains control characters")
    return value


def _check_context(ctx: Any) -> dict[str, Any] | DecodeError:
    if not isinstance(ctx, dict):
        return _err("wrong_type", "$.context", "context must be an object")
    if len(ctx) > _CTX["maxProperties"]:
        return _err("too_many_fields", "$.context", "context has more than 32 keys")
    for key, value in ctx.items():
        if len(key) > _CTX["propertyNames"]["maxLength"]:
            return _err("bad_length", "$.context", "context key longer than 64 characters")
        if isinstance(value, dict | list):
            return _err("too_deep", f"$.context.{key[:64]}", "context values must be scalars")
        if isinstance(value, str) and len(value) > 256:
            return _err("bad_length", f"$.context.{key[:64]}", "context string over 256 chars")
    return ctx


def validate_event(doc: Any, max_id_length: int = ID_MAX_LENGTH) -> Event | DecodeError:
    """Validate a parsed JSON value against event v1."""
    if not isinstance(doc, dict):
        return _err("not_an_object", "$", "an event must be a JSON object")
    for name in _REQUIRED_TOP:
        if name not in doc:
            return _err("missing_field", f"$.{name}", f"{name} is required")
    extra = doc.keys() - _KNOWN_FIELDS
    if extra:
        name = sorted(extra)[0][:64]
        return _err("unknown_field", f"$.{name}", f"field {name!r} is not in event v1")
    if "schema_version" in doc and (
        type(doc["schema_version"]) is not int or doc["schema_version"] != 1
    ):
        return _err("bad_version", "$.schema_version", "schema_version must be 1")
    event_type = doc["event_type"]
    if type(event_type) is not str:
        return _err("wrong_type", "$.event_type", "event_type must be a string")
    if event_type not in EVENT_TYPES:
        return _err(
            "unknown_event_type", "$.event_type",
            f"event_type {event_type[:40]!r} is not one of {', '.join(EVENT_TYPES)}",
        )
    ids: dict[str, Any] = {}
    for name in _ID_FIELDS:
        checked = _check_id(doc, name, max_id_length)
        if isinstance(checked, DecodeError):
            return checked
        ids[name] = checked
    for name in _REQUIRED_BY_TYPE.get(event_type, ()):
        if ids[name] is None:
            return _err("missing_field", f"$.{name}", f"{name} is required for {event_type}")
    labels: dict[str, Any] = {}
    for name in _LABEL_FIELDS:
        checked = _check_id(doc, name, ID_MAX_LENGTH)
        if isinstance(checked, DecodeError):
            return checked
        labels[name] = checked
    ts = parse_ts(doc["ts"])
    if isinstance(ts, DecodeError):
        return ts
    quantity = doc.get("quantity")
    if quantity is not None and (
        type(quantity) is not int or not 1 <= quantity <= _PROPS["quantity"]["maximum"]
    ):
        return _err("out_of_range", "$.quantity", "quantity must be an integer in 1..100000")
    price = doc.get("price")
    if price is not None:
        if isinstance(price, bool) or not isinstance(price, int | float):
            return _err("wrong_type", "$.price", "price must be a number")
        if not (math.isfinite(price) and 0 <= price <= _PROPS["price"]["maximum"]):
            return _err("out_of_range", "$.price", "price must be in 0..1e9")
        price = float(price)
    title = doc.get("title")
    if title is not None and (type(title) is not str or len(title) > 512):
        return _err("wrong_type", "$.title", "title must be a string of at most 512 characters")
    available = doc.get("available")
    if available is not None and type(available) is not bool:
        return _err("wrong_type", "$.available", "available must be true or false")
    context = doc.get("context")
    if context is not None:
        context = _check_context(context)
        if isinstance(context, DecodeError):
            return context
    for name in ("quantity", "price", "title", "available", "context"):
        if name in doc and doc[name] is None:
            return _err("wrong_type", f"$.{name}", f"{name} must not be null")
    return Event(
        event_id=ids["event_id"], event_type=event_type, ts_ms=ts,
        user_id=ids["user_id"], item_id=ids["item_id"], session_id=ids["session_id"],
        quantity=quantity, price=price, category=labels["category"], brand=labels["brand"],
        title=title, available=available, context=context,
    )


def decode_event(
    payload: bytes | None,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    max_id_length: int = ID_MAX_LENGTH,
) -> Event | DecodeError:
    """Decode one Kafka record value. Never raises, whatever the bytes."""
    if payload is None:
        return _err("null_payload", "$", "record value is null")
    if len(payload) > max_payload_bytes:
        return _err(
            "payload_too_large", "$",
            f"record is {len(payload)} bytes; the limit is {max_payload_bytes}",
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _err("invalid_utf8", "$", f"not valid UTF-8 at byte {exc.start}")
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        return _err("too_deep", "$", "JSON nesting is too deep")
    except ValueError as exc:  # JSONDecodeError, huge integers, NaN/Infinity
        return _err("invalid_json", "$", f"invalid JSON: {str(exc)[:200]}")
    try:
        return validate_event(doc, max_id_length)
    except RecursionError:
        return _err("too_deep", "$", "JSON nesting is too deep")
