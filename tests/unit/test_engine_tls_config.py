"""Settings for a remote engine over TLS: Docker's variables or explicit flags, all or nothing."""

from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.errors import ConfigError

REMOTE = "tcp://engine.example:2376"


@pytest.fixture
def cert_dir(tmp_path: Path) -> Path:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text(f"-----BEGIN {name}-----\n")
    return tmp_path


def test_no_tls_by_default() -> None:
    assert Settings.from_env({}).docker_tls is None


def test_docker_tls_verify_and_cert_path_follow_the_docker_convention(cert_dir: Path) -> None:
    env = {"DOCKER_HOST": REMOTE, "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(cert_dir)}
    settings = Settings.from_env(env)
    assert settings.docker_tls == (cert_dir / "ca.pem", cert_dir / "cert.pem", cert_dir / "key.pem")


def test_explicit_flags_replace_the_environment(
    cert_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = tmp_path_factory.mktemp("other")
    for name in ("ca.crt", "gw.crt", "gw.key"):
        (other / name).write_text("x")
    env = {"DOCKER_HOST": REMOTE, "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(cert_dir)}
    settings = Settings.from_env(
        env, docker_tls_ca=other / "ca.crt", docker_tls_cert=other / "gw.crt", docker_tls_key=other / "gw.key"
    )
    assert settings.docker_tls == (other / "ca.crt", other / "gw.crt", other / "gw.key")


def test_flags_alone_turn_tls_on(cert_dir: Path) -> None:
    settings = Settings.from_env(
        {},
        docker_host=REMOTE,
        docker_tls_ca=cert_dir / "ca.pem",
        docker_tls_cert=cert_dir / "cert.pem",
        docker_tls_key=cert_dir / "key.pem",
    )
    assert settings.docker_tls is not None


@pytest.mark.parametrize(
    ("env", "flags", "match"),
    [
        pytest.param(
            {"DOCKER_HOST": REMOTE},
            {"docker_tls_ca": "ca.pem"},
            "needs --docker-tls-ca, --docker-tls-cert and --docker-tls-key together",
            id="one-flag-only",
        ),
        pytest.param(
            {"DOCKER_HOST": REMOTE},
            {"docker_tls_cert": "cert.pem", "docker_tls_key": "key.pem"},
            "together",
            id="no-ca",
        ),
        pytest.param(
            {"DOCKER_HOST": REMOTE, "DOCKER_TLS_VERIFY": "1"},
            {},
            "DOCKER_CERT_PATH is not: set it to the directory holding ca.pem, cert.pem, key.pem",
            id="verify-without-cert-path",
        ),
        pytest.param(
            {"DOCKER_HOST": REMOTE, "DOCKER_TLS_VERIFY": "0", "DOCKER_CERT_PATH": "{certs}"},
            {},
            "Docker treats any value as 'on'. Unset it",
            id="verify-zero-is-ambiguous",
        ),
        pytest.param(
            {"DOCKER_HOST": REMOTE},
            {},
            "is an engine over TLS but no TLS material is configured: set DOCKER_TLS_VERIFY=1",
            id="tls-port-without-material",
        ),
        pytest.param(
            {"DOCKER_HOST": "https://engine.example:8443"},
            {},
            "no TLS material",
            id="https-without-material",
        ),
        pytest.param(
            {"DOCKER_HOST": "unix:///run/d.sock", "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": "{certs}"},
            {"allow_raw_socket": True},
            "not a tcp:// or https:// URL",
            id="tls-on-a-unix-socket",
        ),
    ],
)
def test_half_made_tls_setups_are_refused_with_what_to_do(
    cert_dir: Path, env: dict[str, str], flags: dict[str, object], match: str
) -> None:
    env = {k: v.replace("{certs}", str(cert_dir)) for k, v in env.items()}
    overrides = {k: (cert_dir / v if isinstance(v, str) else v) for k, v in flags.items()}
    with pytest.raises(ConfigError, match=match):
        Settings.from_env(env, **overrides)


def test_missing_tls_files_are_named(cert_dir: Path) -> None:
    (cert_dir / "key.pem").unlink()
    env = {"DOCKER_HOST": REMOTE, "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(cert_dir)}
    with pytest.raises(ConfigError, match=r"client key .*key\.pem does not exist"):
        Settings.from_env(env)
