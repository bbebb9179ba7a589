"""Settings: defaults, environment variables, and errors that name the field, value and range."""

from __future__ import annotations

import pytest

from graceful import Settings, SettingsError


def test_defaults_fit_the_kubernetes_default_grace_period() -> None:
    """drain_delay + drain_timeout + 2 s fits the default terminationGracePeriodSeconds of 30 s."""
    settings = Settings()
    assert settings.drain_delay == 5.0 and settings.drain_timeout == 23.0
    assert settings.drain_delay + settings.drain_timeout <= 30.0
    assert settings.shutdown_token is None and settings.shutdown_trust_loopback
    assert not settings.shutdown_allow_get


def test_envoy_immediate_fail_is_off_unless_asked_for() -> None:
    """Envoy's immediate-fail header is opt-in (it means something only to an Envoy that health-checks
    actively); GRACEFUL_ENVOY_IMMEDIATE_FAIL turns it on like any boolean variable."""
    assert Settings().envoy_immediate_fail is False
    assert Settings.from_env({"GRACEFUL_ENVOY_IMMEDIATE_FAIL": "1"}).envoy_immediate_fail is True
    assert Settings.from_env({"GRACEFUL_ENVOY_IMMEDIATE_FAIL": "off"}).envoy_immediate_fail is False


def test_keep_alive_outlasts_the_usual_balancer_idle_timeouts() -> None:
    """The default keep_alive (75 s) is longer than AWS ALB's and nginx's 60 s idle timeouts, so
    the pool in front closes an idle connection first; GRACEFUL_KEEP_ALIVE sets it."""
    assert Settings().keep_alive == 75.0 > 60.0
    assert Settings.from_env({"GRACEFUL_KEEP_ALIVE": "620"}).keep_alive == 620.0


def test_environment_maps_onto_fields() -> None:
    """Every GRACEFUL_* variable maps onto its field, decimals included; keywords win."""
    env = {
        "GRACEFUL_DRAIN_DELAY": "2.5",
        "GRACEFUL_DRAIN_TIMEOUT": " 10 ",
        "GRACEFUL_SHUTDOWN_ALLOW_GET": "yes",
        "GRACEFUL_HEALTH_PATH": "/-/health",
        "GRACEFUL_SHUTDOWN_TOKEN": "0123456789abcdef",
    }
    settings = Settings.from_env(env, drain_timeout=7)
    assert settings.drain_delay == 2.5
    assert settings.drain_timeout == 7
    assert settings.shutdown_allow_get is True
    assert settings.ready_path == "/-/health/ready"
    assert settings.shutdown_token == "0123456789abcdef"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (
            "GRACEFUL_DRAIN_DELAY",
            "abc",
            "GRACEFUL_DRAIN_DELAY='abc' is not a number of seconds; allowed: 0 to 3600",
        ),
        (
            "GRACEFUL_DRAIN_DELAY",
            "-1",
            "GRACEFUL_DRAIN_DELAY='-1' is out of range; allowed: 0 to 3600 seconds",
        ),
        ("GRACEFUL_DRAIN_TIMEOUT", "nan", "GRACEFUL_DRAIN_TIMEOUT='nan' is out of range"),
        ("GRACEFUL_DRAIN_TIMEOUT", "1e9", "GRACEFUL_DRAIN_TIMEOUT='1e9' is out of range"),
        ("GRACEFUL_LOG_PROBES", "maybe", "GRACEFUL_LOG_PROBES='maybe' is not a boolean"),
        (
            "GRACEFUL_ENVOY_IMMEDIATE_FAIL",
            "2",
            "GRACEFUL_ENVOY_IMMEDIATE_FAIL='2' is not a boolean; allowed: True or False",
        ),
        (
            "GRACEFUL_KEEP_ALIVE",
            "0",
            "GRACEFUL_KEEP_ALIVE='0' is out of range; allowed: 1 to 3600 seconds",
        ),
        ("GRACEFUL_KEEP_ALIVE", "5s", "GRACEFUL_KEEP_ALIVE='5s' is not a number; allowed: 1 to 3600 seconds"),
    ],
)
def test_bad_environment_names_variable_value_and_range(variable: str, value: str, expected: str) -> None:
    """A bad variable fails at once with a message naming it, its value and what is allowed."""
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({variable: value})
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("drain_delay", -0.1, "drain_delay=-0.1 is out of range; allowed: 0 to 3600"),
        ("drain_timeout", "5", "drain_timeout='5' is not a number of seconds"),
        ("drain_delay", True, "drain_delay=True is not a number"),
        ("health_path", "healthz", "health_path='healthz' is not a usable URL path"),
        ("shutdown_path", "/healthz/stop", "overlaps health_path"),
        ("shutdown_token", "short", "shutdown_token is too short"),
        ("log_probes", "yes", "log_probes='yes' is not a boolean"),
        ("envoy_immediate_fail", 1, "envoy_immediate_fail=1 is not a boolean"),
    ],
)
def test_bad_keyword_names_field_value_and_range(field: str, value: object, fragment: str) -> None:
    """Keyword arguments are validated like the environment."""
    with pytest.raises(SettingsError, match=None) as caught:
        Settings(**{field: value})  # type: ignore[arg-type]
    assert fragment in str(caught.value)


def test_token_is_not_in_repr() -> None:
    """The shutdown token never shows up in logs that print the settings."""
    assert "0123456789abcdef" not in repr(Settings(shutdown_token="0123456789abcdef"))


def test_settings_are_frozen_and_keyword_only() -> None:
    """Settings cannot change under a running server, and cannot be built positionally."""
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.drain_delay = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        Settings(1.0)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"GRACEFUL_MAX_CONCURRENCY": "0"},
            "GRACEFUL_MAX_CONCURRENCY='0' is out of range; allowed: a whole number from 1 to 1000000",
        ),
        (
            {"GRACEFUL_MAX_CONCURRENCY": "ten"},
            "GRACEFUL_MAX_CONCURRENCY='ten' is out of range; allowed: a whole number",
        ),
        ({"GRACEFUL_WARMUP_CURVE": "0"}, "GRACEFUL_WARMUP_CURVE='0' is out of range; allowed: 0.1 to 10"),
        (
            {"GRACEFUL_WARMUP_MIN_SHARE": "1.5"},
            "GRACEFUL_WARMUP_MIN_SHARE='1.5' is out of range; allowed: 0 to 1",
        ),
        (
            {"GRACEFUL_AGENT_PORT": "70000"},
            "GRACEFUL_AGENT_PORT='70000' is out of range; allowed: a whole number from 1 to 65535",
        ),
        (
            {"GRACEFUL_QUEUE_TIMEOUT": "-1"},
            "GRACEFUL_QUEUE_TIMEOUT='-1' is out of range; allowed: 0 to 60 seconds",
        ),
        ({"GRACEFUL_HEALTH_PATH": "x"}, "GRACEFUL_HEALTH_PATH='x' is not a usable URL path"),
        ({"GRACEFUL_WARMUP_WINDOW": "30"}, "GRACEFUL_WARMUP_WINDOW='30' needs max_concurrency"),
    ],
)
def test_warmup_and_admission_settings_from_environment(env: dict[str, str], expected: str) -> None:
    """Warm-up and admission variables are validated like the rest, naming variable, value and range."""
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert expected in str(caught.value)


def test_warmup_settings_parse() -> None:
    """A full slow-start configuration from the environment."""
    settings = Settings.from_env(
        {"GRACEFUL_WARMUP_WINDOW": "30", "GRACEFUL_MAX_CONCURRENCY": "64", "GRACEFUL_AGENT_PORT": "9777"}
    )
    assert (settings.warmup_window, settings.max_concurrency, settings.agent_port) == (30.0, 64, 9777)
    assert Settings.from_env({"GRACEFUL_MAX_CONCURRENCY": ""}).max_concurrency is None
