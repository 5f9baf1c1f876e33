"""Dataset adapters: public e-commerce logs (and our own JSONL) as event v1 streams.

One module for every tool (``freshrec produce``, replay, evaluation, benchmarks), so a
dataset maps the same way everywhere. :func:`read_events` yields validated
:class:`~schemas.events.Event` objects and reports every row it could not map, with its
1-based line number in the file (headers count as line 1); nothing is dropped silently.

=============  ==========================================================================
format         input
=============  ==========================================================================
jsonl          event v1, one JSON object per line (blank lines are not rows and skipped)
taobao         Alibaba UserBehavior.csv, no header:
               ``user_id,item_id,category_id,behavior_type,timestamp`` (unix seconds);
               pv -> view, fav -> favorite, cart -> add_to_cart, buy -> purchase
rees46         REES46 CSV with header ``event_time,event_type,product_id,category_id,
               category_code,brand,price,user_id,user_session``; view, cart -> add_to_cart,
               remove_from_cart, purchase. ``category`` is category_id (always present);
               category_code goes to ``context``; brand and price are carried over
retailrocket   RetailRocket events.csv with header
               ``timestamp,visitorid,event,itemid,transactionid`` (epoch ms);
               view, addtocart -> add_to_cart, transaction -> purchase
diginetica     DIGINETICA train-item-views, ``;``-separated with header
               ``session_id;user_id;item_id;timeframe;eventdate``; every row is a view at
               eventdate 00:00 UTC + timeframe ms. **Rows without a user_id (``NA`` or
               empty) use the session as the user: user_id = ``session-<session_id>``**
movielens      MovieLens 100k u.data, tab-separated ``user item rating timestamp`` (unix
               seconds); rating >= 4 -> favorite, else view; the rating goes to ``context``
=============  ==========================================================================

Event ids are deterministic: ``<format>-<16 hex digits of BLAKE2b of the raw line>``, so
the same source row gets the same id in any slice of the file, and replaying a file twice
is de-duplicated downstream (identical duplicate rows share an id, as they should).
Files ending in ``.gz`` are read through gzip.

>>> import pathlib, tempfile
>>> p = pathlib.Path(tempfile.mkdtemp()) / "UserBehavior.csv"
>>> _ = p.write_text("1,10,7,pv,1511658000\\n1,10,7,wink,1511658001\\n")
>>> errors = AdapterErrors()
>>> [(e.event_type, e.user_id, e.item_id, e.ts_ms) for e in read_events(p, "taobao", errors)]
[('view', '1', '10', 1511658000000)]
>>> errors.rows[0].line, errors.rows[0].code
(2, 'unknown_event_type')
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from freshrec.dataset_formats import CSV_FORMATS, RowProblem
from schemas.event_fields import DecodeError
from schemas.events import Event, decode_event, validate_event

FORMATS: tuple[str, ...] = ("jsonl", "taobao", "rees46", "retailrocket", "diginetica",
                            "movielens")
_RAW_KEEP = 200  # characters of an unmappable row kept in its report


@dataclass(frozen=True, slots=True)
class RowError:
    """A row that could not be mapped: where, why (a stable code) and what it was."""

    line: int
    code: str
    message: str
    raw: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.code}: {self.message}"


class AdapterErrors:
    """Collects unmappable rows; pass it (or any ``Callable[[RowError], None]``) as ``errors``.

    Keeps the first ``keep`` rows in full, and counts all of them by code.

    >>> errs = AdapterErrors(keep=1)
    >>> errs(RowError(3, "bad_timestamp", "ts out of range", "x"))
    >>> errs(RowError(9, "bad_timestamp", "ts out of range", "y"))
    >>> len(errs), errs.lines, errs.summary()
    (2, [3], '2 rows not mapped (bad_timestamp: 2); first at line 3')
    """

    def __init__(self, keep: int = 1000) -> None:
        self.keep = keep
        self.count = 0
        self.rows: list[RowError] = []
        self.by_code: Counter[str] = Counter()

    def __call__(self, error: RowError) -> None:
        self.count += 1
        self.by_code[error.code] += 1
        if len(self.rows) < self.keep:
            self.rows.append(error)

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return self.count > 0

    @property
    def lines(self) -> list[int]:
        """Line numbers of the kept rows."""
        return [r.line for r in self.rows]

    def summary(self) -> str:
        if not self.count:
            return "all rows mapped"
        codes = ", ".join(f"{c}: {n}" for c, n in self.by_code.most_common())
        return f"{self.count} rows not mapped ({codes}); first at line {self.rows[0].line}"


class UnmappableRowError(ValueError):
    """Raised for the first bad row when :func:`read_events` is given no ``errors`` sink."""

    def __init__(self, error: RowError) -> None:
        super().__init__(str(error))
        self.error = error


ErrorSink = Callable[[RowError], None]


def _raise(error: RowError) -> None:
    raise UnmappableRowError(error)


def _open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def _lines(stream: IO[bytes], fmt: str, report: ErrorSink) -> Iterator[tuple[int, str]]:
    """(line number, text) per physical line; undecodable lines are reported, not raised."""
    for lineno, raw in enumerate(stream, 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            report(RowError(lineno, "invalid_utf8", f"not valid UTF-8 at byte {exc.start}",
                            raw[:_RAW_KEEP].decode("utf-8", "replace")))
            continue
        yield lineno, text.rstrip("\r\n")


def _split(text: str, sep: str) -> list[str]:
    # csv only when quoting is in play: plain split is several times faster.
    if '"' in text:
        return next(csv.reader([text], delimiter=sep))
    return text.split(sep)


def _event_id(fmt: str, text: str) -> str:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()
    return f"{fmt}-{digest}"


def _header_index(header: list[str], expected: tuple[str, ...], fmt: str) -> dict[str, int]:
    cols = {name.strip().lower(): i for i, name in enumerate(header)}
    missing = [c for c in expected if c not in cols]
    if missing:
        raise ValueError(
            f"{fmt}: header {header!r} lacks column(s) {', '.join(missing)}; "
            f"expected {','.join(expected)}"
        )
    return cols


def jsonl_lines(stream: IO[bytes]) -> Iterator[tuple[bytes, Event | RowError]]:
    """Each non-blank line of an event JSONL stream (without its line break) with its
    event, or the :class:`RowError` that says why it is not one."""
    for lineno, raw in enumerate(stream, 1):
        line = raw.rstrip(b"\r\n")
        if not line.strip():
            continue
        got = decode_event(line)
        if isinstance(got, DecodeError):
            yield line, RowError(lineno, got.code, f"{got.field}: {got.message}",
                                 line[:_RAW_KEEP].decode("utf-8", "replace"))
        else:
            yield line, got


def _read_jsonl(stream: IO[bytes], report: ErrorSink) -> Iterator[Event]:
    for _, got in jsonl_lines(stream):
        if isinstance(got, RowError):
            report(got)
        else:
            yield got


def _read_csv(stream: IO[bytes], fmt: str, report: ErrorSink) -> Iterator[Event]:
    sep, header, mapper = CSV_FORMATS[fmt]
    cols: dict[str, int] = {}
    lines = _lines(stream, fmt, report)
    if header is not None:
        first = next(lines, None)
        if first is None:
            return
        cols = _header_index(_split(first[1], sep), header, fmt)
    for lineno, text in lines:
        if not text.strip():
            continue
        try:
            doc = mapper(_split(text, sep), cols)
        except RowProblem as exc:
            report(RowError(lineno, exc.code, exc.message, text[:_RAW_KEEP]))
            continue
        doc["event_id"] = _event_id(fmt, text)
        got = validate_event(doc)
        if isinstance(got, DecodeError):
            report(RowError(lineno, got.code, f"{got.field}: {got.message}", text[:_RAW_KEEP]))
        else:
            yield got


def read_events(
    path: str | Path, fmt: str, errors: ErrorSink | None = None
) -> Iterator[Event]:
    """Yield the events of a dataset file, in file order.

    Parameters
    ----------
    path : str or Path
        The file (``.gz`` is decompressed on the fly).
    fmt : str
        One of :data:`FORMATS`.
    errors : callable, optional
        Receives a :class:`RowError` for each row that could not be mapped (an
        :class:`AdapterErrors` collects them). Without it the first such row raises
        :class:`UnmappableRowError`, so no row is ever dropped unnoticed.

    Raises
    ------
    ValueError
        Unknown format, or a header that lacks a needed column.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    report = errors if errors is not None else _raise
    with _open_binary(Path(path)) as stream:
        if fmt == "jsonl":
            yield from _read_jsonl(stream, report)
        else:
            yield from _read_csv(stream, fmt, report)


def write_jsonl(events: Iterable[Event], path: str | Path) -> int:
    """Write events as event v1 JSONL (our own format); returns how many were written."""
    n = 0
    with Path(path).open("w", encoding="utf-8") as out:
        for ev in events:
            out.write(json.dumps(ev.to_json(), separators=(",", ":"), ensure_ascii=False))
            out.write("\n")
            n += 1
    return n


__all__ = ["FORMATS", "AdapterErrors", "RowError", "UnmappableRowError", "read_events",
           "write_jsonl"]
