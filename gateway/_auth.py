"""Bearer-token auth for the run API: one token, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from gateway._errors import unauthorized

_bearer = HTTPBearer(auto_error=False, description="the gateway's BATON_API_TOKEN")


def _digest(value: str) -> bytes:
    # Comparing digests keeps the comparison constant-time in the token's length too.
    return hashlib.sha256(value.encode()).digest()


def bearer_auth(
    token: SecretStr | None,
) -> Callable[[HTTPAuthorizationCredentials | None], Awaitable[None]]:
    """A dependency that refuses a request without ``Authorization: Bearer <token>``."""
    expected = None if token is None else _digest(token.get_secret_value())

    async def require_token(
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
    ) -> None:
        if expected is None:
            raise unauthorized(
                "this gateway has no API token, so its API is closed; set BATON_API_TOKEN "
                "where it runs and restart it"
            )
        if credentials is None:
            raise unauthorized("send the header Authorization: Bearer <BATON_API_TOKEN>")
        if not hmac.compare_digest(_digest(credentials.credentials), expected):
            raise unauthorized("the bearer token is wrong; use this gateway's BATON_API_TOKEN")

    return require_token
