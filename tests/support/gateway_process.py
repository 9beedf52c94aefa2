"""`sandbox-gateway serve` as a real process on a free loopback port: the end-to-end tests' gateway and
the benchmark's.

Everything a gateway is given sits in its work directory: its tokens file (each principal with a
token), its audit log and its log (stderr). It is started with its own gateway id, so that the
sandboxes it makes can be told apart on a shared engine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from gateway.auth.tokens import TokenStore
from tests.support.net import free_port
from tests.support.waiting import eventually

__all__ = ["Gateway", "start_gateway", "stop_gateway"]


@dataclass
class Gateway:
    """A running gateway: its MCP endpoint (`url`), its base URL, and the files it writes."""

    url: str
    base: str
    gateway_id: str
    audit_log: Path
    log: Path
    process: subprocess.Popen[bytes]
    #: Each principal's bearer token.
    tokens: dict[str, str] = field(default_factory=dict)


def start_gateway(
    workdir: Path,
    *extra: str,
    principals: Mapping[str, str],
    gateway_id: str,
    docker_host: str,
    tenants: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    https: bool = False,
    preexec: Callable[[], None] | None = None,
    new_session: bool = False,
    timeout_s: float = 30,
) -> Gateway:
    """Write a token for each principal (name -> profile; its tenant from `tenants`, else `default`)
    to `workdir/tokens.jsonl`, start the gateway with `extra` arguments after its own, and wait until
    /health answers. An `--audit-log` among `extra` replaces `workdir/audit.jsonl` (to continue a
    chain, say); a later `--tokens` or `--docker-host` wins over the first. `new_session` starts it in
    a session of its own, so that a Ctrl-C in the terminal does not reach it. A gateway that exits or
    does not answer in `timeout_s` is stopped, and the start fails with the end of its log."""
    workdir.mkdir(parents=True, exist_ok=True)
    store = TokenStore(workdir / "tokens.jsonl")
    tokens = {
        name: store.create(name, profile=profile, tenant=(tenants or {}).get(name, "default"))
        for name, profile in principals.items()
    }
    port = free_port()
    audit_log = (
        Path(extra[extra.index("--audit-log") + 1]) if "--audit-log" in extra else workdir / "audit.jsonl"
    )
    argv = [
        sys.executable, "-m", "gateway.cli", "serve",
        "--port", str(port),
        "--tokens", str(workdir / "tokens.jsonl"),
        "--gateway-id", gateway_id,
        "--docker-host", docker_host,
        *extra,
    ]  # fmt: skip
    if "--audit-log" not in extra:
        argv += ["--audit-log", str(audit_log)]
    log = workdir / "gateway.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, **(env or {})},
            preexec_fn=preexec,  # noqa: PLW1509 - a test's own set-up before exec (a resource limit)
            start_new_session=new_session,
        )
    base = f"{'https' if https else 'http'}://127.0.0.1:{port}"
    gateway = Gateway(f"{base}/mcp", base, gateway_id, audit_log, log, process, tokens)

    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"gateway {gateway_id} exited: {log.read_text()[-2000:]}")
        return httpx.get(f"{base}/health", timeout=1, verify=False).status_code == 200  # noqa: S501

    try:
        eventually(
            healthy,
            timeout_s=timeout_s,
            retry_on=(httpx.HTTPError,),
            message=f"gateway {gateway_id} did not answer /health",
        )
    except BaseException:  # also an interrupt: the gateway must not outlive its start
        stop_gateway(gateway)
        raise
    return gateway


def stop_gateway(gateway: Gateway, timeout_s: float = 60) -> bool:
    """SIGTERM, as an orchestrator sends (the gateway removes its sandboxes), then wait; SIGKILL if it
    has not stopped after `timeout_s`. True when it stopped by itself (or had already)."""
    process = gateway.process
    if process.poll() is not None:
        return True
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
        return False
    return True
