"""Every error the gateway answers is JSON ``{"error": ..., "detail": ...}``, never a trace."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

_logger = logging.getLogger("baton.gateway")


class ErrorBody(BaseModel):
    """What went wrong (a stable code for scripts) and what to do about it (for humans)."""

    error: str = Field(examples=["bad_signature"])
    detail: str = Field(examples=["no X-Hub-Signature-256 header; sign the body with the secret"])


class ApiError(Exception):
    """An answer other than success, raised anywhere below a route."""

    def __init__(
        self, status: int, error: str, detail: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers


def unauthorized(detail: str, error: str = "unauthorized") -> ApiError:
    return ApiError(401, error, detail, headers={"WWW-Authenticate": "Bearer"})


def error_response(
    status: int, error: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route: each error status documented with ErrorBody."""
    return {
        status: {"model": ErrorBody, "description": HTTPStatus(status).phrase}
        for status in statuses
    }


def install_error_handlers(app: FastAPI) -> None:
    async def api_error(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, ApiError)
        return error_response(error.status, error.error, error.detail, error.headers)

    async def http_error(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        phrase = HTTPStatus(error.status_code).phrase
        code = phrase.lower().replace(" ", "_").replace("-", "_")
        detail = error.detail if error.detail and error.detail != phrase else _advice(error)
        headers = None if error.headers is None else dict(error.headers)
        return error_response(error.status_code, code, str(detail), headers)

    async def invalid_request(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        return error_response(422, "invalid_request", describe_request_errors(error.errors()))

    async def crashed(request: Request, error: Exception) -> JSONResponse:
        _logger.error(
            "%s %s failed", request.method, request.url.path, exc_info=(type(error), error, None)
        )
        return error_response(
            500, "internal_error", "the gateway failed on this request; see its log and retry"
        )

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(Exception, crashed)


def describe_request_errors(errors: Any) -> str:
    """'body.reason: Field required; query.limit: ...' — each problem naming its field."""
    problems = []
    for item in errors:
        where = ".".join(str(part) for part in item.get("loc", ())) or "(request)"
        problems.append(f"{where}: {item.get('msg', 'invalid')}")
    return "; ".join(problems) or "the request is invalid"


def _advice(error: StarletteHTTPException) -> str:
    if error.status_code == 404:
        return "no such route; the routes are listed at /openapi.json"
    if error.status_code == 405:
        return "this route does not take that method; see /openapi.json"
    return HTTPStatus(error.status_code).phrase
