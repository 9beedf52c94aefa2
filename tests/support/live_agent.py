"""A whole sandbox agent for tests: started as the sandbox image starts it (`python3 -I -S
.../agent.py`, from the files the image recipe installs), in a child that Popen first drops to a uid
of its own, used by nothing else on the machine: real, effective and saved uid and gid, no
supplementary groups, no capabilities, all checked before the agent is even read.

The agent's `reap` sends SIGKILL to every process its uid may signal (`kill(-1)`); run as root on a
host, that is every process of the machine. So no agent runs here as root. Without root to drop
from, the tests that need one are skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.agent.protocol import ERR, EXIT, FAIL, HEADER, HELLO, OUT, RESULT, RESULT_PART
from gateway.setup.image_recipe import add_shipped

__all__ = ["DEDICATED_UID", "Ended", "LiveAgent", "dead", "interpreter", "launcher", "live", "pids_of"]

#: The uid (and gid) the agents of this test process run as: one per test process, far above any
#: account or sandbox range, so `reap` can only ever reach this module's own processes.
DEDICATED_UID = 2_100_000_000 + os.getpid()


@pytest.fixture(scope="module")
def launcher() -> Iterator[Path]:
    """The files the image recipe installs, in a temporary root readable by any uid: the agent's
    launcher there (root-owned and read-only, as in the image)."""
    if os.geteuid() != 0:
        pytest.skip("whole agents run under a dedicated uid, and only root can drop to one")
    root = Path(tempfile.mkdtemp(prefix="sgw-agent-image-"))
    try:
        root.chmod(0o755)
        archive = root / "shipped.tar"
        with tarfile.open(archive, "w") as tar:
            add_shipped(tar)
        with tarfile.open(archive) as tar:
            tar.extractall(root / "image", filter="tar")
        for directory in (root / "image", root / "image" / "opt"):
            directory.chmod(0o755)
        yield root / "image" / "opt" / "sandbox-gateway" / "agent.py"
    finally:
        shutil.rmtree(root)


@pytest.fixture(scope="module")
def interpreter(launcher: Path) -> str:
    """A python3 the dedicated uid can run (a virtual environment's may live in root's home)."""
    for candidate in ("/usr/bin/python3", shutil.which("python3"), sys.executable):
        if candidate is None:
            continue
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            probe = subprocess.run(
                [candidate, "-I", "-S", "-c", "import ctypes, select"],
                user=DEDICATED_UID,
                group=DEDICATED_UID,
                extra_groups=[],
                capture_output=True,
                timeout=30,
                check=False,
            )
            if probe.returncode == 0:
                return candidate
    pytest.skip("no python3 that an unprivileged uid can run")


#: Runs in the child after Popen dropped it to the dedicated uid: checks that it did, sets the
#: limits a test asks for, then runs the launcher as the container would.
_AS_SANDBOX_UID = """
import os, resource, runpy, sys
launcher, uid, nproc, nofile = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with open("/proc/self/status") as status:
    capabilities = [line.split()[1] for line in status if line.startswith(("CapEff", "CapPrm"))]
if os.getresuid() != (uid,) * 3 or os.getresgid() != (uid,) * 3 or os.getgroups() or any(
    int(c, 16) for c in capabilities
):
    sys.exit("not confined to the dedicated uid: the agent does not start")
if nproc:
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
if nofile:
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
sys.argv = [launcher]
runpy.run_path(launcher, run_name="__main__")
"""


@dataclass
class Ended:
    """A request's frames up to its end (EXIT or FAIL)."""

    kind: int
    body: dict[str, Any]
    out: bytes
    err: bytes
    frames: list[tuple[int, int, bytes]]
    seconds: float
    #: run_python: the interpreter's answer, decoded (None when it gave none).
    answer: dict[str, Any] | None = None


class LiveAgent:
    """An agent process under the dedicated uid, spoken to over its stdin and stdout."""

    def __init__(self, interpreter: str, launcher: Path, *, nproc: int = 0, nofile: int = 0) -> None:
        self.errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.proc = subprocess.Popen(
            [
                interpreter,
                "-I",
                "-S",
                "-c",
                _AS_SANDBOX_UID,
                str(launcher),
                str(DEDICATED_UID),
                str(nproc),
                str(nofile),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.errors,
            user=DEDICATED_UID,
            group=DEDICATED_UID,
            extra_groups=[],
            start_new_session=True,
            cwd="/",
            env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"},
        )
        self.data = b""
        self.next_id = 1

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, request: dict[str, Any]) -> None:
        self.write(json.dumps(request).encode() + b"\n")

    def frame(self, timeout: float = 20.0) -> tuple[int, int, bytes]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            if len(self.data) >= HEADER.size:
                kind, request_id, length = HEADER.unpack_from(self.data)
                if len(self.data) >= HEADER.size + length:
                    body = self.data[HEADER.size : HEADER.size + length]
                    self.data = self.data[HEADER.size + length :]
                    return kind, request_id, body
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError(f"no frame from the agent; its stderr: {self.stderr()!r}")
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise EOFError(f"the agent ended; its stderr: {self.stderr()!r}")
            self.data += chunk

    def stderr(self) -> bytes:
        self.errors.seek(0)
        return self.errors.read()

    def hello(self, nonce: str = "n") -> bytes:
        self.send({"op": "hello", "nonce": nonce})
        kind, request_id, body = self.frame()
        assert (kind, request_id) == (HELLO, 0)
        return body

    def request(self, op: str, timeout: float = 20.0, **fields: Any) -> Ended:
        """Send one request and collect its frames until it ends."""
        request_id, self.next_id = self.next_id, self.next_id + 1
        started = time.monotonic()
        self.send({"op": op, "id": request_id, **fields})
        frames = []
        while True:
            kind, rid, body = self.frame(timeout)
            assert rid == request_id, "frames of one request at a time"
            frames.append((kind, rid, body))
            if kind in (EXIT, FAIL, RESULT):
                streams: dict[int, bytes] = {OUT: b"", ERR: b"", RESULT_PART: b""}
                for k, _, payload in frames[:-1]:
                    streams[k] += payload
                if kind == RESULT:  # a summary line, then the interpreter's answer (if any)
                    summary, _, answer = (streams[RESULT_PART] + body).partition(b"\n")
                    ended = Ended(kind, json.loads(summary), streams[OUT], streams[ERR], frames, 0.0)
                    ended.answer = json.loads(answer) if answer else None
                else:
                    ended = Ended(kind, json.loads(body), streams[OUT], streams[ERR], frames, 0.0)
                ended.seconds = time.monotonic() - started
                return ended

    def run(
        self, argv: list[str], *, deadline_s: float = 20, max_output: int = 1 << 20, **fields: Any
    ) -> Ended:
        return self.request("run", argv=argv, deadline_s=deadline_s, max_output=max_output, **fields)

    def close(self) -> None:
        """Reap (every process of the dedicated uid but the agent), end the agent, then end whatever
        of that uid is left (only this module's processes have it)."""
        with contextlib.suppress(OSError, TimeoutError, EOFError, AssertionError):
            if self.proc.poll() is None:
                self.request("reap", timeout=5)
        self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout, self.errors):
            if stream is not None:
                stream.close()
        for pid in pids_of(DEDICATED_UID):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def pids_of(uid: int) -> list[int]:
    """Processes whose real, effective or saved uid is `uid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{entry}/status").read_text()
            uids = next(line.split()[1:4] for line in status.splitlines() if line.startswith("Uid:"))
            if str(uid) in uids:
                found.append(int(entry))
    return found


def dead(pid: int, timeout: float = 10.0) -> bool:
    """Whether `pid` is gone (or only a zombie waiting for its new parent) within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def live(interpreter: str, launcher: Path) -> Iterator[LiveAgent]:
    """A whole agent under the dedicated uid, ended (with every process of that uid) after the test."""
    agent = LiveAgent(interpreter, launcher)
    try:
        yield agent
    finally:
        agent.close()
