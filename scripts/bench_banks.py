"""Bank lookups at scale: lookups per second and memory of the Hamming index
(:mod:`nsfwd.banks.index`) at 10,000 and 1,000,000 hashes, against a numpy scan of the same
hashes in the same run (and FAISS's multi-index hashing, which ThreatExchange uses, where it is
installed), and the cost of PDQ-hashing one picture. BENCHMARKS.md records its output.

    python scripts/bench_banks.py [--sizes 10000,1000000] [--queries 500]

Hashes are random (as PDQ hashes of unrelated pictures are, to a good approximation); half the
queries are a banked hash with 31 of its bits flipped (a match at PDQ's usual distance), half
random (no match: the common case). Each lookup is one picture's hash, as a still image makes.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from nsfwd.banks.index import HammingIndex, as_words
from nsfwd.banks.pdq import DEFAULT_DISTANCE, hash_picture

RADIUS = DEFAULT_DISTANCE


def rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


def queries_for(banked: np.ndarray, count: int, rng: np.random.Generator) -> list[bytes]:
    picked = banked[rng.integers(0, len(banked), count // 2)].copy()
    bits = np.unpackbits(picked, axis=1)
    for row in bits:
        row[rng.choice(256, RADIUS, replace=False)] ^= 1
    near = np.packbits(bits, axis=1)
    far = rng.integers(0, 256, (count - len(near), 32), dtype=np.uint8)
    return [bytes(row) for row in np.concatenate([near, far])]


def rate(lookup: Callable[[bytes], int], queries: Sequence[bytes]) -> tuple[float, int]:
    started = time.perf_counter()
    found = sum(lookup(query) for query in queries)
    return len(queries) / (time.perf_counter() - started), found


def bench(size: int, count: int, rng: np.random.Generator) -> None:
    banked = rng.integers(0, 256, (size, 32), dtype=np.uint8)
    queries = queries_for(banked, count, rng)
    gc.collect()
    before = rss_mib()
    started = time.perf_counter()
    index = HammingIndex(banked)
    built = time.perf_counter() - started
    grown = rss_mib() - before
    ours, found = rate(lambda q: len(index.search([q], RADIUS)), queries)
    words = as_words(banked)

    def scan(query: bytes) -> int:
        word = as_words([query])[0]
        return int((np.bitwise_count(words ^ word).sum(axis=1) <= RADIUS).sum())

    scanned, scan_found = rate(scan, queries[: max(20, count // 10)])
    print(
        f"{size:>9,} hashes: index {ours:8.0f} lookups/s (found {found}/{count}), built in "
        f"{built:.2f} s, {index.nbytes / 2**20:.1f} MiB ({grown:.0f} MiB RSS); numpy scan "
        f"{scanned:8.0f} lookups/s ({ours / scanned:.1f}x)"
    )
    try:
        import faiss
    except ImportError:
        return
    faiss.omp_set_num_threads(1)
    gc.collect()
    before = rss_mib()
    started = time.perf_counter()
    multi = faiss.IndexBinaryMultiHash(256, 16, 16)
    multi.nflip = RADIUS // 16  # exact at this radius, as our index is
    multi.add(banked)
    built = time.perf_counter() - started
    grown = rss_mib() - before

    def faiss_lookup(query: bytes) -> int:
        limits, _, _ = multi.range_search(np.frombuffer(query, np.uint8)[None, :], RADIUS + 1)
        return int(limits[1] - limits[0])

    theirs, faiss_found = rate(faiss_lookup, queries)
    print(
        f"{'':>9}         FAISS IndexBinaryMultiHash {theirs:8.0f} lookups/s (found "
        f"{faiss_found}), built in {built:.2f} s, {grown:.0f} MiB RSS ({ours / theirs:.1f}x "
        "ours against it)"
    )


def hashing_cost() -> None:
    rng = np.random.default_rng(1)
    small = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    for side in (448, 1024, 2048):
        picture = small.resize((side, side * 3 // 4), Image.Resampling.BICUBIC)
        hash_picture(picture)
        started = time.perf_counter()
        for _ in range(5):
            hash_picture(picture)
        print(
            f"PDQ hash of one {side}x{side * 3 // 4} picture: "
            f"{(time.perf_counter() - started) / 5 * 1000:.1f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,1000000")
    parser.add_argument("--queries", type=int, default=500)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for size in (int(text) for text in args.sizes.split(",")):
        bench(size, args.queries, rng)
    hashing_cost()


if __name__ == "__main__":
    main()
