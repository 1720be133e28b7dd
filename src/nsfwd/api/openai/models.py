"""``GET /v1/models``: the models this server runs, in OpenAI's list shape.

``{"object": "list", "data": [{"id": NAME, "object": "model", "created": INT, "owned_by":
"nsfwd", "kind": "classifier" | "detector"}]}``, the default model first (``kind``, nsfwd's own
field: a detector answers with regions); ``id`` is what Prodia's ``config.model``, Eachlabs'
``model`` and OpenAI's ``model`` take. ``GET /v1/models/{id}`` is one of them (404 when it is
not served). Both ask for the same Bearer token as the other routes, as OpenAI's do.
"""

from __future__ import annotations

import time
from typing import Any, Final

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from nsfwd.api import openapi
from nsfwd.api.auth import KeyRing
from nsfwd.api.http.errors import ApiError
from nsfwd.api.openai.wire import OpenAIError, error_response, identify
from nsfwd.engine.served import ServedModels, model_kind, quoted
from nsfwd.models.names import not_loaded_hint

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
        return {
            "id": name,
            "object": "model",
            "created": self.created,
            "owned_by": OWNER,
            "kind": model_kind(self.models[name]),
        }

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


_LIST: Final = openapi.answer(
    "The served models, the default first",
    {
        openapi.JSON: {
            "schema": {
                "type": "object",
                "required": ["object", "data"],
                "properties": {
                    "object": {"type": "string", "enum": ["list"]},
                    "data": {"type": "array", "items": openapi.ref("Model")},
                },
            }
        }
    },
)


def create_router(models: ServedModels, keys: KeyRing) -> APIRouter:
    """The model routes, for the callers ``keys`` accept."""
    listing = ModelList(models, keys)
    router = APIRouter(tags=["openai"])
    router.add_api_route(
        ROUTE,
        listing.list,
        methods=["GET"],
        summary="The served models (OpenAI's shape)",
        openapi_extra=openapi.key("bearer"),
        responses=openapi.openai_answers(_LIST, ("401", "403", "429")),
        response_class=Response,
    )
    router.add_api_route(
        ROUTE + "/{model:path}",
        listing.get,
        methods=["GET"],
        summary="One served model",
        openapi_extra=openapi.key("bearer"),
        responses=openapi.openai_answers(
            openapi.answer("A served model", {openapi.JSON: {"schema": openapi.ref("Model")}}),
            ("401", "403", "404", "429"),
        ),
        response_class=Response,
    )
    return router
