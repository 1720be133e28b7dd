"""Reading a body that may not exceed a size: refused as soon as it is known to be too large.

Used for the Eachlabs API's JSON request bodies and for fetched images; each caller turns
:class:`OverCapError` into its own message.
"""

from __future__ import annotations

from collections.abc import AsyncIterable


class OverCapError(ValueError):
    """A body exceeds its cap: ``size`` bytes, counted so far or ``declared`` up front."""

    def __init__(self, size: int, cap: int, *, declared: bool) -> None:
        """Record the size that broke ``cap``, and whether the sender declared it."""
        super().__init__(f"{size} bytes, over the {cap}-byte cap")
        self.size = size
        self.cap = cap
        self.declared = declared


async def read_capped(
    chunks: AsyncIterable[bytes], cap: int, *, content_length: str | None = None
) -> bytes:
    """The bytes of ``chunks`` joined, at most ``cap`` of them; else OverCapError.

    ``content_length`` is the body's Content-Length header, if any: a declared size over the
    cap is refused before a byte is read (a value that is not a number is ignored). Otherwise
    the refusal comes with the first chunk that takes the count past the cap, so a sender
    cannot make the reader hold more than a cap plus one chunk.
    """
    declared = content_length or ""
    if declared.isdigit() and int(declared) > cap:
        raise OverCapError(int(declared), cap, declared=True)
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > cap:
            raise OverCapError(len(body), cap, declared=False)
    return bytes(body)
