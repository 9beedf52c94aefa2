#!/usr/bin/env python3
"""The sandbox agent: PID 1 of a sandbox, running commands sent over the container's attach stream.

Standard library only; it is copied into the sandbox image as /opt/sandbox-gateway/agent.py and
started as the container's command, as the sandbox's uid.

Protocol:
- gateway -> agent, on stdin: one JSON object per line (JSON never holds a raw newline, so a line
  cut short by a dropped connection is simply discarded at the next newline).
  {"op": "hello", "nonce": str} | {"op": "run", "id": int, "argv": [str], "env": [str], "cwd": str,
  "deadline_s": float, "max_output": int} | {"op": "kill", "id": int} | {"op": "reap", "id": int}
- agent -> gateway, on stdout: frames of a 9-byte header (kind, request id, payload length; big
  endian) and the payload: output chunks (OUT, ERR), the end of a run (EXIT, JSON), a refusal
  (FAIL, JSON) and the answer to hello (HELLO, "<nonce> <protocol>").

Being PID 1 protects the agent from the code it runs: the kernel does not deliver a signal from
inside the sandbox to PID 1 unless it has a handler, and the agent installs none. It also marks
itself non-dumpable, so the same uid can neither ptrace it nor open /proc/1/fd. The gateway still
treats every byte from it as untrusted.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import struct
import sys
import threading
import time
from typing import Any

PROTOCOL = 1
HEADER = struct.Struct(">BII")
OUT, ERR, EXIT, HELLO, FAIL = 1, 2, 3, 4, 5
#: Largest payload of one frame; the gateway refuses anything bigger.
MAX_PAYLOAD = 64 * 1024
#: Longest request line (code travels in argv, capped well below this by the gateway).
MAX_REQUEST = 8 * 1024 * 1024
_PR_SET_DUMPABLE = 4


class Writer:
    """Frames onto stdout, one whole frame at a time."""

    def __init__(self, fd: int = 1) -> None:
        self._fd = fd
        self._lock = threading.Lock()

    def send(self, kind: int, request_id: int, payload: bytes) -> None:
        for start in range(0, max(len(payload), 1), MAX_PAYLOAD):
            piece = payload[start : start + MAX_PAYLOAD]
            frame = memoryview(HEADER.pack(kind, request_id, len(piece)) + piece)
            with self._lock:
                while frame:
                    try:
                        frame = frame[os.write(self._fd, frame) :]
                    except InterruptedError:
                        continue

    def send_json(self, kind: int, request_id: int, body: dict[str, Any]) -> None:
        self.send(kind, request_id, json.dumps(body, separators=(",", ":")).encode())


class Children:
    """Spawns commands and reaps every child, including orphans re-parented to PID 1."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[int, list[Any]] = {}
        self._spawned = threading.Event()
        threading.Thread(target=self._reap_forever, name="reaper", daemon=True).start()

    def spawn(self, argv: list[str], env: dict[str, str], cwd: str) -> tuple[int, int, int, threading.Event]:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        done = threading.Event()
        spawned = False
        try:
            with self._lock:  # registered before the reaper can see the exit
                if os.path.realpath(cwd) == os.getcwd():
                    pid = _spawn(argv, env, out_w, err_w)  # vfork-based: far cheaper than fork
                else:
                    pid = os.fork()
                    if pid == 0:  # pragma: no cover - the child execs or exits
                        _child(argv, env, cwd, out_w, err_w)
                self._waiting[pid] = [done, None]
                spawned = True
        finally:
            os.close(out_w)
            os.close(err_w)
            if not spawned:
                os.close(out_r)
                os.close(err_r)
        self._spawned.set()
        _prefer_for_oom_kill(pid)
        return pid, out_r, err_r, done

    def forget(self, pid: int) -> int | None:
        with self._lock:
            entry = self._waiting.pop(pid, None)
            return None if entry is None else entry[1]

    def _reap_forever(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                self._spawned.wait(1.0)
                self._spawned.clear()
                continue
            except InterruptedError:
                continue
            with self._lock:
                entry = self._waiting.get(pid)
                if entry is not None:
                    entry[1] = status
                    entry[0].set()


def _spawn(argv: list[str], env: dict[str, str], out_w: int, err_w: int) -> int:
    """posix_spawn in the agent's working directory: own session, stdin from /dev/null, the pipes
    as stdout and stderr, default dispositions for the signals Python ignores."""
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        return os.posix_spawnp(
            argv[0],
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, null, 0),
                (os.POSIX_SPAWN_DUP2, out_w, 1),
                (os.POSIX_SPAWN_DUP2, err_w, 2),
            ],
            setsid=True,
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT),
        )
    finally:
        os.close(null)


def _prefer_for_oom_kill(pid: int) -> None:
    """The OOM killer should pick the command, not the agent (raising a score needs no privilege)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/oom_score_adj", "w") as adj:
        adj.write("1000")


def _child(
    argv: list[str], env: dict[str, str], cwd: str, out_w: int, err_w: int
) -> None:  # pragma: no cover
    """In the forked child: own session and process group, clean descriptors and signals, exec."""
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        os.chdir(cwd)
        os.execvpe(argv[0], argv, env)  # noqa: S606 - the gateway's argv, run as the sandbox uid
    except OSError as exc:
        os.write(2, f"sandbox agent: cannot run {argv[0]!r}: {exc.strerror}\n".encode())
        os._exit(127 if isinstance(exc, FileNotFoundError) else 126)
    finally:
        os._exit(127)


def _exit_code(status: int | None) -> int | None:
    if status is None:
        return None
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


class Agent:
    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.children = Children()
        self._runs: dict[int, int] = {}
        self._runs_lock = threading.Lock()

    def handle(self, request: dict[str, Any]) -> None:
        op, request_id = request.get("op"), request.get("id", 0)
        if not isinstance(request_id, int) or not 0 <= request_id < 2**32:
            return
        if op == "hello":
            nonce = str(request.get("nonce", ""))[:64]
            self.writer.send(HELLO, 0, f"{nonce} {PROTOCOL}".encode())
        elif op == "run":
            try:
                threading.Thread(target=self._run_reporting, args=(request_id, request), daemon=True).start()
            except RuntimeError:
                self._fail(request_id, "no-thread", "the sandbox has no process slot left (pids limit)")
        elif op == "kill":
            with self._runs_lock:
                pid = self._runs.get(request_id)
            if pid is not None:
                _killpg(pid)
        elif op == "reap":
            self._reap(request_id)
        else:
            self._fail(request_id, "bad-request", f"unknown op {op!r}")

    def _fail(self, request_id: int, error: str, message: str) -> None:
        self.writer.send_json(FAIL, request_id, {"error": error, "message": message})

    def _reap(self, request_id: int) -> None:
        """Kill every process the sandbox's uid can signal, except PID 1 (this agent)."""
        try:
            os.kill(-1, signal.SIGKILL)
            code = 0
        except ProcessLookupError:
            code = 1
        self.writer.send_json(EXIT, request_id, {"exit_code": code, "deadline_hit": False})

    def _run_reporting(self, request_id: int, request: dict[str, Any]) -> None:
        try:
            self._run(request_id, request)
        except (TypeError, ValueError, KeyError) as exc:
            self._fail(request_id, "bad-request", f"malformed run request: {exc}")
        except OSError as exc:
            self._fail(request_id, "spawn-failed", f"the sandbox could not start the command: {exc.strerror}")

    def _run(self, request_id: int, request: dict[str, Any]) -> None:
        argv = [str(a) for a in request["argv"]]
        env = dict(str(item).partition("=")[::2] for item in request.get("env", []))
        cwd = str(request.get("cwd") or "/")
        cap = int(request["max_output"])
        if not argv:
            raise ValueError("empty argv")
        started = time.monotonic()
        run = _Run(started + float(request["deadline_s"]))
        if request.get("timeout_s") is not None:  # `timeout --kill-after=K T`, done here
            run.term_at = started + float(request["timeout_s"])
            run.kill_at = run.term_at + float(request.get("kill_after_s") or 0)
        pid, out_r, err_r, done = self.children.spawn(argv, env, cwd)
        run.pid = pid
        with self._runs_lock:
            self._runs[request_id] = pid
        try:
            totals = self._pump(request_id, {out_r: OUT, err_r: ERR}, cap, run)
            while not done.is_set() and not run.deadline_hit:
                done.wait(run.tick())
            if run.deadline_hit:
                done.wait(1.0)
        finally:
            with self._runs_lock:
                self._runs.pop(request_id, None)
            status = self.children.forget(pid)
        self.writer.send_json(
            EXIT,
            request_id,
            {
                "exit_code": run.exit_code(status),
                "deadline_hit": run.deadline_hit,
                "stdout_bytes": totals[OUT],
                "stderr_bytes": totals[ERR],
            },
        )

    def _pump(self, request_id: int, fds: dict[int, int], cap: int, run: _Run) -> dict[int, int]:
        """Forward both pipes until EOF, at most `cap` bytes each (the rest counted), minding the
        run's timers; stops at its hard deadline."""
        totals = {OUT: 0, ERR: 0}
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        open_fds = set(fds)
        try:
            while open_fds:
                wait = run.tick()
                if run.deadline_hit:
                    break
                for fd, _ in poller.poll(wait * 1000):
                    data = os.read(fd, MAX_PAYLOAD)
                    kind = fds[fd]
                    if not data:
                        poller.unregister(fd)
                        open_fds.discard(fd)
                        continue
                    room = cap - totals[kind]
                    if room > 0:
                        self.writer.send(kind, request_id, data[:room])
                    totals[kind] += len(data)
            return totals
        finally:
            for fd in fds:
                os.close(fd)


class _Run:
    """The clock of one command: TERM at its timeout, KILL `kill_after` later (as coreutils
    `timeout --kill-after` does, with its exit statuses), and a hard deadline for the whole call."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.term_at: float | None = None
        self.kill_at: float | None = None
        self.pid = 0
        self.termed = self.killed = self.deadline_hit = False

    def tick(self) -> float:
        """Send what is due; return the seconds until the next thing to do (0 after the deadline)."""
        now = time.monotonic()
        if self.term_at is not None and not self.termed and now >= self.term_at:
            self.termed = True
            _killpg(self.pid, signal.SIGTERM)
        if self.kill_at is not None and self.termed and not self.killed and now >= self.kill_at:
            self.killed = True
            _killpg(self.pid, signal.SIGKILL)
        if now >= self.deadline:
            self.deadline_hit = True
            _killpg(self.pid, signal.SIGKILL)
            return 0.0
        upcoming = [self.deadline]
        if self.term_at is not None and not self.termed:
            upcoming.append(self.term_at)
        elif self.kill_at is not None and not self.killed:
            upcoming.append(self.kill_at)
        return max(0.0, min(upcoming) - now)

    def exit_code(self, status: int | None) -> int | None:
        code = _exit_code(status)
        if code is None or not self.termed:
            return code
        return 128 + signal.SIGKILL if self.killed else 124


def _killpg(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, sig)


def _lines(fd: int) -> Any:
    """Request lines from stdin; an over-long line is skipped up to its newline."""
    buffer, skipping = bytearray(), False
    while True:
        try:
            data = os.read(fd, 1 << 20)
        except InterruptedError:
            continue
        if not data:
            return
        buffer += data
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                if len(buffer) > MAX_REQUEST:
                    buffer.clear()
                    skipping = True
                break
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if skipping:
                skipping = False
                continue
            if line.strip():
                yield line


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # no handler: PID 1 then ignores it from inside
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError, ImportError):
        print("sandbox agent: could not mark itself non-dumpable", file=sys.stderr, flush=True)
    agent = Agent(Writer())
    for line in _lines(0):
        try:
            request = json.loads(line)
        except ValueError:
            continue
        if isinstance(request, dict):
            agent.handle(request)
    threading.Event().wait()  # stdin closed: keep the sandbox alive for `docker exec`


if __name__ == "__main__":
    main()
