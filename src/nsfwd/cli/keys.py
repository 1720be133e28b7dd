"""``nsfwd keys``: create, list and revoke API keys in the job store (no torch)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from nsfwd.cli.options import (
    Commands,
    add_policy_options,
    positive,
    positive_seconds,
    print_listing,
)

if TYPE_CHECKING:
    from nsfwd.jobs import ApiKey, Store
    from nsfwd.settings import Settings


def register(sub: Commands[argparse.ArgumentParser]) -> None:
    """Add ``keys`` and its actions."""
    keys = sub.add_parser(
        "keys",
        help="create, list and revoke API keys (for the Prodia and Eachlabs APIs)",
        description="Manage API keys kept in the job store (NSFWD_DATA_DIR or "
        "NSFWD_DATABASE_URL, as `nsfwd serve` uses). Only a hash of each key is stored: the key "
        "itself is printed once, by `create`. Running servers see changes at once.",
    )
    action = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = action.add_parser("create", help="create a key and print it (only this once)")
    create.add_argument("name", metavar="NAME", help="who or what the key is for")
    create.add_argument(
        "--creates-per-minute",
        type=positive,
        metavar="N",
        help="predictions it may create per minute (default: $NSFWD_KEY_CREATES_PER_MINUTE, 100)",
    )
    create.add_argument(
        "--max-in-flight",
        type=positive,
        metavar="N",
        help="predictions it may have waiting or running (default: $NSFWD_KEY_MAX_IN_FLIGHT, 10)",
    )
    add_policy_options(
        create,
        applies_to=" in this key's Eachlabs output (nsfw/normal)",
        default="the server's",
        regions=True,
    )
    create.add_argument(
        "--admin",
        action="store_true",
        help="the key may also administer the banks of known images (/v1/banks)",
    )
    create.add_argument(
        "--interval",
        type=positive_seconds,
        metavar="SECONDS",
        help="seconds between the judged frames of this key's videos (default: the server's)",
    )
    create.add_argument(
        "--min-frames",
        type=positive,
        metavar="N",
        help="flagged frames in a row that make a flagged segment of this key's videos "
        "(default: the server's)",
    )
    listing = action.add_parser("list", help="show every key (never the key itself)")
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    revoke = action.add_parser("revoke", help="revoke a key; it stops working at once")
    revoke.add_argument("key", metavar="ID_OR_PREFIX", help="the key's id or prefix, from `list`")
    keys.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Create, list or revoke a key in the job store."""
    import asyncio

    from nsfwd.jobs import Store
    from nsfwd.jobs.database import DatabaseUrlError
    from nsfwd.settings import Settings

    settings = Settings()
    try:
        store = Store.from_settings(settings)
    except DatabaseUrlError as exc:
        print(f"nsfwd keys: {exc}", file=sys.stderr)
        return 2

    async def run() -> int:
        async with store:
            if args.keys_command == "create":
                return await _create_key(store, settings, args)
            if args.keys_command == "list":
                return await _list_keys(store, args.json)
            return await _revoke_key(store, args.key)

    return asyncio.run(run())


async def _create_key(store: Store, settings: Settings, args: argparse.Namespace) -> int:
    try:
        plaintext, key = await store.keys.create(
            args.name,
            creates_per_minute=args.creates_per_minute or settings.key_creates_per_minute,
            max_in_flight=args.max_in_flight or settings.key_max_in_flight,
            policy=args.policy,
            threshold=args.threshold,
            region_thresholds=args.region_thresholds,
            admin=args.admin,
            video_interval=args.interval,
            video_min_frames=args.min_frames,
        )
    except ValueError as exc:
        print(f"nsfwd keys create: {exc}", file=sys.stderr)
        return 2
    print(plaintext)
    print(
        f"created key {key.id} ({key.name!r}, prefix {key.prefix}): "
        f"{key.creates_per_minute} creates a minute, {key.max_in_flight} in flight, "
        f"{_key_verdicts(key)}{', bank administration' if key.admin else ''}. It is shown "
        "only this once: store it now.",
        file=sys.stderr,
    )
    return 0


def _key_verdicts(key: ApiKey) -> str:
    """What decides the key's verdicts, in words."""
    regions = ""
    if key.region_thresholds is not None:
        regions = f", regions flagging at {key.region_thresholds or 'none'}"
    if key.policy is None and key.threshold is None:
        return "the server's policy and threshold" + regions
    policy = key.policy or "the server's policy"
    threshold = "the server's threshold" if key.threshold is None else f"{key.threshold:g}"
    return f"{policy} at {threshold}{regions}"


def _key_fields(key: ApiKey) -> dict[str, object]:
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "creates_per_minute": key.creates_per_minute,
        "max_in_flight": key.max_in_flight,
        "policy": key.policy,
        "threshold": key.threshold,
        "interval": key.video_interval,
        "min_frames": key.video_min_frames,
        "admin": key.admin,
        "created": key.created_at.isoformat(timespec="seconds"),
        "revoked": key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else None,
    }


async def _list_keys(store: Store, as_json: bool) -> int:
    keys = await store.keys.all()
    rows = [_key_fields(key) for key in keys]
    if as_json:  # and region thresholds, which the table leaves out (`null`: the server's)
        rows = [
            row | {"region_thresholds": key.region_thresholds}
            for row, key in zip(rows, keys, strict=True)
        ]
    header = ["ID", "NAME", "PREFIX", "CREATES/MIN", "IN FLIGHT", "POLICY", "THRESHOLD",
              "INTERVAL", "MIN FRAMES", "ADMIN", "CREATED", "REVOKED"]  # fmt: skip
    cells = [[_key_cell(name, v) for name, v in row.items()] for row in rows]
    nothing = "no keys; create one with `nsfwd keys create NAME`"
    table = print_listing(rows, header, cells, as_json=as_json, nothing=nothing)
    if table and any(row[name] is None for row in rows for name in _SERVERS):
        print(
            "-: the server's (NSFWD_POLICY, NSFWD_THRESHOLD, NSFWD_VIDEO_INTERVAL and "
            "NSFWD_VIDEO_MIN_FRAMES, or `nsfwd serve`'s options)",
            file=sys.stderr,
        )
    return 0


_SERVERS = ("policy", "threshold", "interval", "min_frames")
"""The fields a key may leave to the server's settings."""


def _key_cell(name: str, value: object) -> str:
    if value is None:
        return "-" if name in _SERVERS else ""
    if isinstance(value, bool):
        return "yes" if value else ""
    return f"{value:g}" if isinstance(value, float) else str(value)


async def _revoke_key(store: Store, id_or_prefix: str) -> int:
    from nsfwd.jobs import AmbiguousKeyError

    try:
        key = await store.keys.revoke(id_or_prefix)
    except AmbiguousKeyError as exc:
        print(f"nsfwd keys revoke: {exc}", file=sys.stderr)
        return 2
    if key is None:
        print(
            f"nsfwd keys revoke: no key has the id or prefix {id_or_prefix!r}; "
            "see `nsfwd keys list`",
            file=sys.stderr,
        )
        return 1
    assert key.revoked_at is not None
    print(f"revoked key {key.id} ({key.name!r}, prefix {key.prefix}) as of "
          f"{key.revoked_at.isoformat(timespec='seconds')}")  # fmt: skip
    return 0
