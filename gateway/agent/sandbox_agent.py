"""The sandbox agent: PID 1 of a sandbox, running commands sent over the container's attach stream.

Standard library only. The sandbox image holds this package read-only as
/opt/sandbox-gateway/sgw_agent/, started by /opt/sandbox-gateway/agent.py (launcher.py) as the
container's command, as the sandbox's uid. The protocol is in protocol.py, the commands' handling
in processes.py.

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
import os
import select
import signal
import sys
import time
from typing import Any

from .interpreter_host import InterpreterHost
from .processes import NO_RESOURCES, Run, ignore_signals, killpg, parse_run, start
from .protocol import ERR, EXIT, FAIL, HELLO, MAX_PAYLOAD, MAX_REQUEST, OUT, PROTOCOL, Requests, Writer
from .tool_ports import ENV_NAME, Port

__all__ = ["Agent", "main"]

_PR_SET_DUMPABLE = 4
#: Output queued for the gateway beyond which the agent stops reading commands' pipes until it drains.
_BACKLOG = 1 << 20


class Agent:
    """One event loop over stdin (requests), stdout (queued frames), the commands' pipes and SIGCHLD."""

    def __init__(self, writer: Writer, stdin: int = 0) -> None:
        self.writer = writer
        self.stdin = stdin
        self.defaults = ignore_signals()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        self.poller = select.poll()
        self.watched: dict[int, int] = {}
        self.runs: dict[int, Run] = {}
        self.by_pid: dict[int, Run] = {}
        self.by_pipe: dict[int, Run] = {}
        #: Code mode: each tool-enabled run's door (tool_ports.py), by run id.
        self.ports: dict[int, Port] = {}
        self.requests = Requests(MAX_REQUEST)
        self.reading = True
        #: run_python's interpreter (interpreter_host.py), started by the first py request.
        self.python = InterpreterHost(writer, self.defaults)

    # -- the loop --------------------------------------------------------------------------------

    def serve(self) -> None:
        while True:
            timeout = self._tick()  # first: what it ends or sends changes what to wait for
            self._watch()
            for fd, events in self.poller.poll(None if timeout is None else timeout * 1000):
                if fd == self.stdin:
                    self._read_requests()
                elif fd == self.wake_r:
                    self._reap()
                elif fd == self.writer.fd:
                    self.writer.flush()
                elif fd in self.by_pipe:
                    self._pump(fd)
                elif self.python.owns(fd):
                    self.python.ready(fd)
                else:
                    self._tool_event(fd, events)

    def _watch(self) -> None:
        """What the next poll waits for: requests always, output pipes only while stdout keeps up."""
        wanted = {self.wake_r: select.POLLIN}
        if self.reading:
            wanted[self.stdin] = select.POLLIN
        if self.writer.pending:
            wanted[self.writer.fd] = select.POLLOUT
        if len(self.writer.pending) < _BACKLOG:
            wanted.update(dict.fromkeys(self.by_pipe, select.POLLIN))
            for port in self.ports.values():
                wanted.update(port.wanted())
        wanted.update(self.python.wanted(len(self.writer.pending) < _BACKLOG))
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
        python = self.python.tick(now)
        if python is not None:
            waits.append(python)
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
        for request in self.requests.feed(data):
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
        elif op == "py":
            self._python(request_id, request)
        elif op == "kill":
            run = self.runs.get(request_id)
            if run is not None:
                killpg(run.pid)
            self.python.cancel(request_id)
        elif op == "reap":
            self._reap_all(request_id)
        elif op == "tool_result":
            port, conn, text = self.ports.get(request_id), request.get("conn"), request.get("line")
            if port is not None and isinstance(conn, int) and isinstance(text, str) and "\n" not in text:
                port.answer(conn, text)
        else:
            self._fail(request_id, "bad-request", f"unknown op {op!r}")

    def _fail(self, request_id: int, error: str, message: str) -> None:
        self.writer.send_json(FAIL, request_id, {"error": error, "message": message})

    def _reap_all(self, request_id: int) -> None:
        """Kill every process the sandbox's uid can signal, except PID 1 (this agent)."""
        self.python.reaping()
        try:
            os.kill(-1, signal.SIGKILL)
            code = 0
        except ProcessLookupError:
            code = 1
        self.writer.send_json(EXIT, request_id, {"exit_code": code, "deadline_hit": False})

    # -- runs ------------------------------------------------------------------------------------

    def _start(self, request_id: int, request: dict[str, Any]) -> None:
        try:
            run, argv, env, cwd = parse_run(request_id, request)
        except (TypeError, ValueError, KeyError) as exc:
            self._fail(request_id, "bad-request", f"malformed run request: {exc}")
            return
        port = None
        try:
            if request.get("tools") is True and request_id not in self.ports:
                port = Port(request_id, self._forward_tool_call)
                env[ENV_NAME] = port.name
            start(run, argv, env, cwd, defaults=self.defaults)
        except OSError as exc:
            if port is not None:
                port.close()
            error = "no-resources" if exc.errno in NO_RESOURCES else "spawn-failed"
            self._fail(request_id, error, f"the sandbox could not start the command: {exc.strerror}")
            return
        except (TypeError, ValueError) as exc:  # e.g. a NUL byte in argv
            if port is not None:
                port.close()
            self._fail(request_id, "bad-request", f"malformed run request: {exc}")
            return
        if port is not None:
            port.session = run.pid  # the run leads a session of its own
            self.ports[request_id] = port
        self.runs[request_id] = run
        self.by_pid[run.pid] = run
        for fd in run.pipes:
            self.by_pipe[fd] = run

    def _python(self, request_id: int, request: dict[str, Any]) -> None:
        try:
            refused = self.python.begin(request_id, request)
        except OSError as exc:
            error = "no-resources" if exc.errno in NO_RESOURCES else "spawn-failed"
            self._fail(request_id, error, f"the sandbox could not start the interpreter: {exc.strerror}")
            return
        except (TypeError, ValueError, KeyError) as exc:
            self._fail(request_id, "bad-request", f"malformed py request: {exc}")
            return
        if refused is not None:
            self._fail(request_id, "busy", refused)

    def _forward_tool_call(self, run_id: int, conn_id: int, line: bytes) -> None:
        self.writer.send_message(run_id, f"{conn_id} ".encode() + line)

    def _tool_event(self, fd: int, events: int) -> None:
        for port in self.ports.values():
            if port.owns(fd):
                port.ready(fd, events)
                return

    def _pump(self, fd: int) -> None:
        """Forward what a command wrote, at most its cap per stream (the rest only counted)."""
        run = self.by_pipe[fd]
        try:
            data = os.read(fd, MAX_PAYLOAD)
        except (BlockingIOError, InterruptedError):
            return
        kind = run.pipes[fd]
        if not data:
            self._close(run, fd)
            return
        kept = run.keep(kind, data)
        if kept:
            self.writer.send(kind, run.request_id, kept)

    def _close(self, run: Run, fd: int) -> None:
        run.pipes.pop(fd, None)
        self.by_pipe.pop(fd, None)
        os.close(fd)

    def _close_pipes(self, run: Run) -> None:
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
            else:
                self.python.exited(pid, status)

    def _report(self, run: Run) -> None:
        self._close_pipes(run)
        port = self.ports.pop(run.request_id, None)
        if port is not None:  # the run's door closes with it: what it left behind calls no tool
            port.close()
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
    """Serve the gateway on stdin and stdout until the sandbox ends."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError, ImportError):
        print("sandbox agent: could not mark itself non-dumpable", file=sys.stderr, flush=True)
    Agent(Writer()).serve()
