"""Settings from the environment (prefix ``NSFWD_``); command-line options override them."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from nsfwd.images import ImageLimits
from nsfwd.models import DEFAULT_MODEL


class Settings(BaseSettings):
    """Everything nsfwd can be told through ``NSFWD_*`` variables, and why each exists."""

    model_config = SettingsConfigDict(env_prefix="NSFWD_", protected_namespaces=())

    model: str = Field(
        DEFAULT_MODEL,
        description="Hub id or local folder of the classifier; a folder keeps offline machines "
        "working (prepare it with `nsfwd download`).",
    )
    revision: str | None = Field(
        None, description="Hub revision (branch, tag or commit) to pin, for reproducible verdicts."
    )
    served_model_name: str | None = Field(
        None,
        description="The name clients put in config.model; defaults to the Hub id, so clients "
        "written for Prodia keep sending 'Freepik/nsfw_image_detector' whatever folder is loaded.",
    )
    device: str | None = Field(
        None, description="torch device ('cpu', 'cuda', 'cuda:1'); auto-detected when unset."
    )
    dtype: str | None = Field(
        None, description="float32, bfloat16 or float16; bf16 on GPU and fp32 on CPU when unset."
    )
    host: str = Field("127.0.0.1", description="Address to bind; loopback unless keys are set.")
    port: int = Field(8000, description="Port to bind.")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated static API keys (Bearer tokens for Prodia, X-API-Key for "
        "Eachlabs). With none, the server refuses to bind beyond loopback.",
    )
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
        description="Images waiting for the model before new requests get 429 with Retry-After, "
        "so clients back off instead of timing out.",
    )
    decode_workers: int | None = Field(
        None, description="Threads decoding and preprocessing uploads; defaults to the CPU count."
    )
    max_image_bytes: int = Field(10 * 1024 * 1024, ge=1, description="Largest accepted image.")
    min_image_side: int = Field(128, ge=1, description="Smallest accepted width or height.")
    max_image_side: int = Field(2048, ge=1, description="Largest accepted width or height.")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @property
    def image_limits(self) -> ImageLimits:
        """The image intake limits these settings describe."""
        return ImageLimits(
            max_bytes=self.max_image_bytes,
            min_side=self.min_image_side,
            max_side=self.max_image_side,
            max_pixels=self.max_image_side * self.max_image_side,
        )
