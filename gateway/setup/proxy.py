"""Start the socket proxy (HAProxy with compose/socket-proxy/haproxy.cfg) in front of the engine."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import time

from gateway.errors import SetupError
from gateway.setup.probe import http_status
from gateway.setup.state import SetupPaths, apt_install, pid_alive, say

__all__ = ["ensure_proxy", "proxy_is_filtering"]


def proxy_is_filtering(bind: str) -> bool:
    """True when `bind` answers like our proxy: the ping goes through, a volume listing is refused."""
    return http_status(bind, "/_ping") == 200 and http_status(bind, "/volumes") == 403


def _config_digest(paths: SetupPaths) -> str:
    return hashlib.sha256(
        paths.haproxy_cfg.read_bytes() + paths.proxy_bind.encode() + str(paths.docker_socket).encode()
    ).hexdigest()


def _stop(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def ensure_proxy(paths: SetupPaths) -> None:
    """Reuse a running proxy with the current config; otherwise (re)start HAProxy and check it filters."""
    paths.ensure_dirs()
    pid_file = paths.state_dir / "run" / "haproxy.pid"
    digest_file = paths.state_dir / "run" / "haproxy.cfg.sha256"
    digest = _config_digest(paths)
    pid = pid_alive(pid_file, "haproxy")
    if (
        pid
        and digest_file.exists()
        and digest_file.read_text() == digest
        and proxy_is_filtering(paths.proxy_bind)
    ):
        say(f"socket proxy answers on {paths.proxy_bind} (haproxy pid {pid})")
        return
    if pid:
        say(f"restarting the socket proxy (pid {pid}): its configuration changed or it stopped answering")
        _stop(pid)
    elif http_status(paths.proxy_bind, "/_ping") is not None:
        if proxy_is_filtering(paths.proxy_bind):
            say(f"a filtering socket proxy already answers on {paths.proxy_bind}; using it")
            return
        raise SetupError(
            f"{paths.proxy_bind} is taken by something that is not a filtering socket proxy "
            "(it answers /volumes). Stop it, or set SGW_PROXY_BIND to a free address."
        )
    if shutil.which("haproxy") is None:
        apt_install(["haproxy"], "the socket proxy runs on HAProxy")
    env = {**os.environ, "SGW_PROXY_BIND": paths.proxy_bind, "SGW_DOCKER_SOCKET": str(paths.docker_socket)}
    _haproxy(["-c", "-q", "-f", str(paths.haproxy_cfg)], env, f"{paths.haproxy_cfg} is invalid")
    say(f"starting the socket proxy on {paths.proxy_bind} -> {paths.docker_socket}")
    _haproxy(["-D", "-f", str(paths.haproxy_cfg), "-p", str(pid_file)], env, "haproxy failed to start")
    digest_file.write_text(digest)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proxy_is_filtering(paths.proxy_bind):
            say("socket proxy answers, and refuses what it should")
            return
        time.sleep(0.2)
    raise SetupError(
        f"the socket proxy on {paths.proxy_bind} did not answer /_ping with 200 and "
        "/volumes with 403 within 15 s"
    )


def _haproxy(args: list[str], env: dict[str, str], failure: str) -> None:
    proc = subprocess.run(["haproxy", *args], env=env, capture_output=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise SetupError(f"{failure}: {proc.stderr.decode(errors='replace')[-800:]}")
