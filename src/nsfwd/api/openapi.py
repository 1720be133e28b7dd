"""The OpenAPI document at ``/openapi.json``: every route's answers as the wire protocols fix them.

FastAPI derives request bodies and parameters from the routes, but the routes answer with plain
``Response`` objects in the formats Prodia and Eachlabs use, so it knows nothing of what they
send back. :func:`install_openapi` completes its document with the statuses, media types and
bodies of each answer (a Prodia job, an Eachlabs error, plain text for 401 and the edge's 431),
the two ways of presenting a key, and drops the 422 FastAPI lists for path parameters, which
no route ever answers. tests/test_campaign_schema.py runs schemathesis against the result.
"""

from __future__ import annotations

from typing import Any, Final

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

JSON: Final = "application/json"
FORM: Final = "multipart/form-data"
TEXT: Final = "text/plain"

_NUMBER_MAP: Final = {"type": "object", "additionalProperties": {"type": "number"}}

SCHEMAS: Final[dict[str, dict[str, Any]]] = {
    "ProdiaJob": {
        "type": "object",
        "description": "A Prodia job: completed or processing with its labels, or failed with "
        "its error.",
        "required": ["id", "created_at", "updated_at", "state", "metrics"],
        "properties": {
            "type": {"type": "string"},
            "id": {"type": "string"},
            "created_at": {"type": "string"},
            "updated_at": {"type": "string"},
            "state": {
                "type": "object",
                "required": ["current"],
                "properties": {
                    "current": {
                        "type": "string",
                        "enum": ["completed", "processing", "processed", "failed"],
                    }
                },
            },
            "config": {
                "type": "object",
                "properties": {"labels": _NUMBER_MAP},
            },
            "metrics": {
                "type": "object",
                "required": ["elapsed"],
                "properties": {"elapsed": {"type": "number"}},
            },
            "error": {"type": "string"},
        },
    },
    "Labels": {**_NUMBER_MAP, "description": "Each label's probability."},
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "EachlabsError": {
        "type": "object",
        "required": ["status", "message", "details"],
        "properties": {
            "status": {"type": "string", "enum": ["error"]},
            "message": {"type": "string"},
            "details": {"type": "string"},
        },
    },
    "EachlabsCreated": {
        "type": "object",
        "required": ["status", "message", "predictionID"],
        "properties": {
            "status": {"type": "string", "enum": ["success"]},
            "message": {"type": "string"},
            "predictionID": {"type": "string"},
        },
    },
    "EachlabsPrediction": {
        "type": "object",
        "required": ["status", "predictionID", "output", "metrics"],
        "properties": {
            "status": {"type": "string", "enum": ["processing", "success", "error"]},
            "predictionID": {"type": "string"},
            "output": {"type": ["string", "null"]},
            "metrics": {
                "type": "object",
                "properties": {"predict_time": {"type": ["number", "null"]}},
            },
            "labels": {"anyOf": [_NUMBER_MAP, {"type": "null"}]},
            "message": {"type": "string"},
            "details": {"type": "string"},
        },
    },
    "OpenAIError": {
        "type": "object",
        "description": "OpenAI's error body (a refusal at the edge carries the message alone).",
        "required": ["error"],
        "properties": {
            "error": {
                "anyOf": [
                    {
                        "type": "object",
                        "required": ["message", "type"],
                        "properties": {
                            "message": {"type": "string"},
                            "type": {"type": "string"},
                            "param": {"type": ["string", "null"]},
                            "code": {"type": ["string", "null"]},
                        },
                    },
                    {"type": "string"},
                ]
            }
        },
    },
    "Moderation": {
        "type": "object",
        "description": "OpenAI's moderation answer: one result per image input.",
        "required": ["id", "model", "results"],
        "properties": {
            "id": {"type": "string"},
            "model": {"type": "string"},
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["flagged", "categories", "category_scores"],
                    "properties": {
                        "flagged": {"type": "boolean"},
                        "categories": {
                            "type": "object",
                            "additionalProperties": {"type": "boolean"},
                        },
                        "category_scores": _NUMBER_MAP,
                        "category_applied_input_types": {
                            "type": "object",
                            "additionalProperties": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                },
            },
        },
    },
    "Model": {
        "type": "object",
        "required": ["id", "object", "created", "owned_by"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["model"]},
            "created": {"type": "integer"},
            "owned_by": {"type": "string"},
        },
    },
}
"""Component schemas the answers refer to."""

SECURITY_SCHEMES: Final = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "Prodia routes"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
               "description": "Eachlabs routes"},
}  # fmt: skip


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_RETRY_AFTER: Final = {"Retry-After": {"schema": {"type": "string"}}}


def _answer(
    description: str, content: dict[str, Any], *, retry_after: bool = False
) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": content}
    if retry_after:
        answer["headers"] = _RETRY_AFTER
    return answer


def _text(description: str) -> dict[str, Any]:
    return _answer(description, {TEXT: {"schema": {"type": "string"}}})


_HEADERS_TOO_LARGE: Final = _text("The request headers are over 8 KiB")
_PLAIN_401: Final = _text("A missing or wrong Bearer token")


def _job(description: str, *, form: bool = True, retry_after: bool = False) -> dict[str, Any]:
    """A Prodia job as JSON, or as the ``job`` part of a multipart body (and outputs)."""
    content: dict[str, Any] = {JSON: {"schema": _ref("ProdiaJob")}}
    if form:
        content[FORM] = {"schema": {"type": "string", "format": "binary"}}
    return _answer(description, content, retry_after=retry_after)


def _job_routes(success: str, status: str) -> dict[str, Any]:
    return {
        status: _job(success),
        "400": _job("A bad job, part or image (the failed job says what)"),
        "401": _PLAIN_401,
        "408": _job("The body stopped arriving"),
        "429": _job("The server or the async queue is full", retry_after=True),
        "431": _HEADERS_TOO_LARGE,
        "500": _job("An internal error (the failed job names the request id)", form=False),
        "503": _job("The model or the job store is unavailable", form=False, retry_after=True),
    }


def _async_get(success: dict[str, Any]) -> dict[str, Any]:
    return {
        "200": success,
        "401": _PLAIN_401,
        "404": _answer("Unknown, expired or another key's job", {JSON: {"schema": _ref("Error")}}),
        "431": _HEADERS_TOO_LARGE,
        "503": _answer(
            "The job store is unavailable", {JSON: {"schema": _ref("Error")}}, retry_after=True
        ),
    }


def _eachlabs(success: dict[str, Any], statuses: tuple[str, ...]) -> dict[str, Any]:
    error = {JSON: {"schema": _ref("EachlabsError")}}
    answers = {"200": success, "431": _HEADERS_TOO_LARGE}
    for status in statuses:
        answers[status] = _answer(
            "A refusal; details is a stable code", error, retry_after=status in ("429", "503")
        )
    return answers


def _openai(success: dict[str, Any], statuses: tuple[str, ...]) -> dict[str, Any]:
    error = {JSON: {"schema": _ref("OpenAIError")}}
    answers = {"200": success, "431": _HEADERS_TOO_LARGE}
    for status in statuses:
        answers[status] = _answer(
            "A refusal in OpenAI's error format", error, retry_after=status in ("429", "503")
        )
    return answers


RESPONSES: Final[dict[tuple[str, str], dict[str, Any]]] = {
    ("post", "/v2/job"): _job_routes("The completed job (v2: its outputs follow it)", "200"),
    ("post", "/v2/job/async"): _job_routes("The stored job, processing", "201"),
    ("get", "/v2/job/async/{job_id}/job.state.current"): _async_get(
        _answer(
            "processing, processed or failed",
            {TEXT: {"schema": {"type": "string", "enum": ["processing", "processed", "failed"]}}},
        )
    ),
    ("get", "/v2/job/async/{job_id}/job.json"): _async_get(
        _answer("The job", {JSON: {"schema": _ref("ProdiaJob")}})
    ),
    ("get", "/v2/job/async/{job_id}/output"): _async_get(
        _answer(
            "The output files' names",
            {JSON: {"schema": {"type": "array", "items": {"type": "string"}}}},
        )
    ),
    ("get", "/v2/job/async/{job_id}/output/{filename}"): _async_get(
        _answer(
            "labels.json, or the uploaded image byte for byte",
            {
                JSON: {"schema": _ref("Labels")},
                "image/*": {"schema": {"type": "string", "format": "binary"}},
            },
        )
    ),
    ("post", "/v1/prediction/"): _eachlabs(
        _answer("The prediction was created", {JSON: {"schema": _ref("EachlabsCreated")}}),
        ("400", "401", "404", "408", "429", "500", "503"),
    ),
    ("get", "/v1/prediction/{prediction_id}"): _eachlabs(
        _answer("The prediction", {JSON: {"schema": _ref("EachlabsPrediction")}}),
        ("401", "404", "500", "503"),
    ),
    ("post", "/v1/moderations"): _openai(
        _answer("One result per image", {JSON: {"schema": _ref("Moderation")}}),
        ("400", "401", "408", "429", "500", "503"),
    ),
    ("get", "/v1/models"): _openai(
        _answer(
            "The served models, the default first",
            {
                JSON: {
                    "schema": {
                        "type": "object",
                        "required": ["object", "data"],
                        "properties": {
                            "object": {"type": "string", "enum": ["list"]},
                            "data": {"type": "array", "items": _ref("Model")},
                        },
                    }
                }
            },
        ),
        ("401",),
    ),
    ("get", "/v1/models/{model}"): _openai(
        _answer("A served model", {JSON: {"schema": _ref("Model")}}), ("401", "404")
    ),
    ("get", "/healthz"): {
        "200": _text("ok, then the model's device and dtype"),
        "431": _HEADERS_TOO_LARGE,
        "503": _text("loading, or stopping"),
    },
    ("get", "/metrics"): {
        "200": _text("Prometheus metrics in the text exposition format"),
        "431": _HEADERS_TOO_LARGE,
    },
}
"""Each operation's answers, by (method, path) as ``/openapi.json`` lists them."""

SECURITY: Final = {
    "/v2/job": "bearer",
    "/v1/prediction": "apiKey",
    "/v1/moderations": "bearer",
    "/v1/models": "bearer",
}
"""Which key each route family takes (by path prefix)."""


def complete(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` (FastAPI's OpenAPI) with the answers, schemas and security filled in."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas.update(SCHEMAS)
    components["securitySchemes"] = SECURITY_SCHEMES
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            answers = RESPONSES.get((method, path))
            if answers is not None:
                operation["responses"] = answers
            for prefix, scheme in SECURITY.items():
                if path.startswith(prefix):
                    operation["security"] = [{scheme: []}]
    if not schemas:
        components.pop("schemas")
    return document


def install_openapi(app: FastAPI) -> None:
    """Serve :func:`complete`'s document at ``/openapi.json`` (built once, on first use)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    openapi_version=app.openapi_version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
