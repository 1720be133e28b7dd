"""What the store hands out: frozen snapshots of rows, never live ORM objects.

A record is a copy of a row at the moment it was read or changed; holding one never keeps a
database connection or transaction open, and changing the row means calling the store again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from nsfwd.verdict import PolicyName

Protocol = Literal["eachlabs", "prodia"]
Status = Literal["queued", "processing", "succeeded", "failed"]
DeliveryStatus = Literal["pending", "delivered", "failed"]

UNFINISHED: Final = ("queued", "processing")
"""Statuses of a prediction that still has to run (or is running)."""
FINISHED: Final = ("succeeded", "failed")


@dataclass(frozen=True)
class Upload:
    """An image uploaded with a prediction (Prodia async), kept until the result expires when
    the result hands it back (v2), else dropped once the prediction is classified."""

    data: bytes
    filename: str
    """The name its outputs are listed under (Prodia v2 passes the image through by it)."""
    content_type: str


@dataclass(frozen=True)
class Prediction:
    """One classification request, from submission to its result (or failure)."""

    id: str
    """A uuid4, as text."""
    protocol: Protocol
    """The wire protocol that created it; each protocol shows only its own predictions."""
    job_type: str
    """Prodia's job type, or ``"nsfw-image-detection"`` style names for Eachlabs."""
    model: str | None
    """The served model's name; ``None``: the server's default model."""
    status: Status
    created_at: datetime
    api_key: str | None = None
    """Whose prediction this is: an ``api_keys`` id, or a hash prefix of a static key."""
    config: dict[str, Any] | None = None
    """The request's options as the client sent them (Prodia's ``job.config``)."""
    input_url: str | None = None
    """Where the image is fetched from (Eachlabs), when it was not uploaded."""
    input_filename: str | None = None
    """Filename of the uploaded image, when there is one (its bytes:
    ``store.predictions.get_input``)."""
    input_content_type: str | None = None
    labels: dict[str, float] | None = None
    """Probability per label, once succeeded."""
    flagged: bool | None = None
    """Whether its policy flags the labels, once succeeded (``None``: a model the policy
    cannot score)."""
    error: str | None = None
    """Why it failed, for the client to read."""
    webhook_url: str | None = None
    started_at: datetime | None = None
    """When a worker first claimed it."""
    finished_at: datetime | None = None
    predict_time: float | None = None
    """Seconds spent classifying (what Eachlabs bills by)."""
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    attempts: int = 0
    """How many times a worker has claimed it."""
    expires_at: datetime | None = None
    """When the finished result is purged."""
    policy: PolicyName | None = None
    """The verdict policy of the key that created it (``None``: the server's decides
    ``flagged``)."""
    threshold: float | None = None
    """The threshold of the key that created it (``None``: the server's)."""
    judged: dict[str, Any] | None = None
    """Which picture the labels are of (:meth:`nsfwd.verdict.Judgement.stored`), where more
    than one was judged (an animation, or transparency over white and black; a video's worst
    moment), and a detector's regions."""
    region_thresholds: str | None = None
    """The region thresholds of the key that created it, ``LABEL=T,...`` (``None``: the
    server's)."""
    match: dict[str, Any] | None = None
    """The banked image a picture matched (:meth:`nsfwd.verdict.Match.details`), if any."""
    video: dict[str, Any] | None = None
    """For a video input, the video options its key and request set
    (:class:`nsfwd.timeline.VideoOptions` fields; the server's apply to the rest); ``None`` for
    an image."""
    segments: list[dict[str, Any]] | None = None
    """A judged video's flagged segments (``start``, ``end``, ``score``)."""
    input_sha256: str | None = None
    """SHA-256 (hex) of the image bytes it judged, once run: a URL's verdict holds for these
    bytes, not for whatever the URL serves others."""

    @property
    def finished(self) -> bool:
        """Whether it has succeeded or failed (and so will never change again)."""
        return self.status in FINISHED


@dataclass(frozen=True)
class Delivery:
    """One webhook notification, from enqueued (with the outcome) to delivered or given up.

    Its ``id`` is the Standard Webhooks message id (``msg_...``), the same on every retry, so a
    receiver can drop duplicates.
    """

    id: str
    prediction_id: str
    url: str
    payload: str
    """The JSON body, exactly as it is signed and sent."""
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    last_status: int | None = None
    """The receiver's last HTTP status, if it answered."""
    last_error: str | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    delivered_at: datetime | None = None


@dataclass(frozen=True)
class ApiKey:
    """An API key from ``nsfwd keys``; the secret itself is never stored, only its SHA-256."""

    id: str
    name: str
    prefix: str
    """The first characters of the key, to tell keys apart in listings (``nsfwd_AbC1...``)."""
    key_hash: str
    creates_per_minute: int
    max_in_flight: int
    created_at: datetime
    revoked_at: datetime | None = None
    policy: PolicyName | None = None
    """The verdict policy its predictions follow (their ``flagged``); ``None``: the
    server's (``NSFWD_POLICY``)."""
    threshold: float | None = None
    """The threshold its predictions' policy is applied at; ``None``: the server's
    (``NSFWD_THRESHOLD``)."""
    region_thresholds: str | None = None
    """The region labels that flag its predictions, ``LABEL=T,...`` (empty: none); ``None``:
    the server's (``NSFWD_REGION_THRESHOLDS``)."""
    admin: bool = False
    """Whether it may administer the banks of known images (``/v1/banks``)."""
    video_interval: float | None = None
    """Seconds between the judged frames of its videos; ``None``: the server's
    (``NSFWD_VIDEO_INTERVAL``)."""
    video_min_frames: int | None = None
    """Flagged samples in a row its videos' segments need; ``None``: the server's
    (``NSFWD_VIDEO_MIN_FRAMES``)."""

    @property
    def video(self) -> dict[str, Any]:
        """The video options it sets, as a request would (only those it has)."""
        own = {"interval": self.video_interval, "min_frames": self.video_min_frames}
        return {name: value for name, value in own.items() if value is not None}

    @property
    def revoked(self) -> bool:
        """Whether the key has been revoked (it no longer authenticates)."""
        return self.revoked_at is not None


@dataclass(frozen=True)
class Bank:
    """A named bank of PDQ hashes of known images."""

    name: str
    category: str | None
    """The moderation category a match stands for (OpenAI's); ``None``: ``sexual``."""
    distance: int
    """The Hamming distance within which a hash matches."""
    created_at: datetime
    size: int = 0
    """How many hashes it holds."""


@dataclass(frozen=True)
class BankedHash:
    """One hash in a bank."""

    bank: str
    hash: bytes
    quality: int | None
    """PDQ's quality (0 to 100) when it was hashed here; ``None`` when added by hash."""
    source: str | None
    """Where it came from: the file it was hashed from, or an import."""
    added_at: datetime
