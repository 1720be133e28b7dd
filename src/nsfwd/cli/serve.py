"""``nsfwd serve``: the HTTP server, in one process, with HTTP workers, or on Ray Serve."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from nsfwd.cli.options import (
    Commands,
    add_model_options,
    add_policy_options,
    positive,
    settings_for,
)

if TYPE_CHECKING:
    from nsfwd.serve.ray.options import RayServeOptions


def register(sub: Commands[argparse.ArgumentParser]) -> None:
    """Add ``serve`` and its options."""
    serve = sub.add_parser(
        "serve",
        help="start the HTTP server",
        description="Serve one or more models over HTTP: Prodia's job API, Eachlabs' prediction "
        "API and OpenAI's moderation API (images). Settings come from NSFWD_* environment "
        "variables; these options override them.",
    )
    add_model_options(serve, several=True)
    serve.add_argument(
        "--served-model-name",
        help="the name clients send for the first model when --model gives it no NAME= "
        "(default: its hub id)",
    )
    serve.add_argument("--host", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default: 8000)")
    _add_scale_options(serve)
    add_policy_options(serve, applies_to=" in Eachlabs' output (nsfw/normal)", regions=True)
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow binding beyond loopback without API keys (none in NSFWD_API_KEYS, none made "
        "with `nsfwd keys create`): anyone can call the API",
    )
    serve.set_defaults(run=run)


def _add_scale_options(serve: argparse.ArgumentParser) -> None:
    """``serve --http-workers``, ``--ray [ADDRESS]`` and how many model replicas it runs."""
    serve.add_argument(
        "--http-workers",
        type=positive,
        help="HTTP worker processes feeding one inference process that owns the model "
        "(default: 1, everything in one process); with --ray, ingress replicas",
    )
    serve.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="deploy on Ray Serve: without ADDRESS on a local Ray instance started (and stopped) "
        "with the server; `auto` joins the cluster in $RAY_ADDRESS or the one running here; "
        "ray://HOST:PORT through a Ray client. --host/--port set Serve's HTTP proxy, "
        "--http-workers its ingress replicas (needs `pip install 'nsfwd[serve]'`)",
    )
    serve.add_argument(
        "--replicas",
        type=positive,
        help="with --ray: model replicas (one GPU each where the cluster has GPUs; default 1)",
    )
    serve.add_argument(
        "--min-replicas",
        type=positive,
        help="with --ray and --max-replicas: autoscale the model replicas on their queue length",
    )
    serve.add_argument("--max-replicas", type=positive, help="with --ray: see --min-replicas")
    serve.add_argument(
        "--downscale-delay",
        type=float,
        metavar="SECONDS",
        help="with --min-replicas/--max-replicas: how long the queue must stay short before a "
        "model replica is let go (default: 60)",
    )


def run(args: argparse.Namespace) -> int:
    """Serve until stopped; returns the exit status."""
    from nsfwd.serve.server import run as serve

    return serve(
        settings_for(args), insecure_no_auth=args.insecure_no_auth, ray=_ray_serve_options(args)
    )


def _ray_serve_options(args: argparse.Namespace) -> RayServeOptions | None:
    """``--ray`` and the replica options, checked; None without ``--ray``."""
    autoscale = args.min_replicas is not None or args.max_replicas is not None
    if args.downscale_delay is not None and not autoscale:
        raise ValueError("--downscale-delay needs --min-replicas and --max-replicas")
    if args.ray is None:
        if autoscale or args.replicas is not None:
            raise ValueError("--replicas, --min-replicas and --max-replicas need --ray")
        return None
    if autoscale and args.replicas is not None:
        raise ValueError("give either --replicas or --min-replicas/--max-replicas, not both")
    from nsfwd.serve.ray.options import RayServeOptions, Scale

    if not autoscale:
        return RayServeOptions(address=args.ray or None, scale=Scale(args.replicas or 1))
    delay = {} if args.downscale_delay is None else {"downscale_delay_s": args.downscale_delay}
    scale = Scale(None, args.min_replicas, args.max_replicas, **delay)
    return RayServeOptions(address=args.ray or None, scale=scale)
