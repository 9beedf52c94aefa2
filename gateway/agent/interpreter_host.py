"""The sandbox agent's side of run_python: one long-lived interpreter (interpreter.py), started on the
first call, kept between calls, and timed, interrupted and ended here (standard library only).

A call: the code goes to the interpreter's fd 3; what it writes on fd 1 and 2 while the call runs
goes to the gateway as OUT and ERR frames of the call, bounded like a run's; its answer comes back
on fd 4 and goes on as the call's RESULT. At the call's timeout the interpreter gets SIGINT (its
state survives when the code stops); `kill_after_s` later, or at the call's deadline, its process
group gets SIGKILL (the state is gone). Between calls its output pipes are not read, so what a
thread prints late arrives with the next call.

How an interpreter ended is a fact the agent knows (it sent the signal or not; the OOM killer's
count went up or not) and reports with the call it ended in, and again with the next call.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import time
from typing import Any

from . import interpreter_process as process
from .interpreter_process import PROGRAM, PyCall, end_of, oom_kills, rss_kb, spawn
from .processes import (
    AFTER_DEADLINE_S,
    OOM_RETRY_EVERY_S,
    OOM_RETRY_S,
    killpg,
    prefer_for_oom_kill,
)
from .protocol import ERR, MAX_PAYLOAD, OUT, RESULT, RESULT_PART, Writer

__all__ = ["InterpreterHost"]


class InterpreterHost:
    """The sandbox's interpreter and the call running in it (at most one)."""

    def __init__(self, writer: Writer, defaults: list[int], program: str = PROGRAM) -> None:
        self.writer = writer
        self.defaults = defaults
        self.program = program
        self.pid = 0
        self.status: int | None = None
        self.fds: dict[str, int] = {}
        self.outgoing = bytearray()
        self.incoming = bytearray()
        self.call: PyCall | None = None
        #: Why the agent itself ended the interpreter (idle, reaped, killed-after-timeout, deadline).
        self.ending = ""
        #: How the previous interpreter ended, until the call that starts the next one reports it.
        self.previous: dict[str, Any] | None = None
        self.idle_at: float | None = None
        self.idle_s: float | None = None
        self.oom_until = 0.0
        #: When an interpreter that closed its answers is ended if it has not exited by itself.
        self.silent_at: float | None = None
        #: The sandbox's OOM-kill count when last read (a call's start and end): an interpreter that
        #: dies of SIGKILL the agent did not send, with the count up since, was the OOM killer's.
        self.oom_seen: int | None = None

    # -- requests --------------------------------------------------------------------------------

    def begin(self, request_id: int, request: dict[str, Any]) -> str | None:
        """Start a call; an error message if it cannot (TypeError, ValueError: malformed)."""
        if self.call is not None:
            return "busy: a run_python call is already running in this sandbox"
        if self.pid and (self.status is not None or self.ending):  # it is gone, or on its way out
            self._forget()
        code, caps, idle = str(request["code"]), request.get("caps") or {}, request.get("idle_s")
        idle_s = float(idle) if idle is not None else None  # every field is checked before anything changes
        env = dict(str(item).partition("=")[::2] for item in request.get("env", []))
        cwd = str(request.get("cwd") or "/")
        body = json.dumps({"id": request_id, "code": code, "caps": caps}, separators=(",", ":")).encode()
        call = PyCall(request_id, request, time.monotonic())
        self.oom_seen = oom_kills()
        call.summary["new"] = self.pid == 0
        if self.pid == 0:
            self._spawn(env, cwd)
            call.summary["previous"], self.previous = self.previous, None
        self.outgoing += process.LENGTH.pack(len(body)) + body
        self.call, self.idle_at, self.idle_s = call, None, idle_s
        self._flush()
        return None

    def cancel(self, request_id: int) -> None:
        """The gateway gave up on the call: interrupt it now, kill it `kill_after_s` later."""
        call = self.call
        if call is not None and call.request_id == request_id and not call.interrupted:
            now = time.monotonic()
            call.kill_at -= max(0.0, call.interrupt_at - now)
            call.interrupt_at = now

    def reaping(self) -> None:
        """Every process of the sandbox's uid is about to be killed: this one with them."""
        if self.pid and self.status is None and not self.ending:
            self.ending = "reaped"

    def exited(self, pid: int, status: int) -> None:
        if pid == self.pid and pid:
            self.status = status

    # -- the loop's side ---------------------------------------------------------------------------

    def wanted(self, read_output: bool) -> dict[int, int]:
        wanted: dict[int, int] = {}
        if "answers" in self.fds:
            wanted[self.fds["answers"]] = select.POLLIN
        if self.outgoing and "requests" in self.fds:
            wanted[self.fds["requests"]] = select.POLLOUT
        if self.call is not None and read_output:
            for name in ("out", "err"):
                if name in self.fds:
                    wanted[self.fds[name]] = select.POLLIN
        return wanted

    def owns(self, fd: int) -> bool:
        return fd in self.fds.values()

    def ready(self, fd: int) -> None:
        if fd == self.fds.get("requests"):
            self._flush()
        elif fd == self.fds.get("answers"):
            self._read_answers()
        elif fd in (self.fds.get("out"), self.fds.get("err")):
            self._pump(fd, once=True)

    def tick(self, now: float) -> float | None:
        """Send the signals due, report what ended; the seconds until the next timer (None: none)."""
        call = self.call
        if self.oom_until and (prefer_for_oom_kill(self.pid) or now >= self.oom_until):
            self.oom_until = 0.0
        if self.silent_at is not None and self.status is None and now >= self.silent_at:
            self._kill("closed-its-answers")
        waits = self._tick_call(call, now) if call is not None else []
        if self.call is None:
            alive = self.pid and self.status is None and not self.ending
            if alive and self.idle_at is not None and now >= self.idle_at:
                self._kill("idle")
            if self.pid and self.status is not None:
                self._forget()
            if self.pid and self.idle_at is not None and not self.ending:
                waits.append(self.idle_at - now)
        if self.oom_until:
            waits.append(OOM_RETRY_EVERY_S)
        if self.silent_at is not None and self.status is None and not self.ending:
            waits.append(self.silent_at - now)
        return max(0.0, min(waits)) if waits else None

    def _tick_call(self, call: PyCall, now: float) -> list[float]:
        if call.answer is not None:  # answered: nothing is sent to it any more
            self._finish(call)
            return []
        if not call.interrupted and now >= call.interrupt_at:
            call.interrupted = True
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGINT)  # the interpreter only: the code's subprocesses are its own
        if call.interrupted and not call.killed and now >= call.kill_at:
            call.killed = True
            self._kill("killed-after-timeout")
        if not call.deadline_hit and now >= call.deadline:
            call.deadline_hit = True
            call.report_at = now + AFTER_DEADLINE_S
            self._kill("deadline")
        if self.status is not None or (call.report_at and now >= call.report_at):
            self._finish(call)
            return []
        upcoming = [call.report_at or call.deadline]
        if not call.interrupted:
            upcoming.append(call.interrupt_at)
        elif not call.killed:
            upcoming.append(call.kill_at)
        return [moment - now for moment in upcoming]

    # -- the interpreter -----------------------------------------------------------------------------

    def _spawn(self, env: dict[str, str], cwd: str) -> None:
        """Start interpreter.py (OSError if it cannot be started)."""
        self.pid, self.fds = spawn(self.program, env, cwd, self.defaults)
        self.status, self.ending = None, ""
        self.outgoing.clear()
        self.incoming.clear()
        if not prefer_for_oom_kill(self.pid):
            self.oom_until = time.monotonic() + OOM_RETRY_S

    def _kill(self, why: str) -> None:
        if self.pid and not self.ending:
            self.ending = why
        killpg(self.pid)

    def _flush(self) -> None:
        fd = self.fds.get("requests")
        while self.outgoing and fd is not None:
            try:
                written = os.write(fd, self.outgoing)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # it closed its end: it is ending, or the code closed fd 3
                self.outgoing.clear()
                return
            del self.outgoing[:written]

    def _read_answers(self) -> None:
        fd = self.fds["answers"]
        try:
            data = os.read(fd, 1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        if not data:  # it is ending, or the code closed fd 4: either way it cannot answer any more
            self._close("answers")
            self.silent_at = time.monotonic() + process.EXIT_GRACE_S
            return
        self.incoming += data
        while len(self.incoming) >= process.ANSWER.size:
            size, answers = process.ANSWER.unpack_from(self.incoming)
            if size > process.MAX_ANSWER:
                self.incoming.clear()
                self._kill("broke-the-protocol")
                return
            if len(self.incoming) < process.ANSWER.size + size:
                return
            answer = bytes(self.incoming[process.ANSWER.size : process.ANSWER.size + size])
            del self.incoming[: process.ANSWER.size + size]
            call = self.call  # an answer to another call (a late or a forged one) is dropped
            if call is not None and call.answer is None and answers == call.request_id:
                call.answer = answer

    def _pump(self, fd: int, *, once: bool) -> None:
        """Forward what the interpreter wrote on stdout or stderr to the call (all that is there,
        unless `once`)."""
        kind = OUT if fd == self.fds.get("out") else ERR
        for _ in range(1 if once else process.DRAIN_READS):
            try:
                data = os.read(fd, MAX_PAYLOAD)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                self._close("out" if kind == OUT else "err")
                return
            kept = self.call.keep(kind, data) if self.call is not None else b""
            if kept and self.call is not None:
                self.writer.send(kind, self.call.request_id, kept)

    def _finish(self, call: PyCall) -> None:
        """Report the call: what the interpreter wrote before its answer (or its end), then RESULT."""
        for name in ("out", "err"):
            if name in self.fds:
                self._pump(self.fds[name], once=False)
        summary = call.summary
        summary.update(
            interrupted=call.interrupted,
            deadline_hit=call.deadline_hit,
            stdout_bytes=call.totals[OUT],
            stderr_bytes=call.totals[ERR],
        )
        if call.answer is None or self.status is not None:
            summary["ended"] = self._ending()
            call.answer = None
        elif self.pid:
            summary["rss_kb"] = rss_kb(self.pid)
        summary["oom_kills"] = self.oom_seen = oom_kills()
        self.call = None
        if self.pid and self.status is None and not self.ending:
            self.idle_at = time.monotonic() + self.idle_s if self.idle_s is not None else None
        else:
            self._forget()  # and the next call reports it again, as the state it starts without
        payload = json.dumps(summary, separators=(",", ":")).encode() + b"\n" + (call.answer or b"")
        self.writer.send_message(call.request_id, payload, last=RESULT, part=RESULT_PART)

    def _ending(self) -> dict[str, Any]:
        """How the interpreter ended (or is being ended, when the call's deadline passed first)."""
        if self.status is None:
            self._kill(self.ending or "deadline")
        return end_of(self.status, self.ending, self.oom_seen)

    def _forget(self) -> None:
        """The interpreter is gone: remember how, close its descriptors."""
        if self.previous is None:
            self.previous = self._ending()
        for name in list(self.fds):
            self._close(name)
        self.pid, self.status, self.idle_at, self.ending, self.oom_until = 0, None, None, "", 0.0
        self.silent_at = None
        self.outgoing.clear()
        self.incoming.clear()

    def _close(self, name: str) -> None:
        fd = self.fds.pop(name, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
