"""``GET /v1/models``: the models this server runs, in OpenAI's list shape.

``{"object": "list", "data": [{"id": NAME, "object": "model", "created": INT, "owned_by":
"nsfwd"}]}``, the default model first; ``id`` is what Prodia's ``config.model``, Eachlabs'
``model`` and OpenAI's ``model`` take. ``GET /v1/models/{id}`` is one of them (404 when it is
not served). Both ask for the same Bearer token as the other routes, as OpenAI's do.
"""

from __future__ import annotations

import time
from typing import Any, Final

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from nsfwd.api.auth import KeyRing
from nsfwd.api.errors import ApiError
from nsfwd.api.openai_wire import OpenAIError, error_response, identify
from nsfwd.model_types import not_loaded_hint
from nsfwd.served_models import ServedModels, quoted

ROUTE: Final = "/v1/models"
OWNER: Final = "nsfwd"


class ModelList:
    """The model routes over a server's :class:`ServedModels`."""

    def __init__(self, models: ServedModels, keys: KeyRing) -> None:
        """List ``models`` to the callers ``keys`` accept."""
        self.models = models
        self.keys = keys
        self.created = int(time.time())
        """When this server started serving them: OpenAI's ``created``, seconds since 1970."""

    def _model(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self.created, "owned_by": OWNER}

    async def list(self, request: Request) -> Response:
        """Every served model, the default first."""
        try:
            await identify(request, self.keys)
        except ApiError as exc:
            return error_response(exc)
        data = [self._model(name) for name in self.models.names]
        return JSONResponse({"object": "list", "data": data})

    async def get(self, request: Request, model: str) -> Response:
        """One served model by name; 404 when this server does not run it."""
        try:
            await identify(request, self.keys)
            name = self.models.name_of(model)
            if name is None:
                raise OpenAIError(
                    f"the model {model[:200]!r} does not exist on this server, which runs "
                    f"{quoted(self.models.names)}.{not_loaded_hint(model)}",
                    status=404,
                    param="model",
                    code="model_not_found",
                )
        except ApiError as exc:
            return error_response(exc)
        return JSONResponse(self._model(name))


def create_router(models: ServedModels, keys: KeyRing) -> APIRouter:
    """The model routes, for the callers ``keys`` accept."""
    listing = ModelList(models, keys)
    router = APIRouter(tags=["openai"])
    router.add_api_route(
        ROUTE, listing.list, methods=["GET"], summary="The served models (OpenAI's shape)",
        response_class=Response,
    )  # fmt: skip
    router.add_api_route(
        ROUTE + "/{model:path}", listing.get, methods=["GET"], summary="One served model",
        response_class=Response,
    )  # fmt: skip
    return router
