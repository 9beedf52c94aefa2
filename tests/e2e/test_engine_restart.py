"""Faults against the real engine: dockerd restarted while idle and while a call runs.

The engine restarted here is a private one: a second dockerd with its own data root, exec root,
managed containerd, socket, network namespace (so its bridge and iptables rules are its own; a
dockerd without a bridge would delete the host's `docker0`) and setup's daemon.json, behind a
private socket proxy (the project's own). The shared engine other tests use is never
touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest

from gateway.setup.engine import daemon_config
from gateway.setup.probe import unix_http_status
from gateway.setup.state import SetupPaths
from tests.conftest import IMAGE
from tests.e2e.conftest import Gateway, mcp_client, start_gateway, stop_gateway
from tests.e2e.test_cli import cli
from tests.e2e.test_faults import PrivateProxy

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

#: Private engines live here, one directory per run; short, so socket paths stay under 108 bytes.
ENGINES = Path(tempfile.gettempdir()) / "sgw-engines"


def _pid_of(pid_file: Path, marker: str) -> int | None:
    """The pid in `pid_file` if that process is alive and its command line mentions `marker`."""
    try:
        pid = int(pid_file.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    return pid if marker.encode() in cmdline else None


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


class PrivateEngine:
    """A second dockerd, started and stopped at will; everything it owns sits under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "docker.sock"
        self.pid_file = root / "dockerd.pid"
        self.config = root / "daemon.json"
        self.log = root / "dockerd.log"
        self.process: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True)
        (root / "owner").write_text(str(os.getpid()))
        self.config.write_text(json.dumps(daemon_config(shutil.which("runsc")), indent=2) + "\n")

    @property
    def containerd_pid_file(self) -> Path:
        return self.root / "exec" / "containerd" / "containerd.pid"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    "unshare",  # its own network namespace; unshare execs dockerd (same pid)
                    "--net",
                    "dockerd",
                    "--config-file",
                    str(self.config),
                    "--data-root",
                    str(self.root / "data"),
                    "--exec-root",
                    str(self.root / "exec"),
                    "--pidfile",
                    str(self.pid_file),
                    "--host",
                    f"unix://{self.socket}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while unix_http_status(self.socket, timeout=1) != 200:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"private dockerd did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def stop(self, *, containerd_too: bool = False) -> None:
        """SIGTERM, as `systemctl stop docker` does. With live-restore dockerd leaves the containers
        running (their shims outlive containerd too); a containerd that outlives dockerd is stopped
        as well when `containerd_too` (the rig's end)."""
        if self.process is None:
            return
        started = time.monotonic()
        containerd = _pid_of(self.containerd_pid_file, str(self.root))
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        self.process = None
        if containerd is not None and containerd_too and Path(f"/proc/{containerd}").exists():
            os.kill(containerd, signal.SIGTERM)
            assert _wait_gone(containerd, 30), "the private containerd did not stop"
        print(f"private dockerd stopped in {time.monotonic() - started:.1f} s")

    def docker(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        """The docker CLI on this engine's own socket (test set-up and checks only)."""
        return subprocess.run(
            ["docker", "-H", f"unix://{self.socket}", *args],
            capture_output=True,
            check=True,
            timeout=300,
            **kwargs,
        )

    def load_sandbox_image(self) -> None:
        """Copy the shared engine's sandbox image, so both run exactly what `make setup` built.
        (`docker save | docker load` takes about 3 s; importing setup's cached root filesystem is a
        second faster but would repeat setup's recipe here.)"""
        shared = SetupPaths.from_env().docker_socket
        with subprocess.Popen(
            ["docker", "-H", f"unix://{shared}", "save", IMAGE], stdout=subprocess.PIPE
        ) as save:
            self.docker("load", stdin=save.stdout)
        assert save.returncode == 0, f"docker save {IMAGE} failed on {shared}"

    def containers(self) -> list[str]:
        return self.docker("ps", "-aq", "--no-trunc").stdout.decode().split()


def _processes_mentioning(marker: str) -> list[tuple[int, bytes]]:
    """(pid, command line) of every process whose command line names a path under `marker`."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            with contextlib.suppress(OSError):
                cmdline = (proc / "cmdline").read_bytes()
                if f"{marker}/".encode() in cmdline:
                    found.append((int(proc.name), cmdline))
    return found


def _clean(root: Path) -> None:
    """Stop whatever a run left under `root`, unmount what it mounted there, and remove it.

    Every process of a run names its directory (a random name) on its command line: the gateway (its
    tokens and audit log), dockerd, containerd, the container shims and the socket proxy. The gateway goes
    first, dockerd gets SIGTERM so that it stops its containers, anything left gets SIGKILL."""
    marker = str(root)
    for pid, cmdline in _processes_mentioning(marker):
        if b"gateway.cli" in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for pid_file in (root / "dockerd.pid", root / "exec" / "containerd" / "containerd.pid"):
        pid = _pid_of(pid_file, marker)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            _wait_gone(pid, 30)
    for pid, _ in _processes_mentioning(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 10)
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(f"{marker}/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def _clean_stale_engines() -> None:
    """A killed run leaves its directory, pid files and maybe its daemons: clear those whose owner
    is gone. Directories of runs still going (another checkout's `make test`) are left alone."""
    if not ENGINES.is_dir():
        return
    for root in ENGINES.iterdir():
        try:
            owner = int((root / "owner").read_text())
        except (OSError, ValueError):
            owner = 0
        with contextlib.suppress(OSError):
            if owner and b"python" in Path(f"/proc/{owner}/cmdline").read_bytes():
                continue
        _clean(root)


@dataclass
class Rig:
    engine: PrivateEngine
    proxy: PrivateProxy
    gateway: Gateway


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """Private engine, private proxy, gateway. Afterwards: no container left in the engine, no process
    of the rig left running, nothing mounted, the directory gone (its logs are kept in pytest's tmp)."""
    _clean_stale_engines()
    engine = PrivateEngine(ENGINES / uuid.uuid4().hex[:8])
    proxy = PrivateProxy(engine.root, docker_socket=engine.socket)
    gateway: Gateway | None = None
    try:
        started = time.monotonic()
        engine.start()
        engine.load_sandbox_image()
        print(f"\nprivate engine up and sandbox image loaded in {time.monotonic() - started:.1f} s")
        proxy.start()
        (engine.root / "gateway").mkdir()
        gateway = start_gateway(engine.root / "gateway", "--docker-host", proxy.url)
        yield Rig(engine, proxy, gateway)
        if engine.process is None:
            engine.start()
        stop_gateway(gateway)
        gateway = None
        assert engine.containers() == [], "the gateway left containers in the private engine"
    finally:
        try:
            if gateway is not None and gateway.process is not None:
                gateway.process.kill()
                gateway.process.wait(timeout=30)
            proxy.stop()
            engine.stop(containerd_too=True)
            left = _processes_mentioning(str(engine.root))
            # A container's shim exits just after its container is gone: give it a bounded moment.
            deadline = time.monotonic() + 15
            while left and time.monotonic() < deadline:
                time.sleep(0.2)
                left = _processes_mentioning(str(engine.root))
        finally:
            logs = tmp_path_factory.mktemp("engine-restart-logs")
            for log in ("dockerd.log", "gateway/gateway.log", "gateway/audit.jsonl"):
                with contextlib.suppress(OSError):
                    shutil.copy(engine.root / log, logs)
            _clean(engine.root)
    assert left == [], f"processes of the rig still run: {left}"
    mounts = Path("/proc/self/mounts").read_text()
    assert f"{engine.root}/" not in mounts and not engine.root.exists(), "the rig's directory is gone"


async def call(rig: Rig, command: str) -> Any:
    async with mcp_client(rig.gateway.url, rig.gateway.tokens["alice"]) as client:
        return await client.call_tool("execute_bash", {"command": command})


def sandboxes(rig: Rig) -> list[str]:
    """The principals' sandboxes (not the warm pool's unassigned ones)."""
    rows = (
        rig.engine.docker(
            "ps",
            "-a",
            "--no-trunc",
            "--format",
            "{{.ID}} {{.Names}}",
            "--filter",
            f"label=sandbox-gateway.gateway={rig.gateway.gateway_id}",
        )
        .stdout.decode()
        .splitlines()
    )
    return [row.split()[0] for row in rows if not row.split()[1].startswith("sgw-pool-")]


def container_state(rig: Rig, container_id: str) -> dict[str, Any]:
    """The engine's view of a container (`State` of `docker inspect`)."""
    return dict(json.loads(rig.engine.docker("inspect", container_id).stdout)[0]["State"])


def ready(rig: Rig) -> httpx.Response:
    return httpx.get(f"{rig.gateway.base}/ready", timeout=30)


def wait_ready(rig: Rig) -> None:
    deadline = time.monotonic() + 60
    while ready(rig).status_code != 200:
        assert time.monotonic() < deadline, f"/ready never came back: {ready(rig).text}"
        time.sleep(0.2)


def audit_events(rig: Rig) -> list[dict[str, Any]]:
    return [json.loads(line) for line in rig.gateway.audit_log.read_text().splitlines()]


def assert_engine_down(rig: Rig) -> None:
    """While dockerd is down: /ready is 503 and says the engine is unreachable; the gateway serves."""
    answer = ready(rig)
    assert answer.status_code == 503, answer.text
    body = answer.json()
    assert body["engine"] is False and body["ready"] is False
    assert "Docker engine" in body["error"], body
    assert httpx.get(f"{rig.gateway.base}/health").status_code == 200


def tool_error(result: Any) -> str:
    """The stable code of a failed call, after checking that its message is a clear one: the code is
    about the engine or the sandbox, the message names it, and no trace or internal path leaks."""
    assert result.is_error, result.content
    text = result.content[0].text
    match = re.search(r"\b((?:engine|sandbox)-[a-z-]+): (.+)$", text, re.DOTALL)
    assert match is not None, f"not an engine or sandbox error: {text}"
    code, message = match.groups()
    assert "engine" in message or "sandbox" in message, text
    assert "Traceback" not in text and 'File "' not in text, text
    return code


def assert_every_call_recorded(rig: Rig, since: int, calls: int, errors: list[str]) -> None:
    """Each call after event `since` has its decision, start and finish events, each error is recorded
    with the code its caller got, and the whole chain holds."""
    events = audit_events(rig)[since:]
    decided = [e for e in events if e["event"] == "policy.decision" and e["decision"]["result"] == "allow"]
    started = [e for e in events if e["event"] == "exec.start"]
    finished = [e for e in events if e["event"] == "exec.finish"]
    failed = [e for e in finished if e["outcome"]["status"] == "error"]
    assert len(decided) == len(started) == len(finished) == calls
    assert {e["request_id"] for e in started} == {e["request_id"] for e in finished}
    assert [e["outcome"]["error"] for e in failed] == errors, failed
    verify = cli("audit", "verify", str(rig.gateway.audit_log), "--from-genesis")
    assert verify.returncode == 0, verify.stdout


async def test_dockerd_restarted_while_idle(rig: Rig) -> None:
    since = len(audit_events(rig))
    first = await call(rig, "echo before > /workspace/f; cat /workspace/f")
    assert first.structured_content["stdout"] == "before\n", first.content
    [old] = sandboxes(rig)
    assert ready(rig).status_code == 200
    started = container_state(rig, old)
    made = len(audit_events(rig))

    rig.engine.stop()
    assert_engine_down(rig)
    down = tool_error(await call(rig, "echo during"))

    rig.engine.start()
    wait_ready(rig)
    # live-restore: the sandbox kept running while dockerd was down, and the engine took it back.
    kept = container_state(rig, old)
    assert kept["Running"] and kept["Pid"] == started["Pid"], (started, kept)
    assert kept["StartedAt"] == started["StartedAt"], (started, kept)
    # So the gateway carries on in it: the files are there, and the call says nothing was replaced.
    after = await call(rig, "cat /workspace/f 2>/dev/null || echo fresh")
    assert after.structured_content["stdout"] == "before\n", after.content
    assert after.structured_content["sandbox_replaced"] is False, after.content
    assert sandboxes(rig) == [old]
    changes = [
        e
        for e in audit_events(rig)[made:]
        if e["event"] in ("sandbox.remove", "sandbox.create", "sandbox.assign")
        and not e.get("detail", {}).get("pool")
        and not str(e.get("detail", {}).get("reason", "")).startswith("pool-")
    ]
    assert changes == [], "no principal's sandbox was removed or replaced"
    assert_every_call_recorded(rig, since, calls=3, errors=[down])


async def test_dockerd_restarted_while_a_call_runs(rig: Rig) -> None:
    since = len(audit_events(rig))
    before = await call(rig, "echo ok")
    assert before.structured_content["stdout"] == "ok\n", before.content
    [sandbox] = sandboxes(rig)
    results: list[Any] = []

    async def long_call() -> None:
        results.append(await call(rig, "sleep 30; echo done"))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(long_call)
        deadline = time.monotonic() + 30
        while b"sleep 30" not in rig.engine.docker("top", sandbox).stdout:
            assert time.monotonic() < deadline, "the long call never started"
            await anyio.sleep(0.1)
        await anyio.to_thread.run_sync(rig.engine.stop)
        with anyio.fail_after(60):  # a hung call would fail here rather than block the suite
            while not results:
                await anyio.sleep(0.1)
        assert_engine_down(rig)
    [interrupted] = results
    print(f"the interrupted call answered: {interrupted.content[0].text}")
    code = tool_error(interrupted)
    assert "done" not in interrupted.content[0].text
    assert rig.gateway.process is not None and rig.gateway.process.poll() is None, "the gateway still runs"

    rig.engine.start()
    wait_ready(rig)
    # live-restore kept the sandbox through the restart; only the interrupted call's result is lost.
    after = await call(rig, "echo after")
    assert after.structured_content["stdout"] == "after\n", after.content
    assert sandboxes(rig) == [sandbox], "the sandbox survived the engine restart and serves on"
    assert_every_call_recorded(rig, since, calls=3, errors=[code])
