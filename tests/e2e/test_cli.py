"""The `sandbox-gateway` command as users run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from gateway.auth.tokens import TokenStore
from gateway.backend.docker_engine import DockerBackend
from tests.e2e.conftest import mcp_client, start_gateway, stop_gateway
from tests.support import audit_events


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_token_create_prints_the_token_once_as_the_last_line(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.jsonl"
    result = cli("token", "create", "--principal", "carol", "--profile", "default", "--tokens", str(tokens))
    assert result.returncode == 0
    token = result.stdout.strip().splitlines()[-1]
    entry, _ = TokenStore(tokens).verify(token)
    assert entry is not None and entry.principal == "carol"
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


@pytest.mark.parametrize("tamper", ["edit", "delete", "reorder"])
def test_audit_verify_passes_on_a_real_log_and_names_the_first_tampered_line(
    tmp_path: Path, tamper: str, backend: DockerBackend
) -> None:
    gateway = start_gateway(tmp_path)
    try:
        token = gateway.tokens["alice"]
        anyio.run(_two_calls, gateway.url, token)
    finally:
        stop_gateway(gateway)
    # A restarted gateway continues the same chain in the same file.
    (tmp_path / "again").mkdir()
    again = start_gateway(tmp_path / "again", "--audit-log", str(gateway.audit_log))
    stop_gateway(again)
    ok = cli("audit", "verify", str(gateway.audit_log), "--from-genesis")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("OK: ") and "chain from genesis" in ok.stdout

    assert len(audit_events(gateway.audit_log, "gateway.start")) == 2
    lines = gateway.audit_log.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if '"alice"' in line)  # alice's first event
    if tamper == "edit":
        lines[at] = lines[at].replace('"alice"', '"mallory"')
    elif tamper == "delete":
        del lines[at]
    else:
        lines[at], lines[at + 1] = lines[at + 1], lines[at]
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("\n".join(lines) + "\n")
    broken = cli("audit", "verify", str(tampered))
    assert broken.returncode == 1
    assert broken.stdout.startswith(f"BROKEN at {tampered}:{at + 1}:")


async def _two_calls(url: str, token: str) -> None:
    async with mcp_client(url, token) as client:
        await client.call_tool("execute_bash", {"command": "echo one"})
        await client.call_tool("execute_bash", {"command": "echo two"})


def test_serve_lifts_a_low_open_file_limit(tmp_path: Path, backend: DockerBackend) -> None:
    """Each sandbox agent holds a stream: a soft limit of 256 under a hard 8192 is lifted to 8192."""
    import resource

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 8192))

    gateway = start_gateway(tmp_path, preexec=low_soft_limit)
    try:
        limits = Path(f"/proc/{gateway.process.pid}/limits").read_text()
        row = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert row.split()[3:5] == ["8192", "8192"], row
    finally:
        stop_gateway(gateway)
