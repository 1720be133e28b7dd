"""The durable job store and the worker that runs what it holds.

:class:`Store` keeps predictions (Prodia async jobs, Eachlabs predictions), their uploaded
inputs, webhook deliveries and API keys in SQLite or PostgreSQL; :class:`Worker` claims queued
predictions under a lease, classifies them on the engine and records the outcome.
"""

from nsfwd.jobs.records import ApiKey, Delivery, Prediction, Upload
from nsfwd.jobs.store import (
    AmbiguousKeyError,
    CapacityError,
    Limits,
    PayloadBuilder,
    Store,
    default_webhook_payload,
)

__all__ = [
    "AmbiguousKeyError",
    "ApiKey",
    "CapacityError",
    "Delivery",
    "Limits",
    "PayloadBuilder",
    "Prediction",
    "Store",
    "Upload",
    "default_webhook_payload",
]
