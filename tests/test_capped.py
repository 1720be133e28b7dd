"""nsfwd.fetch.capped: a body read up to its cap, refused as soon as it is known to exceed it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from nsfwd.fetch.capped import OverCapError, read_capped


def chunks(*parts: bytes, read: list[int] | None = None) -> AsyncIterator[bytes]:
    async def generate() -> AsyncIterator[bytes]:
        for part in parts:
            if read is not None:
                read.append(len(part))
            yield part

    return generate()


def test_a_body_up_to_the_cap_is_joined() -> None:
    assert asyncio.run(read_capped(chunks(b"ab", b"", b"cd"), 4)) == b"abcd"
    assert asyncio.run(read_capped(chunks(), 0)) == b""


def test_the_chunk_that_passes_the_cap_stops_the_read() -> None:
    read: list[int] = []
    with pytest.raises(OverCapError) as caught:
        asyncio.run(read_capped(chunks(b"abc", b"de", b"never", read=read), 4))
    assert (caught.value.size, caught.value.cap, caught.value.declared) == (5, 4, False)
    assert read == [3, 2]


def test_a_declared_size_over_the_cap_is_refused_before_reading() -> None:
    read: list[int] = []
    with pytest.raises(OverCapError) as caught:
        asyncio.run(read_capped(chunks(b"a", read=read), 4, content_length="5"))
    assert (caught.value.size, caught.value.declared) == (5, True)
    assert read == []
    for declared in ("4", "", "five", "-1", None):  # not over, or not a number: counted instead
        assert asyncio.run(read_capped(chunks(b"ab"), 4, content_length=declared)) == b"ab"
