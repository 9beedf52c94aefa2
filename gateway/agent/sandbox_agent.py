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
  (FAIL, JSON: `error` is bad-request, spawn-failed or no-resources, and a `message`) and the
  answer to hello (HELLO, "<nonce> <protocol>").

The code it runs has the agent's uid, so the agent keeps itself out of that code's reach:
- It is PID 1 and has a single thread (one event loop, no helper threads), so "PID 1" names all of it.
  Linux delivers no signal from inside the sandbox to a PID 1 unless it has a handler for it;
  gVisor delivers them all the same, so the seccomp profile refuses every signal call aimed at
  PID 1 (seccomp/README.md), and the agent ignores every signal it can (SIGCHLD only wakes its loop).
- The seccomp profile lets code change only its own limits, priority and scheduling, not the agent's.
- It marks itself non-dumpable, so the same uid can neither ptrace it nor open /proc/1/fd under Linux.
- It never blocks on the gateway: output goes out through a queue written as stdout takes it, and
  requests keep being read meanwhile.
- A command it cannot start for want of processes, memory or descriptors is reported as
  `no-resources`: the gateway then replaces the sandbox rather than calling it again.
The gateway still treats every byte from it as untrusted.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import select
import signal
import struct
import sys
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
#: Errors of starting a command that mean the sandbox is out of a resource (processes, memory, descriptors).
NO_RESOURCES = frozenset({errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE})
#: Output queued for the gateway beyond which the agent stops reading commands' pipes until it drains.
_BACKLOG = 1 << 20
#: After a run's hard deadline, how long its exit status is awaited before the result goes without it.
_AFTER_DEADLINE_S = 1.0
_UNCATCHABLE = (signal.SIGKILL, signal.SIGSTOP)


class Writer:
    """Frames for the gateway, queued and written as stdout takes them: the agent never blocks on it."""

    def __init__(self, fd: int = 1) -> None:
        self.fd = fd
        self.pending = bytearray()
        os.set_blocking(fd, False)

    def send(self, kind: int, request_id: int, payload: bytes) -> None:
        for start in range(0, max(len(payload), 1), MAX_PAYLOAD):
            piece = payload[start : start + MAX_PAYLOAD]
            self.pending += HEADER.pack(kind, request_id, len(piece)) + piece
        self.flush()

    def send_json(self, kind: int, request_id: int, body: dict[str, Any]) -> None:
        self.send(kind, request_id, json.dumps(body, separators=(",", ":")).encode())

    def flush(self) -> None:
        while self.pending:
            try:
                written = os.write(self.fd, self.pending)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # nobody reads stdout any more: what was for the gateway is lost anyway
                self.pending.clear()
                return
            del self.pending[:written]


def _ignore_signals() -> list[int]:
    """Ignore every signal that can be ignored; SIGCHLD gets a handler (it only wakes the loop).
    Returns the signals whose disposition a command must get back to default."""
    changed: list[int] = []
    for sig in signal.valid_signals():
        if sig in _UNCATCHABLE:
            continue
        try:
            signal.signal(sig, (lambda *_: None) if sig == signal.SIGCHLD else signal.SIG_IGN)
        except (OSError, ValueError):
            continue
        changed.append(sig)
    return changed


def _spawn(argv: list[str], env: dict[str, str], out_w: int, err_w: int, *, defaults: list[int]) -> int:
    """posix_spawn in the agent's working directory: own session, stdin from /dev/null, the pipes
    as stdout and stderr, every signal the agent ignores back to its default."""
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
            setsigdef=defaults,
        )
    finally:
        os.close(null)


def _prefer_for_oom_kill(pid: int) -> None:
    """The OOM killer should pick the command, not the agent (raising a score needs no privilege)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/oom_score_adj", "w") as adj:
        adj.write("1000")


def _child(
    argv: list[str], env: dict[str, str], cwd: str, out_w: int, err_w: int, *, defaults: list[int]
) -> None:  # pragma: no cover
    """In the forked child: own session and process group, clean descriptors and signals, exec."""
    try:
        signal.set_wakeup_fd(-1)
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        for sig in defaults:
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


class _Run:
    """One command: its pipes, its clock (TERM at its timeout, KILL `kill_after` later, as coreutils
    `timeout --kill-after` does, with its exit statuses) and a hard deadline for the whole call."""

    def __init__(self, request_id: int, deadline: float, cap: int) -> None:
        self.request_id = request_id
        self.deadline = deadline
        self.cap = cap
        self.term_at: float | None = None
        self.kill_at: float | None = None
        self.report_at: float | None = None
        self.pid = 0
        self.status: int | None = None
        self.pipes: dict[int, int] = {}
        self.totals = {OUT: 0, ERR: 0}
        self.termed = self.killed = self.deadline_hit = False

    def tick(self, now: float) -> float:
        """Send what is due; return the seconds until the next thing to do."""
        if self.term_at is not None and not self.termed and now >= self.term_at:
            self.termed = True
            _killpg(self.pid, signal.SIGTERM)
        if self.kill_at is not None and self.termed and not self.killed and now >= self.kill_at:
            self.killed = True
            _killpg(self.pid, signal.SIGKILL)
        if now >= self.deadline and not self.deadline_hit:
            self.deadline_hit = True
            self.report_at = now + _AFTER_DEADLINE_S
            _killpg(self.pid, signal.SIGKILL)
        upcoming = [self.report_at if self.report_at is not None else self.deadline]
        if self.term_at is not None and not self.termed:
            upcoming.append(self.term_at)
        elif self.kill_at is not None and not self.killed:
            upcoming.append(self.kill_at)
        return max(0.0, min(upcoming) - now)

    def finished(self, now: float) -> bool:
        if self.deadline_hit:
            return self.status is not None or now >= (self.report_at or now)
        return not self.pipes and self.status is not None

    def exit_code(self) -> int | None:
        code = _exit_code(self.status)
        if code is None or not self.termed:
            return code
        return 128 + signal.SIGKILL if self.killed else 124


def _parse_run(request_id: int, request: dict[str, Any]) -> tuple[_Run, list[str], dict[str, str], str]:
    """A run request's command, environment, working directory and clock."""
    argv = [str(a) for a in request["argv"]]
    env = dict(str(item).partition("=")[::2] for item in request.get("env", []))
    cwd = str(request.get("cwd") or "/")
    if not argv:
        raise ValueError("empty argv")
    started = time.monotonic()
    run = _Run(request_id, started + float(request["deadline_s"]), int(request["max_output"]))
    if request.get("timeout_s") is not None:  # `timeout --kill-after=K T`, done here
        run.term_at = started + float(request["timeout_s"])
        run.kill_at = run.term_at + float(request.get("kill_after_s") or 0)
    return run, argv, env, cwd


def _killpg(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, sig)


class Agent:
    """One event loop over stdin (requests), stdout (queued frames), the commands' pipes and SIGCHLD."""

    def __init__(self, writer: Writer, stdin: int = 0) -> None:
        self.writer = writer
        self.stdin = stdin
        self.defaults = _ignore_signals()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        self.poller = select.poll()
        self.watched: dict[int, int] = {}
        self.runs: dict[int, _Run] = {}
        self.by_pid: dict[int, _Run] = {}
        self.by_pipe: dict[int, _Run] = {}
        self.buffer = bytearray()
        self.skipping = False
        self.reading = True

    # -- the loop --------------------------------------------------------------------------------

    def serve(self) -> None:
        while True:
            self._watch()
            timeout = self._tick()
            for fd, _ in self.poller.poll(None if timeout is None else timeout * 1000):
                if fd == self.stdin:
                    self._read_requests()
                elif fd == self.wake_r:
                    self._reap()
                elif fd == self.writer.fd:
                    self.writer.flush()
                elif fd in self.by_pipe:
                    self._pump(fd)

    def _watch(self) -> None:
        """What the next poll waits for: requests always, output pipes only while stdout keeps up."""
        wanted = {self.wake_r: select.POLLIN}
        if self.reading:
            wanted[self.stdin] = select.POLLIN
        if self.writer.pending:
            wanted[self.writer.fd] = select.POLLOUT
        if len(self.writer.pending) < _BACKLOG:
            wanted.update(dict.fromkeys(self.by_pipe, select.POLLIN))
        for fd in [fd for fd in self.watched if fd not in wanted]:
            self.poller.unregister(fd)
            del self.watched[fd]
        for fd, mask in wanted.items():
            if self.watched.get(fd) != mask:
                self.poller.register(fd, mask)
                self.watched[fd] = mask

    def _tick(self) -> float | None:
        """Run every command's clock, report the finished ones; the seconds until the next timer."""
        now = time.monotonic()
        waits = []
        for run in list(self.runs.values()):
            wait = run.tick(now)
            if run.deadline_hit:
                self._close_pipes(run)
            if run.finished(now):
                self._report(run)
            else:
                waits.append(wait)
        return min(waits) if waits else None

    # -- requests --------------------------------------------------------------------------------

    def _read_requests(self) -> None:
        try:
            data = os.read(self.stdin, 1 << 20)
        except InterruptedError:
            return
        if not data:  # stdin closed: keep the sandbox alive (for `docker exec`) and runs going
            self.reading = False
            return
        self.buffer += data
        while True:
            end = self.buffer.find(b"\n")
            if end < 0:
                if len(self.buffer) > MAX_REQUEST:  # an over-long line is skipped up to its newline
                    self.buffer.clear()
                    self.skipping = True
                return
            line = bytes(self.buffer[:end])
            del self.buffer[: end + 1]
            if self.skipping:
                self.skipping = False
                continue
            if not line.strip():
                continue
            try:
                request = json.loads(line)
            except ValueError:
                continue
            if isinstance(request, dict):
                self.handle(request)

    def handle(self, request: dict[str, Any]) -> None:
        op, request_id = request.get("op"), request.get("id", 0)
        if not isinstance(request_id, int) or not 0 <= request_id < 2**32:
            return
        if op == "hello":
            nonce = str(request.get("nonce", ""))[:64]
            self.writer.send(HELLO, 0, f"{nonce} {PROTOCOL}".encode())
        elif op == "run":
            self._start(request_id, request)
        elif op == "kill":
            run = self.runs.get(request_id)
            if run is not None:
                _killpg(run.pid)
        elif op == "reap":
            self._reap_all(request_id)
        else:
            self._fail(request_id, "bad-request", f"unknown op {op!r}")

    def _fail(self, request_id: int, error: str, message: str) -> None:
        self.writer.send_json(FAIL, request_id, {"error": error, "message": message})

    def _reap_all(self, request_id: int) -> None:
        """Kill every process the sandbox's uid can signal, except PID 1 (this agent)."""
        try:
            os.kill(-1, signal.SIGKILL)
            code = 0
        except ProcessLookupError:
            code = 1
        self.writer.send_json(EXIT, request_id, {"exit_code": code, "deadline_hit": False})

    # -- runs ------------------------------------------------------------------------------------

    def _start(self, request_id: int, request: dict[str, Any]) -> None:
        try:
            run, argv, env, cwd = _parse_run(request_id, request)
        except (TypeError, ValueError, KeyError) as exc:
            self._fail(request_id, "bad-request", f"malformed run request: {exc}")
            return
        try:
            self._spawn(run, argv, env, cwd)
        except OSError as exc:
            error = "no-resources" if exc.errno in NO_RESOURCES else "spawn-failed"
            self._fail(request_id, error, f"the sandbox could not start the command: {exc.strerror}")
            return
        except (TypeError, ValueError) as exc:  # e.g. a NUL byte in argv
            self._fail(request_id, "bad-request", f"malformed run request: {exc}")
            return
        self.runs[request_id] = run
        self.by_pid[run.pid] = run
        for fd in run.pipes:
            self.by_pipe[fd] = run
        _prefer_for_oom_kill(run.pid)

    def _spawn(self, run: _Run, argv: list[str], env: dict[str, str], cwd: str) -> None:
        out_r, out_w = os.pipe()
        try:
            err_r, err_w = os.pipe()
        except OSError:
            os.close(out_r)
            os.close(out_w)
            raise
        try:
            if os.path.realpath(cwd) == os.getcwd():  # vfork-based: far cheaper than fork
                run.pid = _spawn(argv, env, out_w, err_w, defaults=self.defaults)
            else:
                run.pid = os.fork()
                if run.pid == 0:  # pragma: no cover - the child execs or exits
                    _child(argv, env, cwd, out_w, err_w, defaults=self.defaults)
        except Exception:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        run.pipes = {out_r: OUT, err_r: ERR}

    def _pump(self, fd: int) -> None:
        """Forward what a command wrote, at most its cap per stream (the rest only counted)."""
        run = self.by_pipe[fd]
        try:
            data = os.read(fd, MAX_PAYLOAD)
        except InterruptedError:
            return
        kind = run.pipes[fd]
        if not data:
            self._close(run, fd)
            return
        room = run.cap - run.totals[kind]
        if room > 0:
            self.writer.send(kind, run.request_id, data[:room])
        run.totals[kind] += len(data)

    def _close(self, run: _Run, fd: int) -> None:
        run.pipes.pop(fd, None)
        self.by_pipe.pop(fd, None)
        os.close(fd)

    def _close_pipes(self, run: _Run) -> None:
        for fd in list(run.pipes):
            self._close(run, fd)

    def _reap(self) -> None:
        """Collect every child that ended (commands and orphans re-parented to PID 1)."""
        with contextlib.suppress(OSError):
            while os.read(self.wake_r, 4096):
                pass
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            run = self.by_pid.get(pid)
            if run is not None:
                run.status = status

    def _report(self, run: _Run) -> None:
        self._close_pipes(run)
        self.runs.pop(run.request_id, None)
        self.by_pid.pop(run.pid, None)
        self.writer.send_json(
            EXIT,
            run.request_id,
            {
                "exit_code": run.exit_code(),
                "deadline_hit": run.deadline_hit,
                "stdout_bytes": run.totals[OUT],
                "stderr_bytes": run.totals[ERR],
            },
        )


def main() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError, ImportError):
        print("sandbox agent: could not mark itself non-dumpable", file=sys.stderr, flush=True)
    Agent(Writer()).serve()


if __name__ == "__main__":
    main()
