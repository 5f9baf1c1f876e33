"""Checks of single event v1 fields (ids, timestamps, context), with their limits read from
``event.v1.json``, and :class:`DecodeError`, what every check returns instead of raising.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date
from typing import Any

from schemas.loader import load_schema

EVENT_SCHEMA: dict[str, Any] = load_schema("event.v1.json")

_PROPS: dict[str, Any] = EVENT_SCHEMA["properties"]
_ID = EVENT_SCHEMA["$defs"]["id"]
ID_MAX_LENGTH: int = _ID["maxLength"]
_TS_INT = _PROPS["ts"]["oneOf"][0]
TS_MIN_MS: int = _TS_INT["minimum"]
TS_MAX_MS: int = _TS_INT["maximum"]
_TS_STR_MAX: int = _PROPS["ts"]["oneOf"][1]["maxLength"]
_CTX = _PROPS["context"]
_CONTROL_SEARCH = re.compile(r"[\x00-\x1f\x7f]").search
# RFC 3339 date-time exactly as JSON Schema's "date-time" format (ASCII digits only, 'T'
# separator, any fraction length, hours 00-23, no leap second); \Z, not $, because Python's
# $ also matches before a trailing newline.
_RFC3339 = re.compile(
    r"([0-9]{4})-(0[1-9]|1[0-2])-([0-9]{2})[Tt]([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9])"
    r"(?:\.([0-9]+))?(?:[Zz]|([+-])([01][0-9]|2[0-3]):([0-5][0-9]))\Z"
)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_CTX_MAX_KEYS: int = _CTX["maxProperties"]
_CTX_KEY_MAX: int = _CTX["propertyNames"]["maxLength"]
_CTX_STR_MAX: int = _CTX["additionalProperties"]["oneOf"][0]["maxLength"]


@dataclass(frozen=True, slots=True)
class DecodeError:
    """Why a record is not a valid event: a stable ``code``, the JSON ``field`` path, a message."""

    code: str
    field: str
    message: str


def err(code: str, field: str, message: str) -> DecodeError:
    """A :class:`DecodeError` (a shorter call on the hot path)."""
    return DecodeError(code, field, message)


def parse_ts(value: Any) -> int | DecodeError:
    """Epoch ms from an integer or an RFC 3339 string, within the schema's bounds.

    JSON Schema counts ``1.7e12`` as an integer, so integral floats are accepted too.
    Strings keep millisecond precision exactly (no float round trip).

    >>> parse_ts("2023-11-14T22:13:20.001Z"), parse_ts(1.7e12)
    (1700000000001, 1700000000000)
    >>> parse_ts("2023-11-14 22:13:20Z").code
    'bad_timestamp'
    """
    kind = type(value)
    if kind is int:
        ms = value
    elif kind is float and value.is_integer():
        ms = int(value)
    elif kind is str:
        m = _RFC3339.match(value) if len(value) <= _TS_STR_MAX else None
        if m is None:
            return err("bad_timestamp", "$.ts", f"ts {value[:40]!r} is not an RFC 3339 date-time")
        year, month, day, hh, mm, ss, frac, sign, oh, om = m.groups()
        try:
            days = date(int(year), int(month), int(day)).toordinal() - _EPOCH_ORDINAL
        except ValueError:
            return err("bad_timestamp", "$.ts", f"ts {value!r} is not a valid calendar date")
        ms = ((days * 24 + int(hh)) * 60 + int(mm)) * 60_000 + int(ss) * 1000
        if frac:
            ms += int((frac + "00")[:3])
        if sign:
            offset = (int(oh) * 60 + int(om)) * 60_000
            ms += -offset if sign == "+" else offset
    else:
        return err("wrong_type", "$.ts", "ts must be epoch milliseconds (integer) or RFC 3339")
    if not TS_MIN_MS <= ms <= TS_MAX_MS:
        return err("bad_timestamp", "$.ts", "ts must fall between 1990-01-01 and 2100-01-01")
    return ms


def check_id(value: Any, name: str, max_len: int) -> str | DecodeError:
    """An id or label: a non-empty string without control characters (events, and the ids
    in ``freshrec serve``'s paths).

    >>> check_id("u42", "user_id", 128), check_id("u\\n42", "user_id", 128).message
    ('u42', 'user_id contains control characters')
    """
    if type(value) is not str:
        what = "null" if value is None else type(value).__name__
        return err("wrong_type", f"$.{name}", f"{name} must be a string, not {what}")
    if not 0 < len(value) <= max_len:
        return err("bad_length", f"$.{name}", f"{name} must be 1..{max_len} characters")
    if _CONTROL_SEARCH(value):
        return err("bad_id", f"$.{name}", f"{name} contains control characters")
    return value


def check_context(ctx: Any) -> dict[str, Any] | DecodeError:
    """``context``: an object of at most a few scalar values, finite numbers only."""
    if type(ctx) is not dict:
        return err("wrong_type", "$.context", "context must be an object")
    if len(ctx) > _CTX_MAX_KEYS:
        return err("too_many_fields", "$.context", f"context has more than {_CTX_MAX_KEYS} keys")
    for key, value in ctx.items():
        if len(key) > _CTX_KEY_MAX:
            return err("bad_length", "$.context",
                        f"context key longer than {_CTX_KEY_MAX} characters")
        kind = type(value)
        if kind is str:
            if len(value) > _CTX_STR_MAX:
                return err("bad_length", f"$.context.{key}",
                            f"context string over {_CTX_STR_MAX} characters")
        elif kind is float:
            if not math.isfinite(value):  # 1e400 parses to inf: not representable in JSON
                return err("out_of_range", f"$.context.{key}", "context number is not finite")
        elif kind is dict or kind is list:
            return err("too_deep", f"$.context.{key}", "context values must be scalars")
        elif not (kind is int or kind is bool or value is None):
            return err("wrong_type", f"$.context.{key}", "context values must be JSON scalars")
    return ctx
