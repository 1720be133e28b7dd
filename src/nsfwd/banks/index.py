"""Finding every banked hash within a Hamming distance of a query, without a scan.

Multi-index hashing (Norouzi, Punjani and Fleet, "Fast Search in Hamming Space with Multi-Index
Hashing", CVPR 2012): the 256 bits are cut into 16 chunks of 16 bits, and each chunk keeps the
hashes sorted by its value. Two hashes at most ``r`` bits apart differ, by pigeonhole, in at
most ``r // 16`` bits of at least one chunk; so the candidates are the hashes whose value in
some chunk is the query's with at most that many bits flipped (17 values a chunk for PDQ's
usual 31), and only those are compared bit for bit. With a million random hashes a bucket holds
about 15, so a lookup compares a few thousand hashes instead of a million (BENCHMARKS.md gives
the lookups per second and the memory). The answer is exact: every hash within the distance is
found, and nothing beyond it.

Memory: the hashes (32 bytes each) and, per chunk, their order (4 bytes each) and the bucket
starts (256 KiB): about 100 bytes a hash. Built from numpy arrays in one go (a sort per chunk);
FAISS's ``IndexBinaryMultiHash``, which ThreatExchange uses, took three times the memory and
answered about a hundred times fewer lookups at a million hashes here.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from nsfwd.banks.pdq import HASH_BITS, HASH_BYTES

CHUNKS: Final = 16
CHUNK_BITS: Final = HASH_BITS // CHUNKS
_BUCKETS: Final = 1 << CHUNK_BITS

U64 = npt.NDArray[np.uint64]


def as_words(hashes: Sequence[bytes] | npt.NDArray[np.uint8]) -> U64:
    """Hashes as rows of four big-endian 64-bit words (an ``(n, 4)`` array)."""
    if isinstance(hashes, np.ndarray):
        raw = np.ascontiguousarray(hashes, dtype=np.uint8).reshape(-1, HASH_BYTES)
    else:
        raw = np.frombuffer(b"".join(hashes), dtype=np.uint8).reshape(-1, HASH_BYTES)
    return raw.view(">u8").astype(np.uint64)


def _chunks(words: U64) -> npt.NDArray[np.uint16]:
    """Each hash's 16 chunk values (an ``(n, 16)`` array), the most significant first."""
    return words.astype(">u8").view(">u2").astype(np.uint16).reshape(len(words), CHUNKS)


@functools.cache
def _flips(radius: int) -> npt.NDArray[np.int64]:
    """Every 16-bit mask with at most ``radius`` bits set (0 first)."""
    masks = [0]
    for count in range(1, min(radius, CHUNK_BITS) + 1):
        for bits in itertools.combinations(range(CHUNK_BITS), count):
            masks.append(sum(1 << bit for bit in bits))
    return np.array(masks, dtype=np.int64)


@dataclass(frozen=True)
class Found:
    """A banked hash found near a query: which query, which row of the index, how far."""

    query: int
    row: int
    distance: int


class HammingIndex:
    """Hashes (rows, in the order given) searchable by Hamming distance. Immutable once
    built; build another to change it."""

    def __init__(self, hashes: Sequence[bytes] | npt.NDArray[np.uint8]) -> None:
        """Index ``hashes``: 32 bytes each, or an ``(n, 32)`` uint8 array."""
        self.words = as_words(hashes)
        chunks = _chunks(self.words)
        self._order = np.empty((CHUNKS, len(self.words)), dtype=np.int32)
        """Per chunk, the rows sorted by that chunk's value."""
        self._starts = np.zeros((CHUNKS, _BUCKETS + 1), dtype=np.int64)
        """Per chunk, where each value's rows start in its order (and the end)."""
        for chunk in range(CHUNKS):
            values = chunks[:, chunk]
            self._order[chunk] = np.argsort(values, kind="stable")  # a radix sort for uint16
            np.cumsum(np.bincount(values, minlength=_BUCKETS), out=self._starts[chunk, 1:])

    def __len__(self) -> int:
        return len(self.words)

    @property
    def nbytes(self) -> int:
        """The memory the index holds."""
        return self.words.nbytes + self._order.nbytes + self._starts.nbytes

    def hash_at(self, row: int) -> bytes:
        """The hash in ``row``."""
        return bytes(self.words[row].astype(">u8").tobytes())

    @property
    def raw(self) -> npt.NDArray[np.uint8]:
        """The hashes as an ``(n, 32)`` uint8 array, in row order."""
        return self.words.astype(">u8").view(np.uint8).reshape(len(self), HASH_BYTES)

    def search(self, queries: Sequence[bytes], radius: int) -> list[Found]:
        """Every (query, row) pair at most ``radius`` bits apart, with the distance, ordered
        by query, then row."""
        if not len(self) or not queries or radius < 0:
            return []
        words = as_words(queries)
        flips = _flips(radius // CHUNKS)
        if len(flips) * CHUNKS * len(self) >= _BUCKETS * len(self) // 4:
            pairs = self._all_pairs(len(words))  # so many probes that a scan is cheaper
        else:
            pairs = self._candidates(_chunks(words), flips)
        query, row = pairs // len(self), pairs % len(self)
        distances = np.bitwise_count(self.words[row] ^ words[query]).sum(axis=1, dtype=np.int64)
        near = np.flatnonzero(distances <= radius)
        # A near row is a candidate in several chunks; the few found are deduplicated here.
        hits = sorted({(int(query[i]), int(row[i]), int(distances[i])) for i in near})
        return [Found(*hit) for hit in hits]

    def _candidates(
        self, chunks: npt.NDArray[np.uint16], flips: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.int64]:
        """The (query, row) pairs sharing a chunk up to ``flips``, as ``query * len(self) +
        row`` (a row may come more than once)."""
        probes = chunks.astype(np.int64)[:, :, None] ^ flips[None, None, :]  # (q, chunk, flip)
        chunk = np.broadcast_to(np.arange(CHUNKS)[None, :, None], probes.shape)
        starts = self._starts[chunk, probes].ravel()
        lengths = self._starts[chunk, probes + 1].ravel() - starts
        total = int(lengths.sum())
        if total == 0:
            return np.empty(0, dtype=np.int64)
        # Gather every probed bucket's slice of its chunk's order, without a Python loop.
        bucket = np.repeat(np.arange(len(starts)), lengths)
        first = np.repeat(np.cumsum(lengths) - lengths, lengths)
        positions = starts[bucket] + np.arange(total) - first
        rows = self._order[chunk.ravel()[bucket], positions]
        query = bucket // (CHUNKS * len(flips))
        pairs: npt.NDArray[np.int64] = query * len(self) + rows
        return pairs

    def _all_pairs(self, queries: int) -> npt.NDArray[np.int64]:
        return np.arange(queries * len(self), dtype=np.int64)
