"""Settings: read from BATON_* variables and .env, OpenAI's own variables, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from baton.settings import Settings, SettingsError, env_var_name, load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _isolated(clean_env: Path) -> None:
    """Every test starts from an empty environment in an empty directory."""


def test_defaults_run_everything_embedded(clean_env: Path) -> None:
    settings = load_settings()

    assert settings.home == Path(".baton")
    assert settings.redis_url is None
    assert settings.resolved_database_url() == f"sqlite:///{clean_env}/.baton/baton.db"
    assert settings.lease_seconds == 10.0
    assert settings.worker_idle_timeout_ms == 100
    assert settings.modules == []
    assert settings.api_token is None
    assert settings.github_webhook_secrets == []
    assert settings.openai_api_key is None


def test_variables_with_the_prefix_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_HOME", "/var/lib/baton")
    monkeypatch.setenv("BATON_REDIS_URL", "redis://cache:6379/2")
    monkeypatch.setenv("BATON_LEASE_SECONDS", "2.5")
    monkeypatch.setenv("BATON_WEBHOOK_MAX_BYTES", "4096")

    settings = load_settings()

    assert settings.home == Path("/var/lib/baton")
    assert settings.redis_url == "redis://cache:6379/2"
    assert settings.lease_seconds == 2.5
    assert settings.webhook_max_bytes == 4096
    assert settings.resolved_database_url() == "sqlite:////var/lib/baton/baton.db"


def test_modules_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_MODULES", "examples.triage, myapp.agents,,")

    assert load_settings().modules == ["examples.triage", "myapp.agents"]


def test_webhook_secrets_are_comma_separated_for_rotation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a new and an old secret for each source, during a rotation
    monkeypatch.setenv("BATON_GITHUB_WEBHOOK_SECRETS", "new-gh-secret,old-gh-secret")
    monkeypatch.setenv("BATON_STANDARD_WEBHOOK_SECRETS", "whsec_bmV3,whsec_b2xk")

    settings = load_settings()

    # Then both are accepted, in order, and hidden from reprs and logs
    assert [s.get_secret_value() for s in settings.github_webhook_secrets] == [
        "new-gh-secret",
        "old-gh-secret",
    ]
    assert [s.get_secret_value() for s in settings.standard_webhook_secrets] == [
        "whsec_bmV3",
        "whsec_b2xk",
    ]
    assert "gh-secret" not in repr(settings)


def test_openai_variables_are_read_without_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("BATON_API_TOKEN", "operator-token")

    settings = load_settings()

    assert settings.openai_api_key is not None
    assert settings.openai_api_key.get_secret_value() == "sk-test"
    assert settings.openai_base_url == "http://127.0.0.1:9/v1"
    assert settings.api_token is not None
    assert settings.api_token.get_secret_value() == "operator-token"
    assert env_var_name("openai_api_key") == "OPENAI_API_KEY"


def test_prefixed_openai_variables_are_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # OpenAI keeps its standard variables; a BATON_ twin would be a second source of truth.
    monkeypatch.setenv("BATON_OPENAI_API_KEY", "sk-ignored")

    assert load_settings().openai_api_key is None


def test_a_bad_number_names_the_variable_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_LEASE_SECONDS", "abc")

    with pytest.raises(SettingsError) as raised:
        load_settings()

    assert str(raised.value) == (
        "BATON_LEASE_SECONDS='abc' is not a number; set it to seconds, e.g. 10"
    )
    assert isinstance(raised.value, ValueError)
    assert raised.value.__cause__ is None  # the pydantic dump is not shown to operators


def test_out_of_range_values_say_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_LEASE_SECONDS", "0")
    monkeypatch.setenv("BATON_DEFAULT_RETRIES", "-1")
    monkeypatch.setenv("BATON_WORKER_IDLE_TIMEOUT_MS", "1.5")

    with pytest.raises(SettingsError) as raised:
        load_settings()

    assert raised.value.problems == [
        "BATON_LEASE_SECONDS='0' must be greater than 0; set it to seconds, e.g. 10",
        "BATON_WORKER_IDLE_TIMEOUT_MS='1.5' is not a whole number; "
        "set it to milliseconds, e.g. 100",
        "BATON_DEFAULT_RETRIES='-1' must be at least 0; set it to a count, e.g. 3",
    ]
    assert str(raised.value).startswith("3 settings are invalid:\n  - BATON_LEASE_SECONDS")


def test_backoff_bounds_must_be_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_MIN_BACKOFF_MS", "5000")
    monkeypatch.setenv("BATON_MAX_BACKOFF_MS", "1000")

    with pytest.raises(SettingsError, match="BATON_MIN_BACKOFF_MS=5000 is greater than "):
        load_settings()


def test_bad_urls_and_module_names_are_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_REDIS_URL", "localhost:6379")
    monkeypatch.setenv("BATON_MODULES", "examples.triage,my-app")

    with pytest.raises(SettingsError) as raised:
        load_settings()

    redis_problem, modules_problem = raised.value.problems
    assert redis_problem.startswith("BATON_REDIS_URL='localhost:6379' is invalid: ")
    assert "unset it for the embedded Valkey" in redis_problem
    assert "'my-app' is not an importable module name" in modules_problem


def test_secret_values_never_appear_in_errors() -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(api_token=["hunter2"])

    assert str(raised.value).startswith("BATON_API_TOKEN (value hidden) is invalid")
    assert "hunter2" not in str(raised.value)


def test_dot_env_is_read_and_the_environment_wins(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a .env in the working directory
    (clean_env / ".env").write_text(
        "BATON_LEASE_SECONDS=4\nBATON_DEFAULT_RETRIES=7\nOPENAI_BASE_URL=http://127.0.0.1:9/v1\n"
        "BATON_TEST_POSTGRES_URL=postgresql+psycopg://ignored\n"
    )
    # And one of its variables also set in the environment
    monkeypatch.setenv("BATON_DEFAULT_RETRIES", "1")

    settings = load_settings()

    assert settings.lease_seconds == 4
    assert settings.default_retries == 1
    assert settings.openai_base_url == "http://127.0.0.1:9/v1"


def test_an_empty_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_REDIS_URL", "")
    monkeypatch.setenv("OPENAI_API_KEY", "")

    settings = load_settings()

    assert settings.redis_url is None
    assert settings.openai_api_key is None


def test_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_HOME", "/from/env")

    assert load_settings(home=Path("/from/flag")).home == Path("/from/flag")


def test_postgres_urls_get_the_psycopg_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_DATABASE_URL", "postgres://baton:pw@db:5432/baton")

    assert load_settings().resolved_database_url() == (
        "postgresql+psycopg://baton:pw@db:5432/baton"
    )


def test_the_readme_documents_every_variable() -> None:
    readme = (REPO_ROOT / "README.md").read_text()

    missing = [
        env_var_name(name) for name in Settings.model_fields if env_var_name(name) not in readme
    ]

    assert missing == [], f"add these to README.md's configuration table: {missing}"
