"""Banks of known images, below the HTTP layer: PDQ hashing, the Hamming index, ThreatExchange's
text, the banks in the job store (SQLite and PostgreSQL, and the migration that made them) and
the matcher that keeps them in memory."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from io import BytesIO

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import text

from nsfwd.banks import matcher as matcher_module
from nsfwd.banks.index import HammingIndex
from nsfwd.banks.matcher import BankMatcher
from nsfwd.banks.pdq import (
    DEFAULT_DISTANCE,
    HashFormatError,
    PictureHash,
    distance,
    hash_picture,
    parse_hash,
)
from nsfwd.banks.signals import SignalFormatError, read_signals, signal_line
from nsfwd.jobs import Store
from nsfwd.jobs import banks as banks_module
from nsfwd.jobs.banks import BankError, UnknownBankError
from nsfwd.jobs.database import create_engine, migrate
from nsfwd.verdict import Match
from photos import PHOTOS, photo


def reencoded(image: Image.Image, scale: float = 0.9, quality: int = 70) -> Image.Image:
    """``image`` resized to ``scale`` and saved as a JPEG at ``quality``, decoded again."""
    size = (round(image.width * scale), round(image.height * scale))
    buffer = BytesIO()
    image.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(
        buffer, "JPEG", quality=quality
    )
    return Image.open(BytesIO(buffer.getvalue())).convert("RGB")


def random_hashes(count: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [bytes(row) for row in rng.integers(0, 256, (count, 32), dtype=np.uint8)]


def flipped(value: bytes, bits: int, seed: int = 1) -> bytes:
    """``value`` with ``bits`` of its bits flipped, chosen at random."""
    rng = np.random.default_rng(seed)
    number = int.from_bytes(value, "big")
    for bit in rng.choice(256, bits, replace=False):
        number ^= 1 << int(bit)
    return number.to_bytes(32, "big")


# --- PDQ ---------------------------------------------------------------------------------------


def test_pdq_sees_a_photo_through_resizing_and_jpeg_and_tells_photos_apart() -> None:
    hashes = {name: hash_picture(photo(name).convert("RGB")) for name in PHOTOS}
    for name, original in hashes.items():
        assert original.usable, name
        again = hash_picture(reencoded(photo(name)))
        assert distance(original.hash, again.hash) <= DEFAULT_DISTANCE, name
    names = sorted(hashes)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            assert distance(hashes[first].hash, hashes[second].hash) > 3 * DEFAULT_DISTANCE


def test_a_large_picture_hashes_as_its_reduction_and_a_flat_one_is_unusable() -> None:
    large = photo("chelsea").convert("RGB").resize((2048, 1364), Image.Resampling.BICUBIC)
    assert distance(hash_picture(large).hash, hash_picture(photo("chelsea")).hash) <= 16
    flat = hash_picture(Image.new("RGB", (300, 300), (120, 30, 200)))
    assert not flat.usable and flat.quality < 50


def test_hashes_read_and_write_as_threatexchange_hex() -> None:
    value = hash_picture(photo("rocket").convert("RGB"))
    assert len(value.hex) == 64 and parse_hash(value.hex.upper()) == value.hash
    for bad in ("", "zz" * 32, "ab" * 31, "ab" * 33):
        with pytest.raises(HashFormatError, match="64 hexadecimal digits"):
            parse_hash(bad)


# --- The index ---------------------------------------------------------------------------------


@pytest.mark.parametrize("radius", [0, 15, 31, 40])
def test_the_index_finds_exactly_what_a_scan_finds(radius: int) -> None:
    banked = random_hashes(3000)
    near = [flipped(banked[i], bits, seed=i) for i, bits in enumerate((0, 5, 16, 31, 32, 40, 47))]
    queries = near + random_hashes(20, seed=9)
    index = HammingIndex(banked)
    found = {(hit.query, hit.row, hit.distance) for hit in index.search(queries, radius)}
    scan = {
        (q, row, distance(query, value))
        for q, query in enumerate(queries)
        for row, value in enumerate(banked)
        if distance(query, value) <= radius
    }
    assert found == scan
    assert all(index.hash_at(row) == banked[row] for _, row, _ in found)


def test_an_empty_index_finds_nothing_and_a_wide_radius_still_answers() -> None:
    assert HammingIndex([]).search(random_hashes(2), 31) == []
    banked = random_hashes(50)
    hits = HammingIndex(banked).search([flipped(banked[3], 60)], 64)  # scanned, not probed
    assert [(hit.row, hit.distance) for hit in hits] == [(3, 60)]


# --- ThreatExchange text -----------------------------------------------------------------------


def test_signal_lines_and_csv_read_back_what_was_written() -> None:
    values = random_hashes(3)
    lines = ["# exported by nsfwd", "", *(signal_line(v) for v in values)]
    assert read_signals(lines).hashes == values
    tx = [f"pdq {values[0].hex()} 'Sample Collab' opinion", "md5 d41d8cd98f00b204e9800998ecf8427e",
          values[1].hex().upper()]  # fmt: skip
    read = read_signals(tx)
    assert (read.hashes, read.skipped) == (values[:2], 1)
    csv = ["signal_type,signal_str,collab,category,tags", f"pdq,{values[2].hex()},c,BLOCK,t",
           "video_md5,abc,c,BLOCK,"]  # fmt: skip
    read = read_signals(csv)
    assert (read.hashes, read.skipped) == ([values[2]], 1)
    with pytest.raises(SignalFormatError, match="line 2: 'pdq' with no hash"):
        read_signals(["pdq " + values[0].hex(), "pdq"])
    with pytest.raises(SignalFormatError, match="line 1: 'abc' is not a PDQ hash"):
        read_signals(["pdq abc"])


# --- Banks in the store ------------------------------------------------------------------------


def test_banks_are_created_filled_emptied_and_deleted(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(banks_module, "WRITE_ROWS", 100)
    monkeypatch.setattr(banks_module, "READ_ROWS", 200)
    values = random_hashes(550)  # several slices of writes and of reads

    async def main() -> None:
        async with Store(database) as store:
            before = await store.banks.revision()
            bank = await store.banks.create("removed", category="sexual/minors", distance=24)
            assert (bank.name, bank.category, bank.distance) == ("removed", "sexual/minors", 24)
            with pytest.raises(BankError, match="exists already"):
                await store.banks.create("removed")
            for bad, message in (("a b", "cannot name"), ("-x", "cannot name")):
                with pytest.raises(BankError, match=message):
                    await store.banks.create(bad)
            with pytest.raises(BankError, match="unknown category"):
                await store.banks.create("x", category="nudity")
            with pytest.raises(BankError, match="0 to 64"):
                await store.banks.create("x", distance=65)
            added = await store.banks.add("removed", [(v, 80) for v in values], source="a.jpg")
            assert added == len(values)
            assert await store.banks.add("removed", [(values[0], None)]) == 0  # held already
            with pytest.raises(UnknownBankError):
                await store.banks.add("nowhere", [(values[0], None)])
            (listed,) = await store.banks.all()
            assert listed.size == len(values)
            exported = [banked.hash async for banked in store.banks.hashes("removed")]
            assert exported == values
            assert await store.banks.remove("removed", [*values[:10], bytes(32)]) == 10
            assert (await store.banks.get("removed")).size == len(values) - 10
            revision, removals = await store.banks.revision()
            assert revision == before[0] + 4 and removals == before[1] + 2  # create, remove
            gone = await store.banks.delete("removed")
            assert gone.size == len(values) - 10
            assert await store.banks.all() == []
            assert await store.banks.rows_since(0) == []  # the hashes went with the bank

    asyncio.run(main())


def test_upgrading_from_0004_adds_the_banks_and_keeps_keys_and_predictions(
    empty_database: str,
) -> None:
    async def main() -> None:
        engine = create_engine(empty_database)
        try:
            await migrate(engine, "0004")
            async with engine.begin() as connection:
                await connection.execute(
                    text(
                        "INSERT INTO api_keys (id, name, prefix, key_hash, created_at) "
                        "VALUES ('k1', 'old', 'nsfwd_old', 'h', :at)"
                    ),
                    {"at": datetime(2025, 1, 1, tzinfo=UTC)},
                )
        finally:
            await engine.dispose()
        async with Store(empty_database) as store:  # migrates to the newest revision
            (old,) = await store.keys.all()
            assert (old.id, old.admin) == ("k1", False)
            assert await store.banks.revision() == (0, 0)
            await store.banks.create("after")
            assert [bank.name for bank in await store.banks.all()] == ["after"]

    asyncio.run(main())


# --- The matcher -------------------------------------------------------------------------------


def test_the_matcher_follows_additions_removals_and_a_store_out_of_reach(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(matcher_module, "TAIL_ROWS", 150)
    values = random_hashes(300)

    async def main() -> None:
        async with Store(database) as store:
            matcher = BankMatcher(store.banks, refresh_s=3600)
            assert (await matcher.snapshot()).hashes == 0
            await store.banks.create("known", category="sexual/minors")
            await store.banks.create("other", distance=4)
            await store.banks.add("known", [(v, None) for v in values[:100]])
            matcher.invalidate()
            snapshot = await matcher.snapshot()
            assert snapshot.hashes == 100
            query = PictureHash(flipped(values[7], 20), quality=90, frame=3)
            assert snapshot.match([query]) == Match(
                "known", values[7].hex(), 20, "sexual/minors", frame=3
            )
            assert snapshot.match([PictureHash(values[7], quality=10)]) is None  # featureless
            await store.banks.add("other", [(flipped(values[7], 2), None)])
            await store.banks.add("known", [(v, None) for v in values[100:]])  # past the tail
            assert (await matcher.snapshot()) is snapshot, "not read again before refresh_s"
            matcher.invalidate()
            snapshot = await matcher.snapshot()
            assert snapshot.hashes == len(values) + 1
            assert len(snapshot.banks["known"].tail) < len(snapshot.banks["known"])
            closest = snapshot.match([PictureHash(values[7], 90)])
            assert closest is not None and (closest.bank, closest.distance) == ("known", 0)
            late = snapshot.match([PictureHash(flipped(values[-1], 9), 90)])
            assert late is not None and late.hash == values[-1].hex()
            await store.banks.remove("known", [values[7]])
            matcher.invalidate()
            snapshot = await matcher.snapshot()
            near = snapshot.match([PictureHash(values[7], 90)])
            assert near is not None and (near.bank, near.distance) == ("other", 2)
            await store.close()  # out of reach: the last banks go on matching
            matcher.invalidate()
            assert (await matcher.snapshot()) is snapshot

    asyncio.run(main())
