"""What the gateway is told by its caller: plain values, no settings object, no environment."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pydantic import SecretStr

DEFAULT_MAX_BYTES = 1_048_576


@dataclass(frozen=True)
class GatewayConfig:
    """The gateway's configuration, passed down by the composition root.

    A webhook source is enabled by giving it at least one secret; several secrets are all
    accepted, so a secret is rotated by adding the new one, then removing the old one.
    """

    api_token: SecretStr | None = None
    github_secrets: Sequence[SecretStr] = ()
    standard_secrets: Sequence[SecretStr] = ()
    webhook_max_bytes: int = DEFAULT_MAX_BYTES
    # Per-source body limits that override ``webhook_max_bytes``, e.g. {"github": 25 << 20}.
    max_bytes_by_source: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for source, limit in {"*": self.webhook_max_bytes, **self.max_bytes_by_source}.items():
            if limit <= 0:
                raise ValueError(f"webhook body limit for {source!r} must be positive, got {limit}")

    def max_bytes(self, source: str) -> int:
        """The largest body accepted from ``source``."""
        return self.max_bytes_by_source.get(source, self.webhook_max_bytes)
