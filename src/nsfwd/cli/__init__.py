"""The ``nsfwd`` command: one module per subcommand, each adding its own parser (``register``)
and running it (``run``); :func:`main` dispatches. Commands import what they run inside
``run``, so ``nsfwd keys`` and the parser itself load without torch."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from nsfwd import __version__
from nsfwd.cli import banks, bench, calibrate, censor, classify, download, keys, serve
from nsfwd.logs import configure_logging
from nsfwd.models.names import ModelNotAvailableError

COMMANDS = (classify, censor, download, serve, bench, keys, banks, calibrate)
"""The subcommands, in the order ``--help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="nsfwd",
        description="Self-hosted NSFW image moderation with Freepik's EVA-02 detector.",
    )
    parser.add_argument("--version", action="version", version=f"nsfwd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        status: int = args.run(args)
    except (ModelNotAvailableError, ValueError) as exc:  # a missing model, or options that clash
        print(f"nsfwd: {exc}", file=sys.stderr)
        return 2
    return status
