"""Cold items from their text: a packaged sentence encoder and an online ridge map from text
vectors into the model's item space.

A new item has no interactions, so its vector can only come from what the catalogue says
about it. :class:`TextEncoder` turns an item's words (title, description, category path,
brand: :func:`item_text`) into a vector with WordLlama's ``l2_supercat`` static token
embeddings (distilled from Llama 2's embedding table and trained on sentence pairs; the
weights and tokenizer ship inside the ``wordllama`` wheel and are read from the installed
package, never downloaded). :class:`TextMap` is a ridge regression from those text vectors
to learned item vectors, fitted online from warm items (each time an item's interaction
count reaches a milestone, see :func:`warm_milestone`) with exponential forgetting, so the
map follows item vectors as they move. A new item then starts at ``content + map(text)``:
near the warm items whose words it shares.

Without the ``wordllama`` package the feature is off: :func:`load_text_encoder` returns
``None`` and logs one line.

>>> item_text(title="Galaxy S21", brand="samsung", category="electronics.smartphone")
'Galaxy S21 electronics smartphone samsung'
>>> item_text(category="2053013555631882655") == ""   # a numeric category id has no words
True
>>> m = TextMap(text_dim=3, dim=2)
>>> T = np.eye(3, dtype=np.float32)
>>> m.learn(T, np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32))
>>> [round(float(x), 2) for x in m.predict(T[:1])[0]]
[0.95, 0.0]
>>> TextMap.from_bytes(m.to_bytes()) == m
True
"""

from __future__ import annotations

import logging
import re
import struct
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from online_models.config import TEXT_ENCODERS

log = logging.getLogger(__name__)

TEXT_DIM = 64  # WordLlama vectors are Matryoshka-trained: the first 64 of 256 dims suffice
_WORD_SPLIT = re.compile(r"[._/|>,;]+")


def item_text(title: str | None = None, description: str | None = None,
              category: str | None = None, brand: str | None = None,
              context: Mapping[str, Any] | None = None) -> str:
    """The words describing an item: title, description, category path (``a.b`` -> ``a b``;
    numeric ids carry no words and are left out), ``context["category_code"]`` (REES46's
    category path), brand."""
    parts = [title, description, category,
             (context or {}).get("category_code") if context else None, brand]
    words = []
    for p in parts:
        if isinstance(p, str) and p and not p.isdigit():
            words.append(_WORD_SPLIT.sub(" ", p).strip())
    return " ".join(w for w in words if w)


class TextEncoder:
    """WordLlama ``l2_supercat`` sentence vectors (``TEXT_DIM`` dims, unit norm), from the
    files inside the installed ``wordllama`` package, with the last ``cache_size`` texts'
    vectors kept: most items' words are a category path and a brand shared by many items,
    and tokenizing costs more than the rest of an item step."""

    name = "wordllama"

    def __init__(self, cache_size: int = 65_536) -> None:
        import wordllama
        from safetensors import safe_open
        from wordllama import WordLlama
        from wordllama.inference import WordLlamaInference

        root = Path(wordllama.__file__).parent
        # WordLlama.load() looks for the tokenizer under "tokenizer/" while the wheel ships
        # it under "tokenizers/", and then downloads it: load both files directly instead.
        with safe_open(str(root / "weights" / "l2_supercat_256.safetensors"),
                       framework="np") as f:
            table = f.get_tensor("embedding.weight")[:, :TEXT_DIM]
        tokenizer = WordLlama.load_tokenizer(root / "tokenizers"
                                             / "l2_supercat_tokenizer_config.json")
        self._model = WordLlamaInference(np.ascontiguousarray(table), tokenizer)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``len(texts) x TEXT_DIM`` float32 unit vectors (zeros for an empty text)."""
        out = np.zeros((len(texts), TEXT_DIM), dtype=np.float32)
        cache = self._cache
        with self._lock:  # one encoder serves every operator of the interpreter
            new = list(dict.fromkeys(t for t in texts if t and t not in cache))
            if new:
                cache.update(zip(new, self._model.embed(new, norm=True).astype(np.float32),
                                 strict=True))
            for j, t in enumerate(texts):
                if t:
                    out[j] = cache[t]
                    cache.move_to_end(t)
            while len(cache) > self._cache_size:
                cache.popitem(last=False)
        return out


@lru_cache(maxsize=4)  # one load (and at most one log line) per process
def load_text_encoder(name: str) -> TextEncoder | None:
    """The encoder ``name`` (``"wordllama"``), or ``None`` when ``name`` is empty or its
    package is not installed (logged once: cold items then get metadata vectors only)."""
    if name not in TEXT_ENCODERS:
        raise ValueError(f"text_encoder must be one of {TEXT_ENCODERS}; got {name!r}")
    if not name:
        return None
    try:
        return TextEncoder()
    except ImportError:
        log.warning("cold items from text: off (the %s package is not installed; "
                    "pip install wordllama turns it on)", name)
        return None


def warm_milestone(before: int, after: int, first: int = 3) -> bool:
    """Whether an item's interaction count crossed ``first``, ``2 * first``, ``4 * first``..
    going from ``before`` to ``after``: the moments its vector teaches the text map (often
    while it settles, rarely once it has).

    >>> [n for n in range(1, 30) if warm_milestone(n - 1, n)]
    [3, 6, 12, 24]
    """
    if after < first or after <= before:
        return False
    m = first
    while m <= after:
        if m > before:
            return True
        m *= 2
    return False


_MAP_MAGIC = b"FT1"
_MAP_HEAD = struct.Struct("<3sIId")


class TextMap:
    """Ridge regression ``W = (A + l2 I)^-1 B`` from text vectors to item vectors, kept as
    its sufficient statistics ``A = sum t t^T``, ``B = sum t v^T`` with each batch of
    examples decaying the old ones by ``forget``, and ``n`` (examples so far).

    Parameters
    ----------
    text_dim, dim : int
    l2 : float
        Ridge penalty.
    forget : float
        Factor applied to the statistics before each batch (1 = remember all).
    """

    def __init__(self, text_dim: int, dim: int, l2: float = 0.05, forget: float = 0.999,
                 a: np.ndarray | None = None, b: np.ndarray | None = None, n: int = 0) -> None:
        self.l2, self.forget, self.n = l2, forget, n
        self.a = np.zeros((text_dim, text_dim)) if a is None else a
        self.b = np.zeros((text_dim, dim)) if b is None else b
        self._w: np.ndarray | None = None

    def learn(self, text_vectors: np.ndarray, item_vectors: np.ndarray) -> None:
        """Add examples (rows of text vectors and the items' learned vectors)."""
        if not text_vectors.shape[0]:
            return
        t = text_vectors.astype(np.float64)
        self.a *= self.forget
        self.b *= self.forget
        self.a += t.T @ t
        self.b += t.T @ item_vectors.astype(np.float64)
        self.n += t.shape[0]
        self._w = None

    def predict(self, text_vectors: np.ndarray) -> np.ndarray:
        """Item-space vectors of text vectors (float32 rows)."""
        if self._w is None:
            reg = self.a + self.l2 * np.eye(self.a.shape[0])
            self._w = np.linalg.solve(reg, self.b).astype(np.float32)
        return text_vectors.astype(np.float32) @ self._w

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TextMap):
            return NotImplemented
        return (self.n == other.n and self.l2 == other.l2 and self.forget == other.forget
                and np.array_equal(self.a, other.a) and np.array_equal(self.b, other.b))

    __hash__ = None  # type: ignore[assignment]

    def to_bytes(self) -> bytes:
        """Layout ``FT1``: header (magic, text_dim, dim, l2), float64 forget and n, then
        float64 ``A`` and ``B`` row-major."""
        text_dim, dim = self.b.shape
        return b"".join((_MAP_HEAD.pack(_MAP_MAGIC, text_dim, dim, self.l2),
                         struct.pack("<dq", self.forget, self.n),
                         self.a.astype("<f8").tobytes(), self.b.astype("<f8").tobytes()))

    @classmethod
    def from_bytes(cls, blob: bytes) -> TextMap:
        """Inverse of :meth:`to_bytes`; ``ValueError`` on foreign bytes."""
        magic, text_dim, dim, l2 = _MAP_HEAD.unpack_from(blob)
        if magic != _MAP_MAGIC:
            raise ValueError("not a freshrec text map (bad magic)")
        off = _MAP_HEAD.size
        forget, n = struct.unpack_from("<dq", blob, off)
        off += 16
        a = np.frombuffer(blob, "<f8", text_dim * text_dim, off).reshape(text_dim, text_dim)
        b = np.frombuffer(blob, "<f8", text_dim * dim, off + a.nbytes).reshape(text_dim, dim)
        return cls(text_dim, dim, l2, forget, a.astype(np.float64), b.astype(np.float64), n)


class ColdText:
    """The item side's text features: the encoder and the map, with the two steps every
    owner of new items takes (the job's item operator and the in-memory model alike).

    Parameters
    ----------
    encoder : TextEncoder
    dim : int
        Item vector dimensions.
    min_examples : int
        Warm examples the map needs before it places new items.
    text_map : TextMap, optional
        A map restored from state (default: an empty one).
    """

    def __init__(self, encoder: TextEncoder, dim: int, min_examples: int,
                 text_map: TextMap | None = None) -> None:
        self.encoder = encoder
        self.min_examples = min_examples
        self.map = text_map or TextMap(TEXT_DIM, dim)

    def start_vectors(self, texts: Sequence[str], content: np.ndarray) -> list[np.ndarray | None]:
        """Starting vectors of new items: ``content + map(text)`` for each item with words
        once the map has learned enough, else ``None`` (the metadata vector stands)."""
        if self.map.n < self.min_examples or not any(texts):
            return [None] * len(texts)
        placed = content + self.map.predict(self.encoder.encode(texts))
        return [placed[j] if t else None for j, t in enumerate(texts)]

    def learn(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Teach the map the learned vectors of warm items (those with words)."""
        keep = [j for j, t in enumerate(texts) if t]
        if keep:
            self.map.learn(self.encoder.encode([texts[j] for j in keep]), vectors[keep])
