"""The gateway: webhook receivers (GitHub, Standard Webhooks), the run API, health, metrics."""

from gateway._app import create_app
from gateway._config import GatewayConfig
from gateway._errors import ApiError, ErrorBody
from gateway._events import webhook_event
from gateway._server import ServerThread, serve, uvicorn_config
from gateway.sources import Delivery, GitHubSource, StandardSource, WebhookSource

__all__ = [
    # building and serving it
    "GatewayConfig",
    "create_app",
    "serve",
    "ServerThread",
    "uvicorn_config",
    # webhook events
    "webhook_event",
    # sources and errors
    "Delivery",
    "WebhookSource",
    "GitHubSource",
    "StandardSource",
    "ApiError",
    "ErrorBody",
]
