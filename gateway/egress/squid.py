"""The egress proxy's processes: the tls stage first (front probes its parent when it starts), then
front; both as the `proxy` user with no capabilities when the gateway runs as root.

Policy changes need no restart: the helper re-reads policy.json. A change of limits (front.conf)
is a reconfigure of front alone (SIGHUP), which keeps open tunnels.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from gateway.egress.files import SQUID_USER, prepare, squid_ids, write_file, write_json
from gateway.egress.network import EGRESS_PORT, EgressNetwork
from gateway.egress.squid_conf import ProxyLayout, front_conf, tls_conf
from gateway.errors import EgressUnavailable
from policy.egress_model import Egress

__all__ = ["SquidPair", "host_addresses", "layout_for"]

_log = logging.getLogger("sandbox_gateway.egress")
_START_TIMEOUT_S = 30.0


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def host_addresses() -> tuple[str, ...]:
    """Every address of this host's interfaces (a proxy that reached one would reach the host)."""
    proc = subprocess.run(
        ["ip", "-o", "addr", "show"], capture_output=True, text=True, check=False, timeout=10
    )
    found = []
    for line in proc.stdout.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[2] in ("inet", "inet6"):
            found.append(fields[3].split("/")[0])
    return tuple(found)


def layout_for(
    network: EgressNetwork, state_dir: Path, *, hosts_file: Path | None = None, dns: tuple[str, ...] = ()
) -> ProxyLayout:
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    return ProxyLayout(
        network=network,
        state_dir=state_dir,
        tls_port=_free_loopback_port(),
        stage_token=secrets.token_urlsafe(32),
        python=python,
        hosts_file=hosts_file,
        dns=dns,
        host_addresses=host_addresses(),
    )


def _accepting(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _alive(pid_file: Path, *, needle: bytes) -> int | None:
    """The pid in `pid_file` if that process runs and its command line holds `needle`."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if needle in cmdline else None


def stop_orphans(root: Path) -> list[int]:
    """Stop Squids whose gateway is gone (it was killed and could not stop them): they would hold
    the egress port, and their policy no longer has an owner. Returns the pids stopped."""
    stopped = []
    for state in (path for path in root.glob("*/") if not path.name.endswith(".previous")):
        if _alive(state / "gateway.pid", needle=b"") is not None:
            continue
        for stage in ("front", "tls"):
            pid = _alive(state / "run" / f"{stage}.pid", needle=str(state / f"{stage}.conf").encode())
            if pid is not None:
                _log.warning("stopping an egress proxy left by a gateway that is gone (pid %d)", pid)
                os.kill(pid, signal.SIGKILL)
                stopped.append(pid)
    return stopped


class SquidPair:
    """front and tls for one gateway."""

    def __init__(self, layout: ProxyLayout) -> None:
        self.layout = layout
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._front_text = ""

    def _argv(self, stage: str) -> list[str]:
        squid = shutil.which("squid") or "/usr/sbin/squid"
        argv = [squid, "-N", "-f", str(self.layout.conf(stage))]
        if squid_ids() is None:
            return argv
        drop = [
            "setpriv",
            f"--reuid={SQUID_USER}",
            f"--regid={SQUID_USER}",
            "--init-groups",
            "--inh-caps=-all",
        ]
        return [*drop, *argv]

    def _tail(self, stage: str) -> str:
        log = self.layout.run_dir / f"{stage}-cache.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return text[-1200:]

    def _start_stage(self, stage: str, host: str, port: int) -> None:
        out = (self.layout.run_dir / f"{stage}.stdout").open("ab")
        with out:
            proc = subprocess.Popen(
                self._argv(stage), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=self.layout.run_dir,
            )  # fmt: skip
        self._procs[stage] = proc
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise EgressUnavailable(
                    f"the egress proxy's {stage} stage exited ({proc.returncode}): {self._tail(stage)}"
                )
            if _accepting(host, port):
                return
            time.sleep(0.05)
        raise EgressUnavailable(
            f"the egress proxy's {stage} stage did not listen on {host}:{port}: {self._tail(stage)}"
        )

    def start(self, profiles: Mapping[str, Egress], policy_doc: object) -> None:
        """Write everything, then start tls, then front (blocking; call it off the event loop)."""
        if shutil.which("squid") is None and not Path("/usr/sbin/squid").exists():
            raise EgressUnavailable(
                "Squid is not installed: run `sandbox-gateway setup` (it installs squid-openssl)"
            )
        stop_orphans(self.layout.state_dir.parent)
        cert, key = prepare(self.layout)
        (self.layout.state_dir / "gateway.pid").write_text(str(os.getpid()))
        write_json(self.layout.policy_file, policy_doc)
        write_file(self.layout.conf("tls"), tls_conf(self.layout, cert, key))
        self._front_text = front_conf(self.layout, profiles)
        write_file(self.layout.conf("front"), self._front_text)
        try:
            self._start_stage("tls", "127.0.0.1", self.layout.tls_port)
            self._start_stage("front", str(self.layout.network.gateway), EGRESS_PORT)
        except BaseException:
            self.stop()
            raise
        _log.info("egress proxy listening on %s", self.layout.network.proxy_url)

    def running(self) -> bool:
        return len(self._procs) == 2 and all(proc.poll() is None for proc in self._procs.values())

    def reconfigure(self, profiles: Mapping[str, Egress]) -> bool:
        """Rewrite front.conf for these limits; reconfigure front if it changed. True if it did."""
        text = front_conf(self.layout, profiles)
        if text == self._front_text:
            return False
        write_file(self.layout.conf("front"), text)
        self._front_text = text
        front = self._procs.get("front")
        if front is not None and front.poll() is None:
            os.kill(front.pid, signal.SIGHUP)
        return True

    def stop(self) -> None:
        """Stop both stages and their helpers (each stage leads a process group of its own)."""
        for proc in self._procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        deadline = time.monotonic() + 5
        for proc in self._procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._procs.clear()
