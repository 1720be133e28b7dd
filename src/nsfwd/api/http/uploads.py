"""One uploaded file from a request body: the raw body, or the file part of a form.

pict-rs' external validation sends the file as the raw body (its ``Content-Type`` the file's
type); other clients, and db0's pictrs-safety's, post a multipart form whose part named
``file`` holds it. Either way the body is read as it streams, within the route's body limit
(:mod:`nsfwd.api.http.middleware`), and the file's own limit.
"""

from __future__ import annotations

import contextlib
from typing import Final

from fastapi import Request

from nsfwd.api.http.errors import BadRequestError
from nsfwd.api.http.multipart import FORM_DATA, FormError, read_form

FILE_PART: Final = "file"
MAX_PARTS: Final = 8


async def read_upload(request: Request, max_bytes: int) -> bytes:
    """The uploaded file: the body, or the ``file`` part of a multipart/form-data body. A 400
    says what is missing."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != FORM_DATA:
        body = await request.body()
        if not body:
            raise BadRequestError("the request has no body: send the file as the body")
        return body
    async with contextlib.aclosing(request.stream()) as chunks:
        try:
            parts = await read_form(
                content_type, chunks, part_limits={FILE_PART: max_bytes}, max_parts=MAX_PARTS
            )
        except FormError as exc:
            raise BadRequestError(f"the form cannot be read: {exc}") from None
    files = [part for part in parts if part.name == FILE_PART]
    if len(files) == 1 and files[0].data:
        return files[0].data
    names = ", ".join(repr(part.name) for part in parts) or "none"
    raise BadRequestError(
        f"expected the file in one form part named {FILE_PART!r} (parts: {names}), or the file "
        "itself as the request body"
    )
