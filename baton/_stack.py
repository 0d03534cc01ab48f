"""The composition root: settings in, the parts a command needs out, each built once."""

from __future__ import annotations

import functools
import logging

import redis

from baton._valkey import EmbeddedValkey, EmbeddedValkeyError
from baton.settings import Settings
from events import BatonError
from store import Store, StoreUnavailable, modules_for_event_type, upgrade
from workers import Runtime, RuntimeConfig, WorkerError, import_modules

_logger = logging.getLogger("baton")


class Unreachable(BatonError):
    """Redis or the store cannot be reached: exit code 3."""


class Stack:
    """Broker URL, store and runtime for one process, from one Settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @functools.cached_property
    def redis_url(self) -> str:
        if self.settings.redis_url:
            return self.settings.redis_url
        try:
            return EmbeddedValkey(self.settings.home).ensure_running()
        except EmbeddedValkeyError as error:
            raise Unreachable(f"cannot start the embedded Valkey: {error}") from error

    @functools.cached_property
    def store(self) -> Store:
        return Store(self.settings.resolved_database_url())

    @functools.cached_property
    def runtime(self) -> Runtime:
        return Runtime(self.store, self.redis_url, runtime_config(self.settings))

    def upgrade_schema(self) -> None:
        try:
            upgrade(self.settings.resolved_database_url())
        except StoreUnavailable as error:
            raise Unreachable(str(error)) from error

    def check_reachable(self) -> None:
        """Raise Unreachable with one clear line unless both Redis and the store answer."""
        try:
            redis.Redis.from_url(self.redis_url, socket_connect_timeout=3).ping()
        except redis.RedisError as error:
            raise Unreachable(
                f"cannot reach Redis at {self.redis_url}: {error}; start it or fix BATON_REDIS_URL"
            ) from error
        try:
            self.store.ping()
        except StoreUnavailable as error:
            raise Unreachable(str(error)) from error

    def load_modules(self, extra: list[str], *, event_type: str | None = None) -> list[str]:
        """Import the actor modules named in the settings and on the command line; with
        ``event_type``, also those that workers declared for it in the store's catalog."""
        modules = [*self.settings.modules, *extra]
        if event_type is not None:
            try:
                modules += modules_for_event_type(self.store, event_type)
            except StoreUnavailable as error:
                raise Unreachable(str(error)) from error
        unique = list(dict.fromkeys(modules))
        try:
            import_modules(unique)
        except WorkerError:
            raise
        return unique


def runtime_config(settings: Settings) -> RuntimeConfig:
    return RuntimeConfig(
        lease_seconds=settings.lease_seconds,
        default_retries=settings.default_retries,
        min_backoff_ms=settings.min_backoff_ms,
        max_backoff_ms=settings.max_backoff_ms,
        step_timeout_seconds=settings.step_timeout_seconds,
        relay_after_seconds=settings.relay_after_seconds,
        republish_after_seconds=settings.republish_after_seconds,
        reconcile_interval_seconds=settings.reconcile_interval_seconds,
        worker_idle_timeout_ms=settings.worker_idle_timeout_ms,
        model_base_url=settings.openai_base_url,
        model_api_key=settings.openai_api_key.get_secret_value()
        if settings.openai_api_key
        else None,
        model_timeout_seconds=settings.model_timeout_seconds,
        model_prices=settings.model_prices,
    )
