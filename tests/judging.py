"""Small helpers for tests that judge through an engine."""

from __future__ import annotations

from nsfwd.engine import ClassifyEngine
from nsfwd.verdict import Labels


async def labels_of(engine: ClassifyEngine, data: bytes) -> Labels:
    """The labels ``engine`` answers one encoded image with: its worst picture's under the
    default (moderate) policy."""
    return (await engine.judge(data)).labels
