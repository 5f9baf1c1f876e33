"""Dataset adapters on small fixtures written here (no real data in the repo)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from freshrec.datasets import (
    FORMATS,
    AdapterErrors,
    UnmappableRowError,
    read_events,
    write_jsonl,
)
from schemas.events import Event, encode_event

TAOBAO = """\
1,2268318,2520377,pv,1511544070
1,2333346,2520771,fav,1511561733
2,2576651,149192,cart,1511572885
2,3830808,4181361,buy,1511593493
3,4365585,2520377,like,1511596146
3,x,2520377,pv,1511596146
4,5,6,pv,notatime
5,6,7,pv,12
6,7,8
7,8,9,buy,1511596146
"""

REES46 = """\
event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session
2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,72d7-s1
2019-10-01 00:00:01 UTC,cart,3900821,2053013552326770905,appliances.heater,aqua,33.20,55,s2
2019-10-01 00:00:02 UTC,purchase,17200506,20530,"furniture.living_room,sofa",,543.10,51,s3
2019-10-01 00:00:03 UTC,remove_from_cart,1,2,,,,3,s4
2019-10-01 00:00:04 UTC,refund,1,2,,,1.0,3,s4
2019-13-01 00:00:05 UTC,view,1,2,,,1.0,3,s4
2019-10-01 00:00:06 UTC,view,1,2,,,-5,3,s4
2019-10-01 00:00:07 UTC,view,1,2,,,abc,3,s4
"""

RETAILROCKET = """\
timestamp,visitorid,event,itemid,transactionid
1433221332117,257597,view,355908,
1433224214164,992329,addtocart,248676,
1433221999827,111016,transaction,285930,6543
1433221999827,111016,refund,285930,
1433221999827,111016,view,285930
"""

DIGINETICA = """\
session_id;user_id;item_id;timeframe;eventdate
1;NA;81766;526309;2016-05-09
1;;31331;1031018;2016-05-09
2;278;33043;62743;2016-05-09
3;NA;5;x;2016-05-09
4;NA;5;10;2016-02-30
"""

MOVIELENS = "196\t242\t3\t881250949\n186\t302\t5\t891717742\n22\t377\t9\t878887116\n1\t2\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def read(path: Path, fmt: str) -> tuple[list[Event], AdapterErrors]:
    errors = AdapterErrors()
    return list(read_events(path, fmt, errors)), errors


def test_taobao(tmp_path: Path) -> None:
    events, errors = read(write(tmp_path, "UserBehavior.csv", TAOBAO), "taobao")
    assert [e.event_type for e in events] == ["view", "favorite", "add_to_cart", "purchase",
                                             "view", "purchase"]
    first = events[0]
    assert (first.user_id, first.item_id, first.category, first.ts_ms) == (
        "1", "2268318", "2520377", 1_511_544_070_000)
    assert events[4].item_id == "x"  # ids are opaque strings
    assert [(r.line, r.code) for r in errors.rows] == [
        (5, "unknown_event_type"), (7, "bad_number"), (8, "bad_timestamp"), (9, "bad_row")]
    assert len(events) + len(errors) == TAOBAO.count("\n")


def test_rees46_carries_category_brand_price(tmp_path: Path) -> None:
    events, errors = read(write(tmp_path, "2019-Oct.csv", REES46), "rees46")
    view, cart, buy, remove = events
    assert (view.event_type, view.brand, view.price, view.category, view.session_id) == (
        "view", "shiseido", 35.79, "2103807459595387724", "72d7-s1")
    assert view.ts_ms == 1_569_888_000_000 and view.context is None
    assert cart.event_type == "add_to_cart"
    assert cart.context == {"category_code": "appliances.heater"}
    assert buy.event_type == "purchase" and buy.brand is None and buy.price == 543.10
    assert buy.context == {"category_code": "furniture.living_room,sofa"}  # quoted CSV field
    assert remove.event_type == "remove_from_cart" and remove.price is None
    assert [(r.line, r.code) for r in errors.rows] == [
        (6, "unknown_event_type"), (7, "bad_timestamp"), (8, "out_of_range"), (9, "bad_number")]


def test_retailrocket(tmp_path: Path) -> None:
    events, errors = read(write(tmp_path, "events.csv", RETAILROCKET), "retailrocket")
    assert [e.event_type for e in events] == ["view", "add_to_cart", "purchase"]
    assert events[0].ts_ms == 1_433_221_332_117 and events[0].user_id == "257597"
    assert events[2].context == {"transaction_id": "6543"}
    assert [(r.line, r.code) for r in errors.rows] == [(5, "unknown_event_type"), (6, "bad_row")]


def test_diginetica_session_stands_in_for_missing_user(tmp_path: Path) -> None:
    events, errors = read(write(tmp_path, "views.csv", DIGINETICA), "diginetica")
    assert [e.user_id for e in events] == ["session-1", "session-1", "278"]
    assert all(e.event_type == "view" for e in events)
    assert events[0].session_id == "1"
    assert events[0].ts_ms == 1_462_752_000_000 + 526_309  # 2016-05-09 + timeframe
    assert [(r.line, r.code) for r in errors.rows] == [(5, "bad_number"), (6, "bad_timestamp")]


def test_movielens(tmp_path: Path) -> None:
    events, errors = read(write(tmp_path, "u.data", MOVIELENS), "movielens")
    assert [(e.event_type, e.context) for e in events] == [
        ("view", {"rating": 3}), ("favorite", {"rating": 5})]
    assert events[0].ts_ms == 881_250_949_000
    assert [(r.line, r.code) for r in errors.rows] == [(3, "out_of_range"), (4, "bad_row")]


def test_jsonl_round_trip_and_errors(tmp_path: Path) -> None:
    good = [Event("e1", "view", 1_700_000_000_000, user_id="u", item_id="i"),
            Event("e2", "item_upsert", 1_700_000_000_001, item_id="i", price=3.0)]
    path = tmp_path / "events.jsonl"
    assert write_jsonl(good, path) == 2
    with path.open("ab") as f:
        f.write(b"\n")  # blank lines are not rows
        f.write(b'{"event_id":"e3","event_type":"buy","ts":1700000000000}\n')
        f.write(b"\xff\n")
        f.write(encode_event(good[0]) + b"\r\n")
    events, errors = read(path, "jsonl")
    assert events == [*good, good[0]]
    assert [(r.line, r.code) for r in errors.rows] == [(4, "unknown_event_type"),
                                                       (5, "invalid_utf8")]
    assert "$.event_type" in errors.rows[0].message


def test_non_utf8_csv_row_is_reported_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "ub.csv"
    path.write_bytes(b"1,2,3,pv,1511544070\n1,\xff,3,pv,1511544070\n1,3,3,pv,1511544070\n")
    events, errors = read(path, "taobao")
    assert len(events) == 2 and [(r.line, r.code) for r in errors.rows] == [(2, "invalid_utf8")]


def test_event_ids_are_deterministic_and_content_based(tmp_path: Path) -> None:
    path = write(tmp_path, "a.csv", TAOBAO)
    ids1 = [e.event_id for e in read(path, "taobao")[0]]
    ids2 = [e.event_id for e in read(path, "taobao")[0]]
    assert ids1 == ids2 and len(set(ids1)) == len(ids1)
    # The same row in another slice of the file keeps its id.
    tail = write(tmp_path, "b.csv", "\n".join(TAOBAO.splitlines()[2:]) + "\n")
    assert [e.event_id for e in read(tail, "taobao")[0]] == ids1[2:]
    assert all(i.startswith("taobao-") for i in ids1)


def test_without_sink_the_first_bad_row_raises(tmp_path: Path) -> None:
    path = write(tmp_path, "ub.csv", TAOBAO)
    with pytest.raises(UnmappableRowError, match="line 5: unknown_event_type") as info:
        list(read_events(path, "taobao"))
    assert info.value.error.line == 5


def test_callback_sink(tmp_path: Path) -> None:
    seen: list[int] = []
    list(read_events(write(tmp_path, "u.data", MOVIELENS), "movielens",
                     lambda err: seen.append(err.line)))
    assert seen == [3, 4]


def test_gzip_input(tmp_path: Path) -> None:
    path = tmp_path / "u.data.gz"
    path.write_bytes(gzip.compress(MOVIELENS.encode()))
    assert len(read(path, "movielens")[0]) == 2


def test_header_with_columns_in_another_order(tmp_path: Path) -> None:
    text = "visitorid,itemid,event,timestamp,transactionid\n5,6,view,1433221332117,\n"
    (ev,), _ = read(write(tmp_path, "e.csv", text), "retailrocket")
    assert (ev.user_id, ev.item_id, ev.ts_ms) == ("5", "6", 1_433_221_332_117)


def test_bad_header_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lacks column"):
        list(read_events(write(tmp_path, "x.csv", "a,b\n1,2\n"), "retailrocket", AdapterErrors()))
    with pytest.raises(ValueError, match="unknown format"):
        list(read_events(tmp_path / "x.csv", "parquet"))
    assert "jsonl" in FORMATS


def test_errors_summary_and_cap() -> None:
    errors = AdapterErrors(keep=2)
    from freshrec.datasets import RowError

    for line in range(5):
        errors(RowError(line + 1, "bad_row", "m", "r"))
    assert len(errors) == 5 and errors.lines == [1, 2] and bool(errors)
    assert errors.summary() == "5 rows not mapped (bad_row: 5); first at line 1"
    assert AdapterErrors().summary() == "all rows mapped"
