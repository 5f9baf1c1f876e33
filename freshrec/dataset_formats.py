"""How each public dataset's rows map to event v1 documents (:mod:`freshrec.datasets` reads
the files, validates the documents and reports the rows that do not map).

One mapper per format: (fields, header index) -> event v1 document, or :class:`RowProblem`
naming why the row does not map.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

TAOBAO_TYPES = {"pv": "view", "fav": "favorite", "cart": "add_to_cart", "buy": "purchase"}
REES46_TYPES = {"view": "view", "cart": "add_to_cart", "remove_from_cart": "remove_from_cart",
                "purchase": "purchase"}
RETAILROCKET_TYPES = {"view": "view", "addtocart": "add_to_cart", "transaction": "purchase"}
MOVIELENS_FAVORITE_RATING = 4

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def _int(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise RowProblem("bad_number", f"{what} {value[:40]!r} is not an integer") from None


class RowProblem(Exception):
    """A row that does not map to an event; ``code`` names the kind of problem."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _map_taobao(f: list[str], _: dict[str, int]) -> dict[str, Any]:
    if len(f) != 5:
        raise RowProblem("bad_row", f"expected 5 comma-separated fields, got {len(f)}")
    user, item, category, behavior, ts = f
    event_type = TAOBAO_TYPES.get(behavior)
    if event_type is None:
        raise RowProblem("unknown_event_type",
                          f"behavior_type {behavior[:40]!r} is not one of pv, fav, cart, buy")
    return {"event_type": event_type, "user_id": user, "item_id": item,
            "category": category, "ts": _int(ts, "timestamp") * 1000}


REES46_COLUMNS = ("event_time", "event_type", "product_id", "category_id", "category_code",
                  "brand", "price", "user_id", "user_session")


def _rees46_ts(value: str) -> int:
    # "2019-10-01 00:00:00 UTC": fixed layout, parsed by hand (strptime is ~20x slower).
    v = value.strip()
    if len(v) != 23 or not v.endswith(" UTC") or v[4] != "-" or v[7] != "-" or v[13] != ":":
        raise RowProblem("bad_timestamp", f"event_time {value[:40]!r} is not "
                          "'YYYY-MM-DD HH:MM:SS UTC'")
    try:
        days = date(int(v[0:4]), int(v[5:7]), int(v[8:10])).toordinal() - _EPOCH_ORDINAL
        hh, mm, ss = int(v[11:13]), int(v[14:16]), int(v[17:19])
    except ValueError:
        raise RowProblem("bad_timestamp", f"event_time {value[:40]!r} is not a date") from None
    if not (hh < 24 and mm < 60 and ss < 60):
        raise RowProblem("bad_timestamp", f"event_time {value[:40]!r} is not a time")
    return ((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000


def _map_rees46(f: list[str], cols: dict[str, int]) -> dict[str, Any]:
    if len(f) < len(cols):
        raise RowProblem("bad_row", f"expected {len(cols)} fields, got {len(f)}")
    kind = f[cols["event_type"]]
    event_type = REES46_TYPES.get(kind)
    if event_type is None:
        raise RowProblem("unknown_event_type", f"event_type {kind[:40]!r} is not one of "
                          + ", ".join(REES46_TYPES))
    doc: dict[str, Any] = {
        "event_type": event_type, "user_id": f[cols["user_id"]],
        "item_id": f[cols["product_id"]], "ts": _rees46_ts(f[cols["event_time"]]),
    }
    if session := f[cols["user_session"]]:
        doc["session_id"] = session
    if category := f[cols["category_id"]]:
        doc["category"] = category
    if brand := f[cols["brand"]]:
        doc["brand"] = brand
    if price := f[cols["price"]]:
        try:
            doc["price"] = float(price)
        except ValueError:
            raise RowProblem("bad_number", f"price {price[:40]!r} is not a number") from None
    if code := f[cols["category_code"]]:
        doc["context"] = {"category_code": code}
    return doc


RETAILROCKET_COLUMNS = ("timestamp", "visitorid", "event", "itemid", "transactionid")


def _map_retailrocket(f: list[str], cols: dict[str, int]) -> dict[str, Any]:
    if len(f) < len(cols):
        raise RowProblem("bad_row", f"expected {len(cols)} fields, got {len(f)}")
    kind = f[cols["event"]]
    event_type = RETAILROCKET_TYPES.get(kind)
    if event_type is None:
        raise RowProblem("unknown_event_type", f"event {kind[:40]!r} is not one of "
                          + ", ".join(RETAILROCKET_TYPES))
    doc: dict[str, Any] = {"event_type": event_type, "user_id": f[cols["visitorid"]],
                           "item_id": f[cols["itemid"]], "ts": _int(f[cols["timestamp"]],
                                                                    "timestamp")}
    if tid := f[cols["transactionid"]]:
        doc["context"] = {"transaction_id": tid}
    return doc


DIGINETICA_COLUMNS = ("session_id", "user_id", "item_id", "timeframe", "eventdate")


def _map_diginetica(f: list[str], cols: dict[str, int]) -> dict[str, Any]:
    if len(f) < len(cols):
        raise RowProblem("bad_row", f"expected {len(cols)} fields, got {len(f)}")
    session = f[cols["session_id"]]
    user = f[cols["user_id"]]
    if user in ("", "NA"):
        user = f"session-{session}"  # anonymous row: the session stands in for the user
    day = f[cols["eventdate"]]
    try:
        days = date.fromisoformat(day).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        raise RowProblem("bad_timestamp", f"eventdate {day[:40]!r} is not YYYY-MM-DD") from None
    return {"event_type": "view", "user_id": user, "item_id": f[cols["item_id"]],
            "session_id": session,
            "ts": days * 86_400_000 + _int(f[cols["timeframe"]], "timeframe")}


def _map_movielens(f: list[str], _: dict[str, int]) -> dict[str, Any]:
    if len(f) != 4:
        raise RowProblem("bad_row", f"expected 4 tab-separated fields, got {len(f)}")
    user, item, rating_s, ts = f
    rating = _int(rating_s, "rating")
    if not 1 <= rating <= 5:
        raise RowProblem("out_of_range", f"rating {rating} is not in 1..5")
    event_type = "favorite" if rating >= MOVIELENS_FAVORITE_RATING else "view"
    return {"event_type": event_type, "user_id": user, "item_id": item,
            "ts": _int(ts, "timestamp") * 1000, "context": {"rating": rating}}


# format -> (separator, header columns or None, mapper)
CSV_FORMATS: dict[str, tuple[str, tuple[str, ...] | None,
                              Callable[[list[str], dict[str, int]], dict[str, Any]]]] = {
    "taobao": (",", None, _map_taobao),
    "rees46": (",", REES46_COLUMNS, _map_rees46),
    "retailrocket": (",", RETAILROCKET_COLUMNS, _map_retailrocket),
    "diginetica": (";", DIGINETICA_COLUMNS, _map_diginetica),
    "movielens": ("\t", None, _map_movielens),
}
