"""How an offline model server behaves: its mode, latency and the faults it can inject."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ._cassette import Cassette

__all__ = ["Fault", "OfflineModelConfig", "OfflineModelStats"]

_Seconds = Annotated[float, Field(ge=0)]


class OfflineModelConfig(BaseModel):
    """Settings for one offline model server; the defaults answer at once, in default mode."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cassette: Cassette | None = None
    """Replay these exchanges in order instead of synthesising answers."""
    delay_seconds: _Seconds = 0.0
    """Added to every chat completion."""
    delay_jitter_seconds: _Seconds = 0.0
    """A uniform random extra delay; the n-th request served gets the n-th draw of `seed`."""
    seed: int = 0
    hang_seconds: Annotated[float, Field(gt=0)] = 60.0
    """How long a `timeout` fault holds the connection, unless the fault says otherwise."""
    models: tuple[str, ...] = ("baton-offline",)
    """What `GET /v1/models` lists; any model name is accepted and echoed."""


class Fault(BaseModel):
    """What to do to one upcoming chat completion; `{}` leaves that request alone."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    status: Annotated[int, Field(ge=400, le=599)] | None = None
    """Answer with this HTTP error instead (429 and 5xx are retryable, other 4xx permanent)."""
    message: str | None = None
    code: str | None = None
    """The error body's `code` (e.g. `insufficient_quota`); by default one that suits the status."""
    retry_after: _Seconds | None = None
    """Sent as `Retry-After` (seconds) with the error."""
    timeout: bool = False
    """Hold the connection without answering, until the client gives up or the server stops."""
    hang_seconds: Annotated[float, Field(gt=0)] | None = None
    delay_seconds: _Seconds = 0.0
    """Extra delay for this request, on top of the configured one."""

    @model_validator(mode="after")
    def _check_combination(self) -> Fault:
        if self.timeout and self.status is not None:
            raise ValueError("a fault is either a timeout or an error status, not both")
        if self.retry_after is not None and self.status is None:
            raise ValueError("retry_after needs an error status, e.g. {'status': 429, ...}")
        if self.message is not None and self.status is None:
            raise ValueError("message needs an error status, e.g. {'status': 500, ...}")
        if self.code is not None and self.status is None:
            raise ValueError("code needs an error status, e.g. {'status': 429, ...}")
        if self.hang_seconds is not None and not self.timeout:
            raise ValueError("hang_seconds only applies to {'timeout': true} faults")
        return self


class OfflineModelStats(BaseModel):
    """Counters since start (or the last reset), over chat completion requests only."""

    model_config = ConfigDict(frozen=True)

    requests: int
    in_flight: int
    peak_in_flight: int
    by_status: dict[int, int]
    faults_pending: int
    cassette_position: int | None
