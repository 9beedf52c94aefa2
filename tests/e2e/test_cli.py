"""The `sandbox-gateway` command as users run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gateway.tokens import TokenStore


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_token_create_prints_the_token_once_as_the_last_line(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.jsonl"
    result = cli("token", "create", "--principal", "carol", "--profile", "default", "--tokens", str(tokens))
    assert result.returncode == 0
    token = result.stdout.strip().splitlines()[-1]
    principal = TokenStore(tokens).verify(token)
    assert principal is not None and principal.id == "carol"
    assert token not in tokens.read_text()


def test_token_create_refuses_a_bad_principal_name(tmp_path: Path) -> None:
    result = cli("token", "create", "--principal", "../../etc", "--tokens", str(tmp_path / "t"))
    assert result.returncode == 2
    assert "invalid principal" in result.stderr


def test_serve_refuses_the_raw_engine_socket() -> None:
    result = cli("serve", "--docker-host", "unix:///var/run/docker.sock")
    assert result.returncode == 2
    assert "raw socket" in result.stderr and "--allow-raw-socket" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_a_policy_that_breaks_a_guardrail(tmp_path: Path) -> None:
    policy = tmp_path / "bad.yaml"
    policy.write_text(
        "version: 1\nprofiles:\n  default:\n    tools: [execute_bash]\n"
        "    sandbox: {images: [x], privileged: true}\n"
    )
    result = cli("serve", "--policy", str(policy))
    assert result.returncode == 2
    assert (
        "bad.yaml: profiles.default.sandbox.privileged: forbidden by guardrail no-privileged" in result.stderr
    )


def test_serve_refuses_an_empty_tokens_file(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.jsonl"
    tokens.write_text("")
    result = cli("serve", "--tokens", str(tokens))
    assert result.returncode == 2
    assert "holds no tokens" in result.stderr
