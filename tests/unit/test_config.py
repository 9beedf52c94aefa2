"""Settings: the raw engine socket is refused unless explicitly allowed; bad values are clear errors."""

import pytest

from gateway.config import DEFAULT_DOCKER_HOST, Settings
from gateway.errors import ConfigError


def test_default_goes_through_the_socket_proxy() -> None:
    assert (
        Settings.from_env({}).docker_host
        == DEFAULT_DOCKER_HOST
        == "unix:///run/sandbox-gateway/docker-proxy.sock"
    )


def test_docker_host_and_image_come_from_the_environment() -> None:
    settings = Settings.from_env({"DOCKER_HOST": "tcp://docker-proxy:2375", "MCP_EXECUTOR_IMAGE": "img:1"})
    assert settings.docker_host == "tcp://docker-proxy:2375"
    assert settings.image == "img:1"


def test_raw_socket_is_refused_by_default() -> None:
    with pytest.raises(ConfigError, match="raw socket"):
        Settings.from_env({"DOCKER_HOST": "unix:///var/run/docker.sock"})


def test_raw_socket_can_be_allowed_explicitly() -> None:
    settings = Settings.from_env({"DOCKER_HOST": "unix:///var/run/docker.sock"}, allow_raw_socket=True)
    assert settings.docker_host.startswith("unix://")


@pytest.mark.parametrize(
    ("env", "match"),
    [
        pytest.param({"DOCKER_HOST": "docker-proxy:2375"}, "not a URL", id="no-scheme"),
        pytest.param({"LOG_LEVEL": "chatty"}, "LOG_LEVEL", id="log-level"),
    ],
)
def test_bad_settings_are_clear_errors(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Settings.from_env(env)


def test_cli_overrides_win_over_environment() -> None:
    settings = Settings.from_env({"DOCKER_HOST": "tcp://a:1"}, docker_host="tcp://b:2", port=9000)
    assert (settings.docker_host, settings.port) == ("tcp://b:2", 9000)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        pytest.param({"sessions_per_principal": 0}, "--sessions-per-principal", id="no-sessions"),
        pytest.param(
            {"sessions_per_principal": 20, "max_sessions": 10}, "--sessions-per-principal", id="above-max"
        ),
        pytest.param({"max_sessions": 0}, "--max-sessions", id="no-max-sessions"),
        pytest.param({"session_idle_timeout_s": 0.0}, "--session-idle-timeout", id="no-idle-timeout"),
        pytest.param({"requests_per_session": 0}, "--requests-per-session", id="no-requests"),
    ],
)
def test_session_bounds_are_checked(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Settings.from_env({}, **overrides)


def test_sessions_are_bounded_per_principal_by_default() -> None:
    settings = Settings.from_env({})
    assert (settings.sessions_per_principal, settings.session_idle_timeout_s) == (8, 900.0)
    assert settings.requests_per_session == 16 and settings.max_sessions == 10_000


def test_no_proxy_is_trusted_by_default_and_a_named_one_must_be_an_address() -> None:
    assert Settings.from_env({}).trusted_proxies == ()
    accepted = Settings.from_env({}, trusted_proxies=("127.0.0.1", "10.0.0.0/8", "::1"))
    assert accepted.trusted_proxies == ("127.0.0.1", "10.0.0.0/8", "::1")
    for wrong in ("*", "localhost", "10.0.0.0/33", ""):
        with pytest.raises(ConfigError, match="--trusted-proxy"):
            Settings.from_env({}, trusted_proxies=(wrong,))
