"""Webhook sources: a base and one module per sender family."""

from __future__ import annotations

from gateway._config import GatewayConfig
from gateway.sources._base import Delivery, WebhookSource
from gateway.sources.github import GitHubSource
from gateway.sources.standard import StandardSource

__all__ = ["Delivery", "GitHubSource", "StandardSource", "WebhookSource", "configured_sources"]

# The variable that enables each source, for errors that say what to set.
SECRET_VARIABLES = {
    "github": "BATON_GITHUB_WEBHOOK_SECRETS",
    "standard": "BATON_STANDARD_WEBHOOK_SECRETS",
}


def configured_sources(config: GatewayConfig) -> dict[str, WebhookSource]:
    """The sources that have secrets; a source without one is not listening."""
    sources: dict[str, WebhookSource] = {}
    if config.github_secrets:
        sources["github"] = GitHubSource(config.github_secrets)
    if config.standard_secrets:
        sources["standard"] = StandardSource(config.standard_secrets)
    return sources
