"""JSON request documents parsed as the API accepts them: standard JSON only."""

from __future__ import annotations

import json
from typing import Any


def loads(data: bytes | str) -> Any:
    """``data`` parsed, with ``NaN``, ``Infinity`` and ``-Infinity`` refused: Python's parser
    takes them, but they are not JSON, and no JSON encoder could echo them back.

    Raises ValueError (``json.JSONDecodeError``, ``UnicodeDecodeError``, a refused constant,
    an integer too long to convert) or RecursionError (nesting too deep), with Python's message.
    """
    return json.loads(data, parse_constant=_reject_constant)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")
