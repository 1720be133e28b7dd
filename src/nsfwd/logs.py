"""Logging set-up shared by the command line and the processes ``nsfwd serve`` starts."""

from __future__ import annotations

import logging


def configure_logging() -> None:
    """Timestamped INFO lines on stderr; httpx's line per request is kept quiet."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request drowns the rest
