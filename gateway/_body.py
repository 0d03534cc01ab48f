"""Reading a request body with a cap, chunk by chunk: an oversize body is never buffered."""

from __future__ import annotations

from starlette.types import Receive

from gateway._errors import ApiError

# The connection is closed after a 413, or the server would go on reading (and discarding)
# the rest of the body the client is still sending.
_CLOSE = {"Connection": "close"}


def too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "payload_too_large",
        f"the body is larger than this source's limit of {limit} bytes; send less, or raise "
        "BATON_WEBHOOK_MAX_BYTES",
        headers=_CLOSE,
    )


async def read_capped_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The whole body, or ApiError 413 as soon as more than ``limit`` bytes are declared (the
    Content-Length, ``declared``) or received; ApiError 400 if the client goes away or
    declares a nonsense length."""
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(
                400, "bad_request", f"Content-Length {declared!r} is not a number", headers=_CLOSE
            )
        if int(declared) > limit:
            raise too_large(limit)
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ApiError(400, "client_disconnected", "the client went away mid-body")
        chunk: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        if not more and not body:
            # The usual case, the whole body in one message: no copy.
            if len(chunk) > limit:
                raise too_large(limit)
            return chunk
        body += chunk
        if len(body) > limit:
            raise too_large(limit)
        if not more:
            return bytes(body)
