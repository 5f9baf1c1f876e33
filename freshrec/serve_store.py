"""The store of ``freshrec serve``: the topics it materialises, in LMDB on disk.

Three tables in one LMDB environment (``serve.store_dir``):

- ``recs``: user id -> the user's latest list, as :func:`pack_list` lays it out: store
  format byte, ``seq`` and ``generated_at`` (so an ``If-None-Match`` is answered without
  parsing), then the recommendation v1 record as it was on the topic, zlib-compressed
  (level 1): a 20-item list shrinks from ~1.6 KB to 0.3-0.6 KB, which LMDB then packs
  several to a 4 KB page instead of one or two (3.5 GiB per million lists uncompressed),
  for ~4 us of inflating per answer;
- ``items``: item id -> the item-embedding v1 record exactly as it was on the changelog;
- ``offsets``: ``topic`` NUL ``partition`` -> the next offset to read (8 bytes, big endian);

plus ``meta`` (store format, the two topic names). A batch of records and the offsets after
it are written in one transaction, so after any stop the store holds exactly the records
before its offsets: a restart resumes there (no re-read), and a deleted store is rebuilt
from the topics (compacted: they hold every user's and item's latest record). Readers
(the HTTP handlers) never wait for the writer: LMDB gives each read transaction a snapshot.

>>> import tempfile
>>> from schemas.recommendation import Recommendation, ScoredItem
>>> rec = Recommendation("u1", (ScoredItem("i2", 0.5, "popular now"),), "m", 7, 6, "e1", 3)
>>> with tempfile.TemporaryDirectory() as d:
...     store = Store(d, 2**24, "recs", "items")
...     store.commit([Change("recs", b"u1", pack_list(rec, rec.to_bytes()))], {("recs", 0): 12})
...     stored = store.get_list("u1")
...     print(stored, Recommendation.from_json(stored.record()) == rec, store.offsets())
...     store.commit([Change("recs", b"u1", None)], {("recs", 0): 13})
...     print(store.get_list("u1"), store.offsets(), len(store))
...     store.close()
StoredList(seq=3, generated_at=7) True {('recs', 0): 12}
None {('recs', 0): 13} 0
"""

from __future__ import annotations

import fcntl
import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import lmdb

from schemas.recommendation import Recommendation

# Bump when the layout of any table changes; a store of another format is refused.
STORE_FORMAT = 1
_LIST_HEADER = struct.Struct(">BQq")  # format, seq, generated_at (epoch ms)
_OFFSET = struct.Struct(">q")


class StoreError(RuntimeError):
    """The store cannot be used with these settings; the message says what to do."""


@dataclass(frozen=True, slots=True)
class StoredList:
    """A user's stored list: ``seq`` and ``generated_at`` at hand, the record compressed."""

    seq: int
    generated_at: int
    compressed: bytes = field(repr=False)

    def record(self) -> bytes:
        """The recommendation v1 record, as it was on the topic."""
        return zlib.decompress(self.compressed)


@dataclass(frozen=True, slots=True)
class Change:
    """One record read from a topic: ``value`` None is a tombstone (the key is deleted)."""

    topic: str
    key: bytes
    value: bytes | None


def pack_list(rec: Recommendation, record: bytes) -> bytes:
    """The ``recs`` value of a list: header, then the topic record's bytes, compressed."""
    return _LIST_HEADER.pack(STORE_FORMAT, rec.seq, rec.generated_at) + zlib.compress(record, 1)


class Store:
    """The LMDB environment at ``path`` for the topics ``recs_topic`` and ``items_topic``.

    One writer (the consumer thread) and any number of readers; ``map_size`` bounds the
    file (disk is only used as data arrives).
    """

    def __init__(self, path: str | Path, map_size: int, recs_topic: str,
                 items_topic: str) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.recs_topic, self.items_topic = recs_topic, items_topic
        # One process per store: a second one would read the same records again, and write
        # them over the first one's.
        self._owner = (self.path / "owner.lock").open("a+")
        try:
            fcntl.flock(self._owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._owner.close()
            raise StoreError(f"serve.store_dir {self.path} is in use by another process (one "
                             "freshrec serve per store)") from None
        # metasync=False: the data pages are flushed at every commit, the meta page lazily; a
        # machine crash may lose the last commits but never mixes data with other offsets.
        self.env = lmdb.open(str(self.path), map_size=map_size, max_dbs=4, metasync=False,
                             readahead=False)
        self._meta = self.env.open_db(b"meta")
        self._recs = self.env.open_db(b"recs")
        self._items = self.env.open_db(b"items")
        self._offsets = self.env.open_db(b"offsets")
        # LMDB keys are 1..511 bytes: 128 characters of UTF-8 may take 512.
        self.max_key_bytes = self.env.max_key_size()
        try:
            self._check_meta()
        except StoreError:
            self.env.close()
            self._owner.close()
            raise

    def _check_meta(self) -> None:
        want = {b"format": str(STORE_FORMAT).encode(), b"recs_topic": self.recs_topic.encode(),
                b"items_topic": self.items_topic.encode()}
        with self.env.begin(db=self._meta, write=True) as txn:
            have = {k: txn.get(k) for k in want}
            if all(v is None for v in have.values()):
                for k, v in want.items():
                    txn.put(k, v)
                return
        if have != want:
            shown = {k.decode(): (v or b"").decode() for k, v in have.items()}
            raise StoreError(
                f"serve.store_dir {self.path} holds a store of {shown}, not of format "
                f"{STORE_FORMAT} for topics {self.recs_topic} and {self.items_topic}: point "
                "serve.store_dir elsewhere, or delete it to rebuild it from the topics")

    def commit(self, changes: Iterable[Change], offsets: Mapping[tuple[str, int], int]) -> None:
        """Apply ``changes`` (keys of 1 to ``max_key_bytes`` bytes; recommendation records
        packed by :func:`pack_list`) and store ``offsets``, in one transaction."""
        with self.env.begin(write=True) as txn:
            for ch in changes:
                db = self._recs if ch.topic == self.recs_topic else self._items
                if ch.value is None:
                    txn.delete(ch.key, db=db)
                else:
                    txn.put(ch.key, ch.value, db=db)
            for (topic, partition), offset in offsets.items():
                txn.put(f"{topic}\0{partition}".encode(), _OFFSET.pack(offset), db=self._offsets)

    def offsets(self) -> dict[tuple[str, int], int]:
        """``(topic, partition) -> next offset`` as committed."""
        out: dict[tuple[str, int], int] = {}
        with self.env.begin(db=self._offsets) as txn:
            for key, value in txn.cursor():
                topic, _, partition = bytes(key).decode().rpartition("\0")
                out[(topic, int(partition))] = _OFFSET.unpack(value)[0]
        return out

    def get_list(self, user_id: str) -> StoredList | None:
        """The stored list of a user."""
        key = user_id.encode("utf-8")
        if len(key) > self.max_key_bytes:  # never stored (see Materializer)
            return None
        with self.env.begin(db=self._recs) as txn:
            value = txn.get(key)
        if value is None:
            return None
        _, seq, generated_at = _LIST_HEADER.unpack_from(value)
        return StoredList(seq, generated_at, value[_LIST_HEADER.size:])

    def items(self) -> Iterator[bytes]:
        """Every stored item-embedding record (one read snapshot)."""
        with self.env.begin(db=self._items) as txn:
            for value in txn.cursor().iternext(keys=False, values=True):
                yield bytes(value)

    def __len__(self) -> int:
        """Users with a list."""
        with self.env.begin() as txn:
            return int(txn.stat(self._recs)["entries"])

    def close(self) -> None:
        """Flush to disk and close (after the writer has stopped)."""
        self.env.sync(True)
        self.env.close()
        self._owner.close()  # releases the lock
