"""Mapping errors to HTTP answers, in one place, and documenting them in the OpenAPI schema.

Every error answer is ``{"error": <code>, "detail": <message>}`` (:class:`~labelloop.schemas.ErrorPublic`)
with the status of the :mod:`labelloop.errors` class; no traceback, Python repr or unencodable
character ever reaches a client. After an unexpected error (500) the answer says
``Connection: close``, because the server drops that connection.
"""

from __future__ import annotations

import logging
from typing import Any

import pydantic
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from labelloop.errors import LabelloopError
from labelloop.schemas import ErrorPublic, explain, printable

log = logging.getLogger("labelloop.api")

#: What each error status means, as the OpenAPI schema says it.
MEANING = {
    400: "The body cannot be read (not UTF-8 text, or a broken multipart form).",
    401: "No API token, or the wrong one (`WWW-Authenticate` names the scheme).",
    403: "A data link the server may not read (outside the import roots, a non-public address).",
    404: "No such task, item or model version.",
    405: "The path exists but not with this method (`Allow` lists the methods it has).",
    409: "The request contradicts the current state (no model yet, a version not ready).",
    413: "The body, or an item it links to, is over the server's limit.",
    422: "The content is not acceptable; `detail` says what to change.",
    500: "An unexpected error (logged); the answer carries `Connection: close`.",
    503: "A dependency (database, broker, workers) is not answering; retry later.",
    504: "No worker answered in time; retry later.",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entry for these error statuses, with the real body."""
    return {s: {"model": ErrorPublic, "description": MEANING[s]} for s in sorted(set(statuses))}


def error_answer(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body: ErrorPublic = {"error": code, "detail": printable(detail, 2000)}
    return JSONResponse(status_code=status, content=body, headers=headers)


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route of the app answers on this path (routes are per method)."""
    return [
        method
        for method in METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in app.router.routes
        )
    ]


def install(app: FastAPI) -> None:
    @app.exception_handler(LabelloopError)
    async def _domain(_: Request, exc: LabelloopError) -> JSONResponse:
        return error_answer(exc.status_code, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_answer(422, "invalid_request", explain(exc.errors()))

    @app.exception_handler(pydantic.ValidationError)
    async def _invalid_inside(_: Request, exc: pydantic.ValidationError) -> JSONResponse:
        # A model built by a service from what the request carried (a Label Studio config's
        # labels, a patched policy): still the request's content.
        return error_answer(422, "invalid_input", explain(exc.errors()))

    @app.exception_handler(DataError)
    async def _out_of_range(request: Request, exc: DataError) -> JSONResponse:
        # The database refused a value the boundary let through; the transaction rolled back.
        log.warning("database refused a value on %s %s: %s", request.method, request.url.path, exc)
        return error_answer(
            422, "invalid_input", "a value does not fit the store (too long or out of range)"
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers, detail = dict(exc.headers or {}), str(exc.detail)
        if exc.status_code == 405:
            allowed = allowed_methods(app, request)
            headers["Allow"] = ", ".join(allowed)
            detail = f"{request.method} is not allowed here; use {' or '.join(allowed)}"
        elif exc.status_code == 404:
            detail = f"nothing at {request.url.path}"
        elif exc.status_code == 400:  # FastAPI could not parse the body at all
            detail = "the request body cannot be read: send UTF-8 JSON (or a multipart form)"
        # An unknown path keeps the code "http_error": the pages tell it from "no such task" by it.
        code = {400: "bad_request", 405: "method_not_allowed", 413: "payload_too_large"}
        return error_answer(
            exc.status_code, code.get(exc.status_code, "http_error"), detail, headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_answer(
            500,
            "internal_error",
            "internal error; see the server log",
            {"Connection": "close"},
        )
