"""The reliability campaign, part 3: property tests of the multipart reader
(:mod:`nsfwd.api.http.multipart`).

Whatever body and Content-Type arrive, in whatever chunks,
:func:`~nsfwd.api.http.multipart.read_form` returns parts or raises a 400-class
:class:`~nsfwd.api.http.errors.ApiError` (a malformed form, a part over its limit, a bad part
header), never another exception. A form the writer built is read back as it was written, however
the body is cut into chunks. Derandomized; ``NSFWD_CAMPAIGN_EXAMPLES`` raises the counts.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nsfwd.api.http.errors import ApiError
from nsfwd.api.http.multipart import Part, encode_form, read_form

EXAMPLES = int(os.environ.get("NSFWD_CAMPAIGN_EXAMPLES", "200"))
LIMITS = {"job": 1024, "input": 4096}
CAMPAIGN = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


async def _chunks(data: bytes, cuts: list[int]) -> AsyncIterator[bytes]:
    start = 0
    for cut in sorted({min(c, len(data)) for c in cuts}):
        yield data[start:cut]
        start = cut
    yield data[start:]


def read(content_type: str, body: bytes, cuts: list[int]) -> list[Part] | ApiError:
    """The parts, or the refusal; any other exception propagates (and fails the test)."""
    try:
        return asyncio.run(
            read_form(content_type, _chunks(body, cuts), part_limits=LIMITS, max_parts=8)
        )
    except ApiError as exc:
        assert 400 <= exc.status < 500, exc
        assert exc.message
        return exc


BOUNDARY = "b0undary"
FORM_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
cuts = st.lists(st.integers(0, 9000), max_size=6)
header_text = st.text(
    st.characters(codec="utf-8", exclude_characters='"\\\r\n%', exclude_categories=["Cc", "Cs"]),
    min_size=1,
    max_size=40,
)
parts = st.builds(
    Part,
    name=st.sampled_from(["job", "input", "other"]),
    data=st.binary(max_size=1024),
    filename=st.none() | header_text,
    content_type=st.sampled_from(["application/json", "image/jpeg", "image/png; q=1"]),
)


@CAMPAIGN
@given(
    content_type=st.sampled_from([FORM_TYPE, "multipart/form-data", "text/plain", ""])
    | st.text(st.characters(codec="latin-1"), max_size=120),  # as Starlette decodes headers
    body=st.binary(max_size=2048),
    cuts=cuts,
)
def test_arbitrary_bodies_are_parsed_or_refused_with_a_4xx(
    content_type: str, body: bytes, cuts: list[int]
) -> None:
    read(content_type, body, cuts)


@CAMPAIGN
@given(
    prefix=st.binary(max_size=64),
    head=st.binary(max_size=300),
    data=st.binary(max_size=5000),
    tail=st.sampled_from([b"", b"\r\n", b"\r\n--b0undary--\r\n", b"\r\n--b0undary", b"--"]),
    cuts=cuts,
)
def test_forms_with_arbitrary_part_headers_are_parsed_or_refused_with_a_4xx(
    prefix: bytes, head: bytes, data: bytes, tail: bytes, cuts: list[int]
) -> None:
    body = prefix + b"--b0undary\r\n" + head + b"\r\n\r\n" + data + tail
    read(FORM_TYPE, body, cuts)


@CAMPAIGN
@given(form=st.lists(parts, max_size=6), cuts=cuts)
def test_written_forms_read_back_as_written(form: list[Part], cuts: list[int]) -> None:
    body, content_type = encode_form(form)
    got = read(content_type, body, cuts)
    assert isinstance(got, list), got
    assert [(p.name, p.filename, p.content_type) for p in got] == [
        (p.name, p.filename, p.content_type) for p in form
    ]
    for sent, received in zip(form, got, strict=True):
        assert received.data == (sent.data if sent.name in LIMITS else b"")


@CAMPAIGN
@given(form=st.lists(parts, min_size=1, max_size=4), data=st.data())
def test_damaged_forms_are_parsed_or_refused_with_a_4xx(
    form: list[Part], data: st.DataObject
) -> None:
    encoded, content_type = encode_form(form)
    body = bytearray(encoded)
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, len(body) - 1))
        body[at] = data.draw(st.integers(0, 255))
    end = data.draw(st.integers(0, len(body)))
    read(content_type, bytes(body[:end]), data.draw(cuts))
