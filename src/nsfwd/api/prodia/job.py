"""The Prodia job document and how refusals become failed jobs, for the sync and async routes.

A job answers as JSON (``{"type", "id", "created_at", "updated_at", "state": {"current"},
"config", "metrics": {"elapsed"}}``, plus ``"error"`` when it failed), or as
multipart/form-data with that JSON in a part named ``job`` followed by any ``output`` parts, as
the ``Accept`` header asks. A 4xx goes in the ``job`` part of a multipart body when the client
accepts multipart, because that is where the npm client looks for the message it throws; a 5xx
is always JSON, since that client would take any multipart answer, whatever its status, for a
result. 401 is plain text.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from fastapi import Response
from fastapi.responses import PlainTextResponse

from nsfwd.api.http.errors import ApiError, BadRequestError, PayloadTooLargeError
from nsfwd.api.http.multipart import Part, encode_form
from nsfwd.intake import ImageError, ImageTooLargeError, sniff_format
from nsfwd.intake.sniff import ACCEPTED, EXTENSIONS, MEDIA_TYPES
from nsfwd.intake.video import ACCEPTED as VIDEOS_ACCEPTED
from nsfwd.intake.video import VIDEO_EXTENSIONS, VIDEO_MEDIA_TYPES, sniff_video
from nsfwd.timeline import OPTION_NAMES
from nsfwd.verdict import Labels

IMG2LABEL_V1: Final = "inference.vit.img2label.v1"
IMG2LABEL_V2: Final = "inference.vit.img2label.v2"
PING_V1: Final = "inference.ping.v1"
JOB_TYPES: Final = (IMG2LABEL_V1, IMG2LABEL_V2, PING_V1)

JSON_TYPE: Final = "application/json"
FORM_TYPE: Final = "multipart/form-data"

OPENAPI_REQUEST: Final[dict[str, Any]] = {
    "requestBody": {
        "required": True,
        "content": {
            FORM_TYPE: {
                "schema": {
                    "type": "object",
                    "required": ["job"],
                    "properties": {
                        "job": {
                            "type": "string",
                            "format": "binary",
                            "description": 'job.json, e.g. {"type": "inference.vit.img2label.v1",'
                            ' "config": {"model": "Freepik/nsfw_image_detector"}}',
                        },
                        "input": {
                            "type": "string",
                            "format": "binary",
                            "description": f"the image ({ACCEPTED}), 128 to 2048 px a side; "
                            f"or a video ({VIDEOS_ACCEPTED}; config.interval, max_frames, "
                            "min_frames and stop_on_flag say how it is judged)",
                        },
                    },
                }
            }
        },
    }
}
"""The OpenAPI request body of the job routes (``openapi_extra``): a job part and an image."""

_MEDIA_TYPES: Final = {**MEDIA_TYPES, **VIDEO_MEDIA_TYPES}
"""The media type of each format an upload may have, by its content."""
_EXTENSIONS: Final = {**EXTENSIONS, **VIDEO_EXTENSIONS}


def media_format(data: bytes) -> str | None:
    """The image or video format of ``data`` by its content (a key of :data:`_MEDIA_TYPES`)."""
    return sniff_format(data) or sniff_video(data)


def media_type(data: bytes) -> str | None:
    """The media type of an image or video, by its content."""
    return _MEDIA_TYPES.get(media_format(data) or "")


OPTION_TYPES: Final[dict[str, type | tuple[type, ...]]] = {
    "interval": (int, float),
    "max_frames": int,
    "min_frames": int,
    "stop_on_flag": bool,
}
OPTION_WORDS: Final = {
    "interval": "a number of seconds between a video's judged frames",
    "max_frames": "a whole number of frames",
    "min_frames": "a whole number of frames",
    "stop_on_flag": "true or false",
}


def video_options(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The video options a job's config sets (``interval``, ``max_frames``, ``min_frames``,
    ``stop_on_flag``); a 400 naming the one whose type is wrong."""
    found: dict[str, Any] = {}
    for name in OPTION_NAMES:
        value = (config or {}).get(name)
        if value is None:
            continue
        expected = OPTION_TYPES[name]
        if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
            raise BadRequestError(
                f"job.config.{name} is {json.dumps(value)[:100]}; it must be {OPTION_WORDS[name]}"
            )
        found[name] = value
    return found


def now() -> datetime:
    """The current time, in UTC."""
    return datetime.now(UTC)


def timestamp(moment: datetime) -> str:
    """``moment`` as Prodia writes times: ISO 8601 to the millisecond, ``Z`` for UTC."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_bytes(doc: object) -> bytes:
    """``doc`` as the job routes write JSON: UTF-8, no ASCII escapes, NaN refused."""
    return json.dumps(doc, ensure_ascii=False, allow_nan=False).encode()


@dataclass
class Job:
    """One job on its way through a route; :meth:`document` renders it as Prodia does."""

    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created_at: datetime = field(default_factory=now)
    started: float = field(default_factory=time.perf_counter)
    type: str | None = None
    config: dict[str, Any] | None = None

    def restart_clock(self) -> None:
        """Mark the job as accepted now: its time counts from here, not from the upload."""
        self.created_at = now()
        self.started = time.perf_counter()

    def document(
        self,
        state: str,
        *,
        labels: Labels | None = None,
        error: str | None = None,
        judged: dict[str, Any] | None = None,
        regions: list[dict[str, Any]] | None = None,
        match: dict[str, Any] | None = None,
        segments: list[dict[str, float]] | None = None,
    ) -> dict[str, Any]:
        """The job as JSON: ``state.current`` ``state``, with ``labels`` or an ``error``;
        ``judged`` (:meth:`~nsfwd.verdict.Judgement.details`: which frame and backdrop the
        labels are of, a video's worst moment) goes in ``config.judged`` beside the labels, a
        detector's ``regions`` in ``config.regions``, ``match`` (the banked image it matched,
        :meth:`~nsfwd.verdict.Match.details`) in ``config.match``, and a video's ``segments``
        in ``config.segments``."""
        doc: dict[str, Any] = {} if self.type is None else {"type": self.type}
        doc |= {
            "id": self.id,
            "created_at": timestamp(self.created_at),
            "updated_at": timestamp(now()),
            "state": {"current": state},
        }
        if self.config is not None or labels is not None:
            doc["config"] = dict(self.config or {})
            if labels is not None:
                doc["config"]["labels"] = labels
            if judged is not None:
                doc["config"]["judged"] = judged
            if regions is not None:
                doc["config"]["regions"] = regions
            if match is not None:
                doc["config"]["match"] = match
            if segments is not None:
                doc["config"]["segments"] = segments
        doc["metrics"] = {"elapsed": max(time.perf_counter() - self.started, 1e-6)}
        if error is not None:
            doc["error"] = error
        return doc


def wants_multipart(accept: str | None, *, default: bool) -> bool:
    """Whether ``accept`` prefers multipart/form-data to JSON; ``default`` when it names neither.

    The npm client sends ``multipart/form-data`` or ``multipart/form-data; <its accept option>``
    (e.g. ``multipart/form-data; image/png``), so parameters without ``=`` are ignored.
    """
    best: tuple[float, int, bool] | None = None
    for index, item in enumerate((accept or "").split(",")):
        media, *params = (piece.strip() for piece in item.split(";"))
        media = media.lower()
        if media in (FORM_TYPE, "multipart/*"):
            multipart = True
        elif media in (JSON_TYPE, "application/*"):
            multipart = False
        else:
            continue
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                with contextlib.suppress(ValueError):
                    quality = float(value)
        if quality > 0 and (best is None or quality > best[0]):
            best = (quality, index, multipart)
    return default if best is None else best[2]


def job_response(
    document: bytes,
    *,
    multipart: bool,
    outputs: Sequence[Part] = (),
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A job's answer: its JSON ``document`` alone, or as the ``job`` part before ``outputs``."""
    if not multipart:
        return Response(document, status, headers, media_type=JSON_TYPE)
    body, content_type = encode_form([Part("job", document, "job.json", JSON_TYPE), *outputs])
    return Response(body, status, headers, media_type=content_type)


def failed_response(
    accept: str | None, job: Job, exc: ApiError, *, multipart_by_default: bool
) -> Response:
    """``exc`` as the failed ``job``: plain text for 401, a ``job`` part for a 4xx when
    ``accept`` prefers multipart (or names neither and ``multipart_by_default``), else JSON."""
    if exc.plain_text:
        return PlainTextResponse(exc.message + "\n", exc.status, headers=exc.headers)
    document = json_bytes(job.document("failed", error=exc.message))
    multipart = exc.status < 500 and wants_multipart(accept, default=multipart_by_default)
    return job_response(document, multipart=multipart, status=exc.status, headers=exc.headers)


def image_refusal(image: Part, exc: ImageError) -> ApiError:
    """An image the intake refused, as the job's error (a 400; when too large, one naming the
    limit)."""
    name = repr(image.filename) if image.filename else "image"
    if isinstance(exc, ImageTooLargeError):
        return PayloadTooLargeError(f"input {name}: {exc.message}")
    return BadRequestError(f"input {name}: {exc.message}")


def passthrough(image: Part) -> Part:
    """The uploaded image (or video) as an output part, under its own filename and content
    type."""
    fmt = media_format(image.data) or ""
    content_type, extension = _MEDIA_TYPES.get(fmt, ""), _EXTENSIONS.get(fmt, "bin")
    return Part(
        "output",
        image.data,
        image.filename or f"input.{extension}",
        image.content_type or content_type or "application/octet-stream",
    )
