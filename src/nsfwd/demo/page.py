"""The demo page's routes: ``/`` (the page), ``/demo/static/`` (its script and style) and
``/demo/config.json`` (the policies, the caller's threshold and the default model)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles

from nsfwd.api.auth import AuthenticationError, KeyRing
from nsfwd.settings import Settings
from nsfwd.verdict import POLICIES, SAFE_LABELS

STATIC_DIR: Final = Path(__file__).parent / "static"
STATIC_ROUTE: Final = "/demo/static"
CONFIG_ROUTE: Final = "/demo/config.json"

CONTENT_SECURITY_POLICY: Final = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        # blob: for the preview of the chosen image, data: for the empty favicon
        "img-src 'self' blob: data:",
        "media-src 'self' blob:",  # the preview of the chosen video
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
"""Nothing but this server's own files: no inline script, no third party."""

PAGE_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; ``None`` for anything else."""
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def install(app: FastAPI, settings: Settings, keys: KeyRing, model: str) -> None:
    """Serve the demo page on ``app``: the page and its files to anyone (they hold no data),
    ``/demo/config.json`` only to the callers ``keys`` accept; ``model`` is the name the
    Prodia route answers to by default, for a server without ``GET /v1/models``."""

    async def page() -> Response:
        """The demo page."""
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    async def config(request: Request) -> Response:
        """What the page needs before its first job: the policies (the labels each counts as
        unsafe, and the safe labels for models without severity buckets), the caller's policy
        and threshold, the default model and the largest image and video (a video over the
        image limit goes to the async route). 401 without a valid token, so
        the page asks for one before the user picks an image."""
        try:
            caller = await keys.identify(
                bearer_token(request.headers.get("authorization")), request
            )
        except AuthenticationError as exc:
            return PlainTextResponse(
                f"{exc}: this server needs an API token ({exc.sources})\n",
                401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        policy = settings.verdict_policy
        if caller is not None:
            policy = policy.overridden(caller.policy, caller.threshold, caller.region_thresholds)
        document = {
            "model": model,
            "policy": policy.name,
            "threshold": policy.threshold,
            "policies": {name: list(labels) for name, labels in POLICIES.items()},
            "safe_labels": list(SAFE_LABELS),
            "max_image_bytes": settings.max_image_bytes,
            "max_video_bytes": settings.max_video_bytes,
        }
        return JSONResponse(document, headers={"Cache-Control": "no-store"})

    app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    app.add_api_route(CONFIG_ROUTE, config, methods=["GET"], include_in_schema=False)
    app.mount(STATIC_ROUTE, StaticFiles(directory=STATIC_DIR), name="demo-static")
