"""Settings from the environment (prefix ``NSFWD_``); command-line options override them."""

from __future__ import annotations

import base64
import binascii
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from nsfwd.banks.matcher import REFRESH_S
from nsfwd.engine.pools import DEFAULT_SIZES, DNS, WEBHOOKS
from nsfwd.engine.protocol import DECODE_TIMEOUT_S
from nsfwd.engine.verdict_cache import DEFAULT_ENTRIES
from nsfwd.fetch import (
    WEBHOOK_ALLOW_SETTING,
    FetchPolicy,
    FetchTimeouts,
    parse_networks,
    webhook_resolver,
)
from nsfwd.intake.limits import ANIMATION_STILLS, ImageLimits
from nsfwd.intake.video import VideoLimits
from nsfwd.models.names import DEFAULT_CALIBRATION_IMAGES, DEFAULT_MODEL, ModelSpec
from nsfwd.timeline import DEFAULT_INTERVAL, DEFAULT_MAX_FRAMES, DEFAULT_MIN_FRAMES, VideoOptions
from nsfwd.verdict import (
    DEFAULT_POLICY,
    DEFAULT_REGION_THRESHOLDS,
    DEFAULT_THRESHOLD,
    Policy,
    PolicyName,
    format_region_thresholds,
    parse_region_thresholds,
)

_LIMITS = ImageLimits()
_VIDEO_LIMITS = VideoLimits()
VIDEO_FETCH_TIMEOUTS: Final = FetchTimeouts(total=120.0)
"""A video URL may take longer than an image's to arrive: 100 MiB in 120 s is 7 Mbit/s."""
DEFAULT_RESULT_TTL_S: Final = 24 * 3600.0
"""How long finished jobs are kept (``NSFWD_RESULT_TTL_S``, and a bare job store's)."""
DEFAULT_MAX_ATTEMPTS: Final = 3
"""Claims before an abandoned job is failed (``NSFWD_MAX_ATTEMPTS``, and a bare job store's)."""
WEBHOOK_SECRET_PREFIX = "whsec_"
MIN_STATIC_KEY_CHARS: Final = 16
"""Shortest static API key accepted: shorter ones are within reach of guessing."""
_SECRET_HINT = (
    'generate one with: python -c "import base64, secrets; '
    "print('whsec_' + base64.b64encode(secrets.token_bytes(32)).decode())\""
)


def check_webhook_secret(secret: str) -> bytes:
    """The key bytes of a Standard Webhooks secret (``whsec_`` + base64); ValueError says what
    is wrong with it."""
    encoded = secret.strip().removeprefix(WEBHOOK_SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError(f"the webhook secret is not whsec_ + base64; {_SECRET_HINT}") from None
    if len(key) < 16:
        raise ValueError(
            f"the webhook secret holds {len(key)} bytes; use at least 24 random bytes "
            f"(Standard Webhooks asks for 24 to 64); {_SECRET_HINT}"
        )
    return key


def _portable_model(text: str) -> str:
    """``[NAME=]ID_OR_DIR`` with a folder that exists here made absolute."""
    spec = ModelSpec.parse(text)
    if not Path(spec.source).exists():
        return text
    source = str(Path(spec.source).resolve())
    return f"{spec.name}={source}" if spec.name else source


class Settings(BaseSettings):
    """Everything nsfwd can be told through ``NSFWD_*`` variables, and why each exists."""

    model_config = SettingsConfigDict(env_prefix="NSFWD_", protected_namespaces=())

    # --- Which models, and how they run ----------------------------------------------------------

    model: str = Field(
        DEFAULT_MODEL,
        description="Hub id or local folder of the classifier, or 'open-nsfw' (built in, no Hub "
        "needed); a folder keeps offline machines working (prepare it with `nsfwd download`). "
        "NAME=ID_OR_DIR serves it under NAME. Left unset (and models too), `nsfwd serve` "
        "serves Freepik/nsfw_image_detector and open-nsfw, or open-nsfw alone when the former "
        "cannot be had (no Hub, not in the cache).",
    )
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="More models for `nsfwd serve`, comma-separated, each NAME=ID_OR_DIR or "
        "ID_OR_DIR (named then by its Hub id, folder or 'open-nsfw'), served after model when "
        "that is set; each runs on its own batcher, and requests pick one by name. The first "
        "served is the default (Eachlabs' nsfw-image-detection).",
    )
    revision: str | None = Field(
        None, description="Hub revision (branch, tag or commit) to pin, for reproducible verdicts."
    )
    served_model_name: str | None = Field(
        None,
        description="The name clients put in config.model for the first model, when it has "
        "no NAME=; defaults to the Hub id, so clients "
        "written for Prodia keep sending 'Freepik/nsfw_image_detector' whatever folder is loaded.",
    )
    device: str | None = Field(
        None, description="torch device ('cpu', 'cuda', 'cuda:1'); auto-detected when unset."
    )
    dtype: str | None = Field(
        None,
        description="float32 (exact), bfloat16 or float16; when unset, bf16 on a GPU; on a CPU, "
        "the precision the start-up measurement found fastest on this machine within the "
        "agreement bound (runtime), or, with no choice to make, fp32 (bf16 where the CPU has "
        "native bf16). Alone it keeps the torch runtime: float32 is the exact mode.",
    )
    runtime: Literal["torch", "openvino"] | None = Field(
        None,
        description="torch or openvino (OpenVINO's CPU plugin, `pip install 'nsfwd[openvino]'`). "
        "Unset on a CPU: at the first start on a machine each runtime and precision "
        "classifies the parity photographs beside the exact mode, and the fastest that agrees "
        "with it (max |dp| 3e-3, no moderate decision changed) is chosen and kept in "
        "data_dir for later starts; torch on a GPU.",
    )
    quantize: Literal["int8"] | None = Field(
        None,
        description="'int8': the fast CPU mode, static int8 on the OpenVINO runtime (NNCF's "
        "post-training quantisation, calibrated on calibration_dir or photo-like images); "
        "results differ slightly from the exact fp32 ones (agreement in BENCHMARKS.md).",
    )
    calibration_dir: Path | None = Field(
        None,
        description="Folder of images like the ones you serve, to calibrate int8 on (the "
        "first calibration_images found); unset: photo-like JPEGs made on the spot. The "
        "calibrated model is kept in data_dir; a changed folder is calibrated anew.",
    )
    calibration_images: int = Field(
        DEFAULT_CALIBRATION_IMAGES,
        ge=1,
        description="Images int8 is calibrated on; each costs one float32 forward pass, once.",
    )
    compile: Literal[
        "off", "on", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"
    ] = Field(
        "off",
        description="torch.compile the network for fixed batch sizes (powers of two up to "
        "max_batch_size; batches are padded up to one): 'on' uses CUDA graphs on a GPU "
        "(mode reduce-overhead) and inductor's default mode elsewhere; or name a torch.compile "
        "mode. Off by default: compiling makes the first start take minutes; later starts "
        "load the graphs from compile_cache_dir.",
    )
    compile_cache_dir: Path | None = Field(
        None,
        description="Folder for compiled graphs (inductor's FX graph and AOTAutograd caches), "
        "kept across restarts; unset: ~/.cache/nsfwd/torch-compile. Keep it on a persistent "
        "volume, or every start compiles from scratch.",
    )

    # --- Verdicts --------------------------------------------------------------------------------

    policy: PolicyName = Field(
        DEFAULT_POLICY,
        description="The policy the served model's verdicts follow (Eachlabs' output nsfw/normal) "
        "and `nsfwd classify` applies by default: strict, moderate or lenient.",
    )
    threshold: float = Field(
        DEFAULT_THRESHOLD,
        ge=0.0,
        le=1.0,
        description="An image is flagged when the policy's score is above this; `nsfwd "
        "calibrate` chooses one from labelled images. Prodia's labels stay raw either way.",
    )
    region_thresholds: str = Field(
        format_region_thresholds(DEFAULT_REGION_THRESHOLDS),
        description="Region labels that flag an image, each over its own threshold, as "
        "LABEL=T,LABEL=T (empty: regions never flag); applies to a detector's regions, alone or "
        "beside a classifier's score (either flags). Default: NudeNet's exposed explicit "
        "classes over 0.5.",
    )

    @field_validator("region_thresholds")
    @classmethod
    def _check_region_thresholds(cls, value: str) -> str:
        parse_region_thresholds(value)
        return value

    # --- Serving: where, and who may call --------------------------------------------------------

    host: str = Field("127.0.0.1", description="Address to bind; loopback unless keys are set.")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind.")
    http_workers: int = Field(
        1,
        ge=1,
        description="HTTP worker processes. Above 1, that many processes parse requests (one "
        "Python process caps the request rate well below a GPU's; BENCHMARKS.md) "
        "and forward images to one inference process that owns the model and batches for all "
        "of them.",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated static API keys (Bearer tokens for Prodia, X-API-Key for "
        "Eachlabs), each of at least 16 characters. With none, and no key made with `nsfwd "
        "keys create`, the server refuses to bind beyond loopback.",
    )
    admin_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated static API keys that may also administer the banks of "
        "known images (/v1/banks); they are accepted everywhere api_keys are. Keys made with "
        "`nsfwd keys create --admin` have the same right.",
    )
    validate_allow_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated CIDRs whose callers may use POST /v1/validate (pict-rs' "
        "external validation, which sends no key of its own) without a key; from anywhere "
        "else the route takes a key, in its query (?key=) or an Authorization header.",
    )

    # --- The engine: batching, admission, decoding -----------------------------------------------

    max_batch_size: int | None = Field(
        None,
        ge=1,
        description="Most images the engine sends through the model at once; by default 32 on "
        "a GPU and 2 on a CPU, where larger batches are slower per image.",
    )
    batch_wait_ms: float = Field(
        2.0,
        ge=0,
        description="How long a batch that is not full may wait for more requests; a little "
        "latency buys bigger batches under load.",
    )
    max_queue: int = Field(
        64,
        ge=1,
        description="Pictures waiting for the model (an image holds one per frame, page and "
        "colours judged) before new requests get 429 with Retry-After, "
        "so clients back off instead of timing out.",
    )
    decode_workers: int | None = Field(
        None,
        ge=1,
        description="Threads decoding and preprocessing uploads; defaults to the CPU count.",
    )
    decode_timeout_s: float = Field(
        DECODE_TIMEOUT_S,
        gt=0,
        description="How long decoding one image may run before it is refused as too costly "
        "(400); its thread is written off so that it holds no slot.",
    )

    # --- Banks of known images and remembered verdicts --------------------------------------------

    bank_refresh_s: float = Field(
        REFRESH_S,
        gt=0,
        description="How often, at most, each server process asks the store whether the banks "
        "changed; a change made through this process's /v1/banks applies at once.",
    )
    verdict_cache_entries: int = Field(
        DEFAULT_ENTRIES,
        ge=0,
        description="Verdicts remembered by content, model, policy and banks' revision, so the "
        "same bytes twice are judged once (0: none). An entry is a few hundred bytes.",
    )

    # --- What an image may be --------------------------------------------------------------------

    max_image_bytes: int = Field(_LIMITS.max_bytes, ge=1, description="Largest accepted image.")
    min_image_side: int = Field(
        _LIMITS.min_side, ge=1, description="Smallest accepted width or height."
    )
    max_image_side: int = Field(
        _LIMITS.max_side, ge=1, description="Largest accepted width or height."
    )

    # --- What a video may be, and how it is judged ----------------------------------------------

    max_video_bytes: int = Field(
        _VIDEO_LIMITS.max_bytes,
        ge=1,
        description="Largest accepted video, uploaded (Prodia async jobs) or by URL (Eachlabs' "
        "input.video). POST /v2/job takes videos within max_image_bytes.",
    )
    max_video_seconds: float = Field(
        _VIDEO_LIMITS.max_seconds,
        gt=0,
        description="Longest accepted video, by its frames' timestamps and by its header; a "
        "longer one is refused (400) before a frame is decoded.",
    )
    video_interval: float = Field(
        DEFAULT_INTERVAL,
        gt=0,
        description="Seconds between the frames of a video that are judged (the first and the "
        "last frame always are); a key's own or a request's interval overrides it.",
    )
    video_max_frames: int = Field(
        DEFAULT_MAX_FRAMES,
        ge=1,
        description="Most frames of one video judged: a longer video gets this many, spread "
        "evenly. Requests may ask for fewer, never more: it bounds what one video costs.",
    )
    video_min_frames: int = Field(
        DEFAULT_MIN_FRAMES,
        ge=1,
        description="Consecutive flagged samples that make a flagged segment of a video (the "
        "first or last frame alone also does): one false positive per frame must not flag a "
        "whole video (README, Video, has the arithmetic).",
    )

    # --- Request bodies --------------------------------------------------------------------------

    max_uploads: int = Field(
        32,
        ge=1,
        description="Request bodies each HTTP process reads at once; one more gets 503 with "
        "Retry-After. Bounds the memory slow or many uploads can hold (at most this many "
        "bodies of max_image_bytes, or of max_video_bytes on POST /v2/job/async).",
    )
    body_timeout_s: float = Field(
        60.0,
        gt=0,
        description="Seconds a request body may take to arrive in full, counted from its first "
        "read; a slower one gets 408 and its connection is closed (a slow-body client cannot "
        "hold an upload slot for long). 10 MB in 60 s needs about 1.4 Mbit/s.",
    )

    # --- Connections (uvicorn) -------------------------------------------------------------------

    max_connections: int = Field(
        1000,
        ge=1,
        description="Connections and requests each HTTP process serves at once (uvicorn's "
        "limit_concurrency); past it, 503. Bounds the descriptors and memory that clients who "
        "never read their answers can hold.",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Seconds a client has to send a request's headers, from its connection or "
        "its first byte; then the connection is closed (uvicorn has no such limit itself).",
    )
    keep_alive_s: float = Field(
        5.0,
        gt=0,
        description="Seconds an idle keep-alive connection is kept open between requests.",
    )

    # --- Fetching image URLs ---------------------------------------------------------------------

    fetch_allow_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated CIDRs that image URLs may reach although they are private, "
        "loopback or otherwise non-public (for intranet image stores and tests); everything else "
        "non-public is refused to stop server-side request forgery. Webhooks do not get these "
        "networks: see webhook_allow_networks.",
    )
    fetch_allow_http: bool = Field(
        False,
        description="Allow plain http image URLs and webhooks; off by default because anyone on "
        "the path can read or swap an unencrypted image.",
    )
    dns_workers: int = Field(
        DEFAULT_SIZES[DNS], ge=1, description="Threads resolving the host names of image URLs."
    )
    dns_key_share: int | None = Field(
        None,
        ge=1,
        description="Host-name lookups one API key may have running at once (its share of "
        "dns_workers); its others wait their turn without taking a thread, so one key's slow "
        "names do not stall fetching for everyone. Unset: a quarter of dns_workers (at least 1).",
    )

    # --- The job store and its workers -----------------------------------------------------------

    data_dir: Path = Field(
        Path("data"),
        description="Folder for the job store's SQLite file (nsfwd.db), the models converted for "
        "OpenVINO (openvino/) and the start-up measurement's choices (runtime-choices.json), "
        "created on start; keep it on a persistent volume so queued jobs and results survive "
        "restarts and a restart skips the conversions and the measurement.",
    )
    database_url: str | None = Field(
        None,
        description="PostgreSQL URL (postgresql://user:password@host/db) for the job store "
        "instead of SQLite, so several replicas share one queue; unset: SQLite in data_dir.",
    )
    lease_s: float = Field(
        30.0,
        gt=0,
        description="How long a worker holds a job without renewing its lease; after a crash, "
        "its jobs are taken over once this runs out. Renewed every third of it.",
    )
    workers: int | None = Field(
        None,
        ge=1,
        description="Background jobs each replica runs at once; by default twice the engine's "
        "batch size (at most half of max_queue), enough to keep batches full while leaving "
        "room in the queue for synchronous requests.",
    )
    max_attempts: int = Field(
        DEFAULT_MAX_ATTEMPTS,
        ge=1,
        description="Times a job may be started before one that keeps dying with its server "
        "(say, an image that crashes it) is failed with a message instead of retried.",
    )
    result_ttl_s: float = Field(
        DEFAULT_RESULT_TTL_S,
        gt=0,
        description="How long finished jobs, their uploads and results are kept before they are "
        "purged (an expired id answers 404).",
    )
    max_async_queued: int = Field(
        1000,
        ge=1,
        description="Background jobs waiting or running, across replicas, before new "
        "submissions get 429 with Retry-After; bounds the queue's storage and latency.",
    )
    max_stored_upload_bytes: int = Field(
        2 * 1024**3,
        ge=1,
        description="Bytes of uploaded images the job store may hold, across replicas: "
        "unfinished async jobs, and finished v2 jobs (whose image is handed back) until they "
        "expire; v1 uploads are dropped once classified. Past it, submissions get 503 with "
        "Retry-After. Raise it, with the disk, for heavy v2 async use.",
    )

    # --- Each key's share ------------------------------------------------------------------------

    key_creates_per_minute: int = Field(
        100,
        ge=1,
        description="Eachlabs predictions a static key (NSFWD_API_KEYS) may create per minute "
        "before 429 with Retry-After (Eachlabs' own limit); keys from `nsfwd keys create` carry "
        "their own, defaulting to this.",
    )
    key_max_in_flight: int = Field(
        10,
        ge=1,
        description="Eachlabs predictions a static key may have waiting or running at once, "
        "across replicas, before 429 (Eachlabs' limit); `nsfwd keys` keys carry their own.",
    )
    key_max_requests: int | None = Field(
        None,
        ge=1,
        description="Requests (POST /v2/job, POST /v2/job/async while its upload is read and "
        "checked, POST /v1/prediction/ and POST /v1/moderations) one key may have in progress "
        "at once in each HTTP process, its fair share: past it, a key gets 429 with "
        "Retry-After once the process has half of max_queue (or of max_uploads, if smaller) "
        "requests in progress (below that it may use what nobody else is using), so one key "
        "cannot fill the engine's queue or every upload slot. OpenAI moderation requests count "
        "one per image, and Eachlabs creates one each. Unset: an eighth of max_queue (at "
        "least 1).",
    )
    key_max_reads: int = Field(
        16,
        ge=1,
        description="GET requests (job states, results, stored images) one key may have in "
        "progress at once in each HTTP process; one more gets 429 with Retry-After, so that "
        "clients that never read their answers cannot hold the server's memory.",
    )
    auth_failures_per_minute: int = Field(
        10,
        ge=1,
        description="Wrong API keys one client address (an IPv6 /64) may present in a minute; "
        "past it every request from there gets 429 with Retry-After until the minute has "
        "passed, so keys cannot be guessed at speed.",
    )
    key_max_async_jobs: int = Field(
        100,
        ge=1,
        description="Prodia async jobs one key may have waiting or running, across replicas, "
        "before its submissions get 429 with Retry-After (a tenth of max_async_queued by "
        "default), so one key cannot fill the async queue.",
    )

    # --- Webhooks --------------------------------------------------------------------------------

    webhook_secret: SecretStr | None = Field(
        None,
        description="Standard Webhooks signing secret (whsec_ + base64 of 24 to 64 random bytes) "
        "that receivers verify deliveries with. Unset: generated once into data_dir/"
        "webhook_secret with SQLite; with NSFWD_DATABASE_URL set it, as every replica must sign "
        "alike (webhook_url is refused with 400 until it is set).",
    )
    webhook_allow_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated CIDRs that webhook URLs may reach although they are "
        "non-public (an intranet receiver, tests); separate from fetch_allow_networks, so that "
        "opening an image store to fetching does not let any client make the server POST there.",
    )
    webhook_retry_delays: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [5.0, 30.0, 120.0, 600.0, 1800.0, 7200.0, 21600.0],
        description="Seconds to wait before each retry of a webhook the receiver did not take "
        "(non-2xx, timeout, network error), comma-separated; after the last one the delivery "
        "is given up. The default retries 7 times over about 8.7 hours.",
    )
    webhook_timeout_s: float = Field(
        30.0,
        gt=0,
        description="How long a webhook receiver has to answer (Eachlabs gives 30 s) before the "
        "attempt counts as failed and is retried.",
    )
    webhook_key_concurrency: int = Field(
        4,
        ge=1,
        description="Webhook deliveries of one key's predictions in progress at once, across "
        "replicas; deliveries are claimed least-busy key first, so one key's backlog to a slow "
        "receiver does not delay another key's.",
    )
    webhook_workers: int = Field(
        DEFAULT_SIZES[WEBHOOKS],
        ge=1,
        description="Threads resolving webhook receivers' host names.",
    )

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_switch(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip().lower()
            return {"1": "on", "true": "on", "yes": "on", "0": "off", "false": "off", "no": "off",
                    "": "off"}.get(value, value)  # fmt: skip
        return value

    @field_validator("models", "api_keys", "admin_keys", "webhook_retry_delays", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("api_keys", "admin_keys")
    @classmethod
    def _long_enough(cls, keys: list[str]) -> list[str]:
        short = [key for key in keys if len(key) < MIN_STATIC_KEY_CHARS]
        if short:
            raise ValueError(
                f"{len(short)} of the static keys {'is' if len(short) == 1 else 'are'} "
                f"shorter than {MIN_STATIC_KEY_CHARS} characters, short enough to guess; use "
                "long random keys, e.g. `python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'`, or `nsfwd keys create`"
            )
        return keys

    @field_validator(
        "fetch_allow_networks", "webhook_allow_networks", "validate_allow_networks", mode="before"
    )
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if isinstance(value, str | list | tuple):
            return [str(network) for network in parse_networks(value)]
        return value

    @field_validator("webhook_retry_delays")
    @classmethod
    def _check_delays(cls, value: list[float]) -> list[float]:
        if any(not 0 <= delay < float("inf") for delay in value):
            raise ValueError(f"webhook retry delays must be finite seconds >= 0, got {value}")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _check_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_webhook_secret(value.get_secret_value())
        return value

    def portable(self) -> Settings:
        """These settings with their folders made absolute, for processes that run in other
        folders (Ray Serve's replicas, Ray Data's actors): the data directory, so they share
        its OpenVINO models and the start-up measurement's choice; each model that is a folder
        here (``NAME=`` kept); the calibration and compile cache folders."""
        update: dict[str, Any] = {
            "data_dir": Path(self.data_dir).expanduser().resolve(),
            "models": [_portable_model(text) for text in self.models],
        }
        if "model" in self.model_fields_set:
            update["model"] = _portable_model(self.model)
        for name in ("calibration_dir", "compile_cache_dir"):
            folder = getattr(self, name)
            if folder is not None:
                update[name] = Path(folder).expanduser().resolve()
        return self.model_copy(update=update)

    @model_validator(mode="after")
    def _check_video_options(self) -> Settings:
        self.video_options  # noqa: B018  (raises ValueError for min_frames over max_frames)
        return self

    @property
    def model_specs(self) -> list[ModelSpec]:
        """The models ``nsfwd serve`` was told to serve: ``model`` when it was set (by
        ``--model`` or ``NSFWD_MODEL``), then ``models``; empty when neither was set, which
        leaves the choice to the server (:func:`nsfwd.engine.build.load_served_classifiers`).
        ``served_model_name`` names the first when it has no ``NAME=``. ValueError for a
        malformed entry."""
        texts = ([self.model] if "model" in self.model_fields_set else []) + self.models
        specs = [ModelSpec.parse(text) for text in texts]
        if specs and specs[0].name is None and self.served_model_name:
            specs[0] = ModelSpec(specs[0].source, self.served_model_name)
        return specs

    @property
    def image_limits(self) -> ImageLimits:
        """The image intake limits these settings describe."""
        return ImageLimits(
            max_bytes=self.max_image_bytes,
            min_side=self.min_image_side,
            max_side=self.max_image_side,
            max_pixels=self.max_image_side * self.max_image_side,
            max_animation_pixels=ANIMATION_STILLS * self.max_image_side * self.max_image_side,
        )

    @property
    def video_limits(self) -> VideoLimits:
        """The video intake limits these settings describe."""
        return VideoLimits(max_bytes=self.max_video_bytes, max_seconds=self.max_video_seconds)

    @property
    def video_options(self) -> VideoOptions:
        """How the server samples and judges a video unless a key or request says otherwise.
        ValueError when ``video_min_frames`` is above ``video_max_frames``."""
        return VideoOptions(
            interval=self.video_interval,
            max_frames=self.video_max_frames,
            min_frames=self.video_min_frames,
        )

    @property
    def key_requests_limit(self) -> int:
        """Requests one key may have in progress per HTTP process
        (``key_max_requests``, or an eighth of ``max_queue``)."""
        return self.key_max_requests or max(1, self.max_queue // 8)

    @property
    def key_requests_busy_at(self) -> int:
        """Requests in progress in a process from which a key past its share is refused: half
        of ``max_queue`` or of ``max_uploads``, whichever is smaller (so one key borrowing what
        nobody uses never holds every upload slot), and never below 2."""
        return max(2, min(self.max_queue, self.max_uploads) // 2)

    @property
    def dns_key_limit(self) -> int:
        """Lookups one key may have running at once (``dns_key_share``, or a quarter of
        ``dns_workers``)."""
        return self.dns_key_share or max(1, self.dns_workers // 4)

    @property
    def verdict_policy(self) -> Policy:
        """The policy, threshold and region thresholds the server's verdicts follow."""
        return Policy(self.policy, self.threshold, parse_region_thresholds(self.region_thresholds))

    @property
    def fetch_policy(self) -> FetchPolicy:
        """How image URLs may be fetched under these settings."""
        return FetchPolicy(
            allow_networks=self.fetch_allow_networks,
            allow_http=self.fetch_allow_http,
            max_bytes=self.max_image_bytes,
        )

    @property
    def video_fetch_policy(self) -> FetchPolicy:
        """How video URLs (Eachlabs' input.video) may be fetched: as image URLs, up to
        ``max_video_bytes``."""
        return replace(
            self.fetch_policy, max_bytes=self.max_video_bytes, timeouts=VIDEO_FETCH_TIMEOUTS
        )

    @property
    def webhook_policy(self) -> FetchPolicy:
        """Where webhooks may be sent under these settings: their own allowed networks, and
        plain http when image URLs may use it."""
        return FetchPolicy(
            allow_networks=self.webhook_allow_networks,
            allow_setting=WEBHOOK_ALLOW_SETTING,
            allow_http=self.fetch_allow_http,
            max_bytes=self.max_image_bytes,
            resolver=webhook_resolver,
        )
