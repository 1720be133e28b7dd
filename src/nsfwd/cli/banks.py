"""``nsfwd banks``: banks of known images in the job store (``NSFWD_DATA_DIR`` or
``NSFWD_DATABASE_URL``), the same ones ``/v1/banks`` administers. Running servers see a change
within ``NSFWD_BANK_REFRESH_S``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from nsfwd.cli.options import Commands, print_listing

if TYPE_CHECKING:
    from nsfwd.banks.pdq import PictureHash
    from nsfwd.jobs import Store
    from nsfwd.settings import Settings

_CATEGORY_HELP = (
    "the OpenAI moderation category a match stands for, e.g. sexual/minors (default: sexual)"
)


def register(sub: Commands[argparse.ArgumentParser]) -> None:
    """Add ``nsfwd banks`` and its actions."""
    banks = sub.add_parser(
        "banks",
        help="banks of known images: refused on sight, resized or re-encoded",
        description="Named banks of PDQ hashes of known images. Every upload on every surface "
        "is hashed (each picture judged) and checked against them before the model runs; a "
        "match within the bank's distance is flagged under every policy. Banks live in the job "
        "store; running servers see changes within NSFWD_BANK_REFRESH_S.",
    )
    action = banks.add_subparsers(dest="banks_command", required=True, metavar="ACTION")
    create = action.add_parser("create", help="create an empty bank")
    create.add_argument("name", metavar="NAME", help="letters, digits, '.', '_' or '-'")
    create.add_argument("--category", metavar="C", help=_CATEGORY_HELP)
    create.add_argument(
        "--distance",
        type=int,
        default=31,
        metavar="D",
        help="Hamming distance (of PDQ's 256 bits) within which a hash matches (default: 31)",
    )
    listing = action.add_parser("list", help="show every bank and its size")
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    add = action.add_parser("add", help="hash every picture of images into a bank")
    add.add_argument("name", metavar="NAME")
    add.add_argument("files", nargs="+", metavar="FILE", help="image files or folders")
    remove = action.add_parser("remove", help="remove hashes, or every picture of images")
    remove.add_argument("name", metavar="NAME")
    remove.add_argument("items", nargs="+", metavar="HASH_OR_FILE")
    importing = action.add_parser(
        "import", help="add hashes from ThreatExchange text (pdq <hex> lines, or its CSV)"
    )
    importing.add_argument("name", metavar="NAME")
    importing.add_argument("file", metavar="FILE", help="a file, or - for standard input")
    export = action.add_parser("export", help="print a bank as ThreatExchange text")
    export.add_argument("name", metavar="NAME")
    delete = action.add_parser("delete", help="delete a bank and its hashes")
    delete.add_argument("name", metavar="NAME")
    hashing = action.add_parser(
        "hash", help="print the PDQ hash of every picture of images (as `threatexchange hash`)"
    )
    hashing.add_argument("files", nargs="+", metavar="FILE")
    banks.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run one ``nsfwd banks`` action."""
    import asyncio

    from nsfwd.jobs import Store
    from nsfwd.jobs.banks import BankError
    from nsfwd.jobs.database import DatabaseUrlError
    from nsfwd.settings import Settings

    settings = Settings()
    if args.banks_command == "hash":
        return _print_hashes(args.files, settings)
    try:
        store = Store.from_settings(settings)
    except DatabaseUrlError as exc:
        print(f"nsfwd banks: {exc}", file=sys.stderr)
        return 2

    async def act() -> int:
        async with store:
            return await _act(store, settings, args)

    try:
        return asyncio.run(act())
    except BankError as exc:
        print(f"nsfwd banks {args.banks_command}: {exc}", file=sys.stderr)
        return 2


async def _act(store: Store, settings: Settings, args: argparse.Namespace) -> int:
    name: str = getattr(args, "name", "")
    if args.banks_command == "create":
        bank = await store.banks.create(name, category=args.category, distance=args.distance)
        print(f"created bank {bank.name!r}: matches within {bank.distance} bits stand for "
              f"{bank.category or 'sexual'}", file=sys.stderr)  # fmt: skip
        return 0
    if args.banks_command == "list":
        return await _list(store, args.json)
    if args.banks_command == "add":
        return await _add(store, settings, name, args.files)
    if args.banks_command == "remove":
        return await _remove(store, settings, name, args.items)
    if args.banks_command == "import":
        return await _import(store, name, args.file)
    if args.banks_command == "export":
        async for banked in store.banks.hashes(name):
            print(f"pdq {banked.hash.hex()}")
        return 0
    bank = await store.banks.delete(name)
    print(f"deleted bank {bank.name!r} and its {bank.size} hashes", file=sys.stderr)
    return 0


async def _list(store: Store, as_json: bool) -> int:
    from nsfwd.api.banks.routes import bank_json

    rows = [bank_json(bank) for bank in await store.banks.all()]
    header = ["NAME", "CATEGORY", "DISTANCE", "SIZE", "CREATED"]
    cells = [[row["name"], row["category"] or "sexual", str(row["distance"]), str(row["size"]),
              row["created_at"]] for row in rows]  # fmt: skip
    nothing = "no banks; create one with `nsfwd banks create NAME`"
    print_listing(rows, header, cells, as_json=as_json, nothing=nothing)
    return 0


def _hash_files(
    files: list[str], settings: Settings
) -> tuple[list[tuple[Path, list[PictureHash]]], int]:
    """Every picture's hash of each image under ``files``, and how many files failed (each
    said on standard error)."""
    from nsfwd.api.banks.routes import hash_image
    from nsfwd.intake import ImageError, find_images, read_image_file

    hashed: list[tuple[Path, list[PictureHash]]] = []
    failed = 0
    for path in find_images(files):
        try:
            hashed.append(
                (path, hash_image(read_image_file(path, settings.image_limits), settings))
            )
        except (ImageError, OSError) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            failed += 1
    return hashed, failed


def _print_hashes(files: list[str], settings: Settings) -> int:
    hashed, failed = _hash_files(files, settings)
    for path, hashes in hashed:
        for each in hashes:
            note = "" if each.usable else "  # too featureless to match on"
            print(f"pdq {each.hex}  {path} frame {each.frame} quality {each.quality}{note}")
    return 1 if failed else 0


async def _add(store: Store, settings: Settings, name: str, files: list[str]) -> int:
    await store.banks.get(name)  # a missing bank is said before any image is hashed
    hashed, failed = _hash_files(files, settings)
    added = flat = 0
    for path, hashes in hashed:
        usable = [(each.hash, each.quality) for each in hashes if each.usable]
        flat += len(hashes) - len(usable)
        if not usable:
            print(f"{path}: too featureless for PDQ (quality under 50); not added", file=sys.stderr)
            failed += 1
            continue
        added += await store.banks.add(name, usable, source=path.name)
    left_out = f"; {flat} featureless pictures left out" if flat else ""
    print(f"added {added} hashes from {len(hashed)} images to {name!r}{left_out}", file=sys.stderr)
    return 1 if failed else 0


async def _remove(store: Store, settings: Settings, name: str, items: list[str]) -> int:
    from nsfwd.banks.pdq import HashFormatError, parse_hash

    values: list[bytes] = []
    files: list[str] = []
    for item in items:
        try:
            values.append(parse_hash(item))
        except HashFormatError:
            files.append(item)
    hashed, failed = _hash_files(files, settings) if files else ([], 0)
    values += [each.hash for _, hashes in hashed for each in hashes]
    removed = await store.banks.remove(name, values)
    print(f"removed {removed} of {len(values)} hashes from {name!r}", file=sys.stderr)
    return 1 if failed else 0


async def _import(store: Store, name: str, file: str) -> int:
    from nsfwd.banks.signals import SignalFormatError, read_signals

    try:
        if file == "-":
            signals = read_signals(sys.stdin)
        else:
            with Path(file).open(encoding="utf-8") as lines:
                signals = read_signals(lines)
    except (OSError, UnicodeDecodeError, SignalFormatError) as exc:
        print(f"nsfwd banks import: {file}: {exc}; nothing was added", file=sys.stderr)
        return 2
    added = await store.banks.add(name, [(value, None) for value in signals.hashes], source=file)
    print(f"read {len(signals.hashes)} PDQ hashes, added {added} new ones to {name!r}"
          + (f"; skipped {signals.skipped} signals of other types" if signals.skipped else ""),
          file=sys.stderr)  # fmt: skip
    return 0
