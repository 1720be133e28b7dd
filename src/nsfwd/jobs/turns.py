"""Fair claiming: whose turn it is. Predictions and webhook deliveries are both claimed round
the API keys, least busy first, so that one key's backlog does not hold up another key's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, FromClause, Subquery, func, select


def turns(
    source: FromClause,
    *,
    key: ColumnElement[Any],
    row_id: ColumnElement[Any],
    order: ColumnElement[Any],
    busy: Sequence[ColumnElement[bool]],
    eligible: Sequence[ColumnElement[bool]],
) -> Subquery:
    """The ``eligible`` rows of ``source`` (``row_id``, ``order``) with their ``turn``: how
    many rows of their ``key`` are ``busy`` now, plus the row's place among its key's eligible
    rows by ``order``. Claiming in order of turn goes round the keys, least busy first."""
    in_progress = (
        select(key.label("key"), func.count().label("busy"))
        .select_from(source)
        .where(*busy)
        .group_by(key)
        .subquery()
    )
    place = func.row_number().over(partition_by=key, order_by=order)
    return (
        select(row_id, order, (place + func.coalesce(in_progress.c.busy, 0)).label("turn"))
        .select_from(source.outerjoin(in_progress, in_progress.c.key == key))
        .where(*eligible)
        .subquery()
    )
