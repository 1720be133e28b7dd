"""The durable job store and the workers that run what it holds.

:class:`Store` keeps predictions (Prodia async jobs, Eachlabs predictions) with their uploaded
inputs (``store.predictions``), webhook deliveries (``store.deliveries``) and API keys
(``store.keys``) in SQLite or PostgreSQL; :class:`~nsfwd.jobs.worker.Worker` claims queued
predictions under a lease, classifies them on the engine and records the outcome.
"""

from nsfwd.jobs.deliveries import PayloadBuilder, default_webhook_payload
from nsfwd.jobs.keys import AmbiguousKeyError
from nsfwd.jobs.predictions import CapacityError, Limits
from nsfwd.jobs.records import ApiKey, Delivery, Prediction, Upload
from nsfwd.jobs.store import Store

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
