"""The OpenAPI document at ``/openapi.json``: every route's answers as the wire protocols fix them.

FastAPI derives request bodies and parameters from the routes, but the routes answer with plain
``Response`` objects in the formats Prodia and Eachlabs use, so it knows nothing of what they
send back. Each route declares its answers (``responses=``) and key (``openapi_extra``) with the
builders here (a Prodia job, an Eachlabs error, plain text for 401 and the edge's 431), and
:func:`install_openapi` completes the document with the schemas they refer to and the two
ways of presenting a key, and drops the 422 FastAPI lists for path parameters, which no route
ever answers. tests/test_campaign_schema.py runs schemathesis against the result.
"""

from __future__ import annotations

from typing import Any, Final

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

JSON: Final = "application/json"
FORM: Final = "multipart/form-data"
TEXT: Final = "text/plain"

_NUMBER_MAP: Final = {"type": "object", "additionalProperties": {"type": "number"}}
_SEGMENTS: Final = {
    "type": "array",
    "description": "A video's flagged stretches: seconds from its first frame, peak score.",
    "items": {
        "type": "object",
        "required": ["start", "end", "score"],
        "properties": {
            "start": {"type": "number"},
            "end": {"type": "number"},
            "score": {"type": "number"},
        },
    },
}

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
                "properties": {"labels": _NUMBER_MAP, "segments": _SEGMENTS},
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
            "segments": _SEGMENTS,
            "sha256": {
                "type": "string",
                "description": "SHA-256 of the image bytes fetched (hex): the verdict holds "
                "for these bytes only",
            },
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
                        "sha256": {
                            "type": "string",
                            "description": "SHA-256 of the image bytes judged (hex): a URL's "
                            "verdict holds for these bytes only",
                        },
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
    "Validation": {
        "type": "object",
        "description": "An upload's validation: valid or not, and why (POST /v1/validate).",
        "required": ["valid"],
        "properties": {
            "valid": {"type": "boolean"},
            "checked": {"type": "boolean"},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "model": {"type": "string"},
            "policy": {"type": "string"},
            "threshold": {"type": "number"},
            "score": {"type": "number"},
            "labels": _NUMBER_MAP,
            "match": {"$ref": "#/components/schemas/Match"},
        },
    },
    "Match": {
        "type": "object",
        "description": "The banked image a picture matched (PDQ within the bank's distance).",
        "required": ["bank", "hash", "distance"],
        "properties": {
            "bank": {"type": "string"},
            "hash": {"type": "string"},
            "distance": {"type": "integer"},
            "category": {"type": "string"},
            "frame": {"type": "integer"},
        },
    },
    "Bank": {
        "type": "object",
        "description": "A bank of known images' PDQ hashes.",
        "required": ["name", "distance", "size"],
        "properties": {
            "name": {"type": "string"},
            "category": {"type": ["string", "null"]},
            "distance": {"type": "integer"},
            "size": {"type": "integer"},
            "created_at": {"type": "string"},
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
            "kind": {
                "type": "string",
                "enum": ["classifier", "detector"],
                "description": "A classifier answers with labels; a detector with regions",
            },
        },
    },
    "Region": {
        "type": "object",
        "required": ["label", "score", "box", "frame"],
        "properties": {
            "label": {"type": "string"},
            "score": {"type": "number"},
            "box": {
                "type": "array",
                "items": {"type": "integer"},
                "minItems": 4,
                "maxItems": 4,
                "description": "[x, y, width, height] in the pixels a viewer sees (upright)",
            },
            "frame": {"type": "integer", "description": "the frame it was found in"},
            "time": {"type": "number", "description": "seconds into a video"},
        },
    },
}
"""Component schemas the answers refer to."""

SECURITY_SCHEMES: Final = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "Prodia routes"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
               "description": "Eachlabs routes"},
}  # fmt: skip


def ref(name: str) -> dict[str, str]:
    """A reference to one of :data:`SCHEMAS`."""
    return {"$ref": f"#/components/schemas/{name}"}


def key(scheme: str) -> dict[str, Any]:
    """A route's ``openapi_extra``: the key it takes (one of :data:`SECURITY_SCHEMES`)."""
    return {"security": [{scheme: []}]}


_RETRY_AFTER: Final = {"Retry-After": {"schema": {"type": "string"}}}


def answer(
    description: str, content: dict[str, Any], *, retry_after: bool = False
) -> dict[str, Any]:
    """One answer of a route: its description, media types and bodies, and ``Retry-After``."""
    result: dict[str, Any] = {"description": description, "content": content}
    if retry_after:
        result["headers"] = _RETRY_AFTER
    return result


def text(description: str) -> dict[str, Any]:
    """A plain-text answer."""
    return answer(description, {TEXT: {"schema": {"type": "string"}}})


HEADERS_TOO_LARGE: Final = text("The request headers are over 8 KiB")
_PLAIN_401: Final = text("A missing or wrong Bearer token")


def _job(description: str, *, form: bool = True, retry_after: bool = False) -> dict[str, Any]:
    """A Prodia job as JSON, or as the ``job`` part of a multipart body (and outputs)."""
    content: dict[str, Any] = {JSON: {"schema": ref("ProdiaJob")}}
    if form:
        content[FORM] = {"schema": {"type": "string", "format": "binary"}}
    return answer(description, content, retry_after=retry_after)


def prodia_job_answers(success: str, status: str) -> dict[int | str, dict[str, Any]]:
    """The answers of a route that takes a Prodia job: ``status`` with the job, or the
    failed job that says why not."""
    return {
        status: _job(success),
        "400": _job("A bad job, part or image (the failed job says what)"),
        "401": _PLAIN_401,
        "403": _job("A keyless server asked by another name than localhost"),
        "408": _job("The body stopped arriving"),
        "429": _job("The server or the async queue is full", retry_after=True),
        "431": HEADERS_TOO_LARGE,
        "500": _job("An internal error (the failed job names the request id)", form=False),
        "503": _job("The model or the job store is unavailable", form=False, retry_after=True),
    }


def prodia_async_answers(success: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    """The answers of a GET of an async Prodia job: ``success``, or why not."""
    return {
        "200": success,
        "401": _PLAIN_401,
        "403": answer(
            "A keyless server asked by another name than localhost",
            {JSON: {"schema": ref("Error")}},
        ),
        "404": answer("Unknown, expired or another key's job", {JSON: {"schema": ref("Error")}}),
        "429": answer(
            "The key has as many reads in progress as it may, or its address sent too many "
            "wrong keys",
            {JSON: {"schema": ref("Error")}},
            retry_after=True,
        ),
        "431": HEADERS_TOO_LARGE,
        "503": answer(
            "The job store is unavailable", {JSON: {"schema": ref("Error")}}, retry_after=True
        ),
    }


def _refusals(
    success: dict[str, Any], statuses: tuple[str, ...], description: str, schema: str
) -> dict[int | str, dict[str, Any]]:
    error = {JSON: {"schema": ref(schema)}}
    answers: dict[int | str, dict[str, Any]] = {"200": success, "431": HEADERS_TOO_LARGE}
    for status in statuses:
        answers[status] = answer(description, error, retry_after=status in ("429", "503"))
    return answers


def eachlabs_answers(
    success: dict[str, Any], statuses: tuple[str, ...]
) -> dict[int | str, dict[str, Any]]:
    """The answers of an Eachlabs route: ``success``, or a refusal for each of ``statuses``."""
    return _refusals(success, statuses, "A refusal; details is a stable code", "EachlabsError")


def openai_answers(
    success: dict[str, Any], statuses: tuple[str, ...]
) -> dict[int | str, dict[str, Any]]:
    """The answers of an OpenAI route: ``success``, or a refusal for each of ``statuses``."""
    return _refusals(success, statuses, "A refusal in OpenAI's error format", "OpenAIError")


def complete(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` (FastAPI's OpenAPI, the answers declared on each route) with the schemas
    they refer to and the key schemes, and without the 422 FastAPI adds for routes with
    parameters: no route answers it (a bad parameter is each protocol's own 400 or 404; the
    422 a route declares itself, /v1/validate's refusal, stays)."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas.update(SCHEMAS)
    components["securitySchemes"] = SECURITY_SCHEMES
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            answers = operation.get("responses", {})
            if answers.get("422", {}).get("description") == "Validation Error":  # FastAPI's
                del answers["422"]
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
