"""The HTTP surface: OpenAI's `/v1/chat/completions` and `/v1/models`, plus `/_offline` controls."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fastapi import FastAPI, Request, Response
from pydantic import TypeAdapter, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ._config import Fault, OfflineModelConfig
from ._protocol import (
    ChatCompletionRequest,
    OfflineModelError,
    canonical_json,
    request_error_from_validation,
)
from ._responder import CREATED, respond
from ._state import ServerState

__all__ = ["create_app", "state_of"]

_FAULTS = TypeAdapter(list[Fault])
_OWNER = "baton-offline"


def create_app(config: OfflineModelConfig | None = None) -> FastAPI:
    """A FastAPI app serving one offline model; each app keeps its own counters and faults."""
    state = ServerState(config or OfflineModelConfig())
    app = FastAPI(title="Baton offline model", docs_url=None, redoc_url=None)
    app.state.offline_model_state = state

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        message = f"{error.detail}: {request.method} {request.url.path}"
        return _error_response(OfflineModelError(error.status_code, message))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        fault, delay = state.begin_request()
        status = 500
        try:
            response = await _serve_completion(state, request, fault, delay)
            status = response.status_code
            return response
        finally:
            state.end_request(status)

    @app.get("/v1/models")
    async def list_models() -> Response:
        models = [_model_card(name) for name in state.config.models]
        return _json_response(200, {"object": "list", "data": models})

    @app.get("/v1/models/{model_id}")
    async def retrieve_model(model_id: str) -> Response:
        return _json_response(200, _model_card(model_id))

    @app.post("/_offline/faults")
    async def add_faults(request: Request) -> Response:
        try:
            data = json.loads(await request.body())
        except ValueError as error:
            message = f'send a JSON list of faults, e.g. [{{"status": 429}}]: {error}'
            return _error_response(OfflineModelError(400, message, code="invalid_json"))
        try:
            faults = _FAULTS.validate_python(data)
        except ValidationError as error:
            return _error_response(request_error_from_validation(error, data))
        return _json_response(200, {"faults_pending": state.add_faults(faults)})

    @app.delete("/_offline/faults")
    async def clear_faults() -> Response:
        state.clear_faults()
        return _json_response(200, {"faults_pending": 0})

    @app.get("/_offline/stats")
    async def stats() -> Response:
        return _json_response(200, state.stats().model_dump(mode="json"))

    @app.post("/_offline/stats/reset")
    async def reset_stats() -> Response:
        state.reset_stats()
        return _json_response(200, state.stats().model_dump(mode="json"))

    return app


def state_of(app: FastAPI) -> ServerState:
    """The state behind an app made by `create_app`."""
    state = getattr(app.state, "offline_model_state", None)
    if not isinstance(state, ServerState):
        raise TypeError("this app was not made by offline_model.create_app(); use that to build it")
    return state


async def _serve_completion(
    state: ServerState, request: Request, fault: Fault | None, delay: float
) -> Response:
    raw = await request.body()
    if fault is not None and fault.timeout:
        hang = fault.hang_seconds or state.config.hang_seconds
        if await state.wait(hang, request.receive) == "shutdown":
            return _error_response(
                OfflineModelError(
                    503, "the offline model is shutting down", error_type="server_error"
                )
            )
        return _error_response(
            OfflineModelError(
                504,
                f"timeout fault: the offline model held this request for {hang}s without answering",
                error_type="server_error",
                code="timeout",
            )
        )
    try:
        if fault is not None and fault.status is not None:
            raise _fault_error(fault.status, fault.message, fault.retry_after, fault.code)
        body = _complete(state, raw)
        response = _json_response(200, body, {"x-request-id": str(body.get("id", ""))})
    except OfflineModelError as error:
        response = _error_response(error)
    await state.wait(delay, request.receive)
    return response


def _complete(state: ServerState, raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError as error:
        raise OfflineModelError(
            400, f"could not parse the JSON body of the request: {error}", code="invalid_json"
        ) from None
    if not isinstance(data, dict):
        raise OfflineModelError(400, "the request body must be a JSON object", code="invalid_json")
    if data.get("stream") is True:
        raise OfflineModelError(
            400,
            "streaming is not supported by the offline model; send the request without stream=True",
            param="stream",
            code="unsupported_parameter",
        )
    try:
        request = ChatCompletionRequest.model_validate(data)
    except ValidationError as error:
        raise request_error_from_validation(error, data) from None
    if state.player is not None:
        return state.player.play(data)
    return respond(request, hashlib.sha256(canonical_json(data).encode()).hexdigest())


def _fault_error(
    status: int, message: str | None, retry_after: float | None, given_code: str | None = None
) -> OfflineModelError:
    headers = {}
    if retry_after is not None:
        headers["retry-after"] = _seconds_text(retry_after)
        headers["retry-after-ms"] = str(round(retry_after * 1000))
    if status == 429:
        default, error_type, code = (
            "Rate limit reached for requests",
            "requests",
            "rate_limit_exceeded",
        )
    elif status >= 500:
        default, error_type, code = (
            "The server had an error processing your request",
            "server_error",
            None,
        )
    else:
        default, error_type, code = (
            "Permanent request error",
            "invalid_request_error",
            "injected_fault",
        )
    return OfflineModelError(
        status,
        message or f"{default} (a fault injected into the offline model)",
        error_type=error_type,
        code=given_code or code,
        headers=headers,
    )


def _seconds_text(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": CREATED, "owned_by": _OWNER}


def _error_response(error: OfflineModelError) -> Response:
    return _json_response(error.status, error.body(), error.headers)


def _json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(content, status_code=status, media_type="application/json", headers=headers)
