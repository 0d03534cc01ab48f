"""Baton's configuration: read once from the environment (and `.env`), typed, passed down.

This is the only module that reads `os.environ`. Everything else receives a `Settings`
(or, for `store`, just a URL). Variables carry the `BATON_` prefix, except OpenAI's own
standard `OPENAI_API_KEY` and `OPENAI_BASE_URL`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["Settings", "SettingsError", "env_var_name", "load_settings"]

ENV_PREFIX = "BATON_"

_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class SettingsError(ValueError):
    """The environment holds a setting Baton cannot use; the message names the variable."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        if len(problems) == 1:
            message = problems[0]
        else:
            message = f"{len(problems)} settings are invalid:\n" + "\n".join(
                f"  - {problem}" for problem in problems
            )
        super().__init__(message)


def _split_commas(value: object) -> object:
    # Lists come from the environment as "a,b,c", not JSON: humans write them, and a
    # rotated secret is added by appending ",new".
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every knob Baton has, with its `BATON_*` environment variable."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        # BATON_TEST_POSTGRES_URL and other tools' variables may share the prefix or the .env.
        extra="ignore",
        # `BATON_REDIS_URL=` in a .env means "not set", i.e. the embedded default.
        env_ignore_empty=True,
    )

    home: Path = Field(
        Path(".baton"),
        description="directory for the embedded Valkey and SQLite data",
        examples=[".baton"],
    )
    redis_url: str | None = Field(
        None,
        description="Redis/Valkey 7+ URL; unset starts an embedded Valkey under the home",
        examples=["redis://127.0.0.1:6379/0"],
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the store; unset uses SQLite at {home}/baton.db",
        examples=["postgresql+psycopg://baton:secret@127.0.0.1:5432/baton"],
    )
    lease_seconds: float = Field(
        10.0, gt=0, description="how long a worker's claim on a step lasts before it expires"
    )
    reconcile_interval_seconds: float = Field(
        1.0, gt=0, description="how often the reconciler looks for expired leases"
    )
    relay_after_seconds: float = Field(
        3.0, gt=0, description="outbox rows unconfirmed for this long are re-published"
    )
    republish_after_seconds: float = Field(
        30.0, gt=0, description="pending steps untouched for this long are re-published"
    )
    worker_idle_timeout_ms: int = Field(
        100, gt=0, description="how long an idle worker thread blocks waiting for a message"
    )
    step_timeout_seconds: float = Field(
        300.0, gt=0, description="default time limit of one step (an actor may set its own)"
    )
    default_retries: int = Field(3, ge=0, description="default retries of a failing step")
    min_backoff_ms: int = Field(500, ge=0, description="first retry delay")
    max_backoff_ms: int = Field(60_000, gt=0, description="longest retry delay")
    modules: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated modules to import for their actors and agents",
        examples=["examples.triage"],
    )
    api_token: SecretStr | None = Field(
        None,
        description="bearer token the run API and console require",
        examples=["a-long-random-string"],
    )
    github_webhook_secrets: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="comma-separated GitHub webhook secrets (several while rotating)",
        examples=["new-secret,old-secret"],
    )
    standard_webhook_secrets: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="comma-separated Standard Webhooks secrets (several while rotating)",
        examples=["whsec_new,whsec_old"],
    )
    webhook_max_bytes: int = Field(
        1_048_576, gt=0, description="largest webhook body accepted; larger gets 413"
    )
    openai_api_key: SecretStr | None = Field(
        None,
        # The lower-case choice lets code pass `openai_api_key=` as for any other field,
        # without also reading a BATON_OPENAI_API_KEY twin from the environment.
        validation_alias=AliasChoices("OPENAI_API_KEY", "openai_api_key"),
        description="OpenAI-compatible API key; unset uses Baton's offline model",
        examples=["sk-..."],
    )
    openai_base_url: str | None = Field(
        None,
        validation_alias=AliasChoices("OPENAI_BASE_URL", "openai_base_url"),
        description="OpenAI-compatible endpoint (Azure, vLLM, Ollama, LiteLLM)",
        examples=["http://127.0.0.1:11434/v1"],
    )

    model_prices: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="JSON prices per million tokens, added to or replacing the built-in table",
        examples=['{"my-model": {"input": 0.5, "output": 1.5, "cached_input": 0.1}}'],
    )
    model_timeout_seconds: float = Field(
        120.0, gt=0, description="how long one model request may take before it is retried"
    )

    _split_lists = field_validator(
        "modules", "github_webhook_secrets", "standard_webhook_secrets", mode="before"
    )(_split_commas)

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, home: Path) -> Path:
        return home.expanduser()

    @field_validator("modules", mode="after")
    @classmethod
    def _check_module_names(cls, modules: list[str]) -> list[str]:
        for module in modules:
            if not _MODULE_NAME.match(module):
                raise ValueError(f"{module!r} is not an importable module name")
        return modules

    @field_validator("redis_url", mode="after")
    @classmethod
    def _check_redis_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(_REDIS_SCHEMES):
            raise ValueError(f"the URL must start with one of {', '.join(_REDIS_SCHEMES)}")
        return url

    @field_validator("database_url", mode="after")
    @classmethod
    def _check_database_url(cls, url: str | None) -> str | None:
        if url is not None and "://" not in url:
            raise ValueError("it is not a database URL")
        return url

    @model_validator(mode="after")
    def _check_backoff_order(self) -> Self:
        if self.min_backoff_ms > self.max_backoff_ms:
            raise ValueError(
                f"{env_var_name('min_backoff_ms')}={self.min_backoff_ms} is greater than "
                f"{env_var_name('max_backoff_ms')}={self.max_backoff_ms}; "
                "lower the first or raise the second"
            )
        return self

    def resolved_database_url(self) -> str:
        """The store's URL: `database_url`, else SQLite at `{home}/baton.db` (absolute)."""
        if self.database_url is None:
            # Absolute, so a worker started from another directory opens the same file.
            return f"sqlite:///{self.home.absolute()}/baton.db"
        # SQLAlchemy maps a bare postgresql:// to psycopg2, which Baton does not ship.
        for bare in ("postgres://", "postgresql://"):
            if self.database_url.startswith(bare):
                return "postgresql+psycopg://" + self.database_url[len(bare) :]
        return self.database_url


def env_var_name(field_name: str) -> str:
    """The environment variable that sets the field `field_name`."""
    field = Settings.model_fields[field_name]
    if isinstance(field.validation_alias, AliasChoices):
        first = field.validation_alias.choices[0]
        if isinstance(first, str):
            return first
    return f"{ENV_PREFIX}{field_name.upper()}"


def load_settings(**overrides: Any) -> Settings:
    """Read the settings; on a bad value raise `SettingsError` naming the variable and the fix.

    `overrides` (field names) win over the environment, e.g. from command-line options.
    """
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise SettingsError([_describe(detail) for detail in error.errors()]) from None


_ALIASES = {
    choice: name
    for name, field in Settings.model_fields.items()
    if isinstance(field.validation_alias, AliasChoices)
    for choice in field.validation_alias.choices
    if isinstance(choice, str)
}

_SECRETS = frozenset(
    name for name, field in Settings.model_fields.items() if "SecretStr" in str(field.annotation)
)

_WHAT = {
    "home": "a directory",
    "redis_url": "a redis:// or rediss:// URL, or unset it for the embedded Valkey",
    "database_url": "a database URL, or unset it for SQLite under BATON_HOME",
    "default_retries": "a count",
    "modules": "comma-separated module paths",
    "api_token": "a long random string",
    "github_webhook_secrets": "comma-separated secrets",
    "standard_webhook_secrets": "comma-separated secrets",
    "openai_base_url": "an http(s) URL ending in /v1",
}

_NOT_A_NUMBER = {
    "float_parsing": "is not a number",
    "float_type": "is not a number",
    "int_parsing": "is not a whole number",
    "int_type": "is not a whole number",
    "int_from_float": "is not a whole number",
}

_BOUNDS = {
    "greater_than": ("gt", "greater than"),
    "greater_than_equal": ("ge", "at least"),
    "less_than": ("lt", "less than"),
    "less_than_equal": ("le", "at most"),
}


def _describe(detail: Any) -> str:
    """One human line for one pydantic error: variable, value, problem, and what to set."""
    location = detail["loc"]
    if not location or not isinstance(location[0], str):
        # A model-level check; its message already names the variables.
        return str(detail.get("ctx", {}).get("error", detail["msg"]))
    name = _ALIASES.get(location[0], location[0])
    if name not in Settings.model_fields:
        return f"{location[0]}: {detail['msg']}"
    variable = env_var_name(name)
    shown = f"{variable} (value hidden)" if name in _SECRETS else f"{variable}={detail['input']!r}"
    kind = detail["type"]
    if kind in _NOT_A_NUMBER:
        problem = _NOT_A_NUMBER[kind]
    elif kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        problem = f"must be {words} {detail['ctx'][key]:g}"
    elif kind == "value_error":
        problem = f"is invalid: {detail['ctx']['error']}"
    else:
        problem = f"is invalid: {detail['msg']}"
    return f"{shown} {problem}; {_advice(name)}"


def _advice(name: str) -> str:
    if name.endswith("_seconds"):
        what = "seconds"
    elif name.endswith("_ms"):
        what = "milliseconds"
    elif name.endswith("_bytes"):
        what = "a size in bytes"
    else:
        what = _WHAT.get(name, "a valid value")
    field = Settings.model_fields[name]
    example = field.examples[0] if field.examples else field.default
    if isinstance(example, float):
        example = f"{example:g}"
    return f"set it to {what}, e.g. {example}"
