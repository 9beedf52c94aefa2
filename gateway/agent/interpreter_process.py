"""run_python's interpreter as a process: starting it, and one call's clock and output (standard
library only; interpreter_host.py supervises both)."""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import sys
from typing import Any

from .processes import exit_code
from .protocol import ERR, OUT

__all__ = [
    "ANSWER",
    "ANSWERS_FD",
    "DRAIN_READS",
    "EXIT_GRACE_S",
    "LENGTH",
    "MAX_ANSWER",
    "PROGRAM",
    "REQUESTS_FD",
    "PyCall",
    "end_of",
    "oom_kills",
    "rss_kb",
    "spawn",
]

PROGRAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "interpreter.py")
#: The interpreter's descriptors for requests and answers (interpreter.py).
REQUESTS_FD, ANSWERS_FD = 3, 4
#: A request's header (its length); an answer's (its length, and the id of the call it answers).
LENGTH = struct.Struct(">I")
#: An answer's header: its length, and the id of the call it answers (interpreter.py).
ANSWER = struct.Struct(">II")
#: Largest answer taken from the interpreter; a bigger one ends it (it broke the protocol).
MAX_ANSWER = 24 * 1024 * 1024

#: At a call's end, reads of what is left in an output pipe at most (a thread still writing could
#: otherwise keep the agent draining forever).
DRAIN_READS = 64
#: An interpreter whose answers closed has this long to exit by itself before it is ended.
EXIT_GRACE_S = 0.5
#: The sandbox cgroup's count of OOM kills: cgroup v2, then v1 (read-only in the sandbox).
_OOM_FILES = ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control")


def oom_kills() -> int | None:
    """How many processes the kernel's OOM killer has ended in this sandbox so far (None: unknown)."""
    for path in _OOM_FILES:
        try:
            with open(path) as counters:
                for line in counters:
                    name, _, count = line.partition(" ")
                    if name == "oom_kill":
                        return int(count)
        except (OSError, ValueError):
            continue
    return None


def end_of(status: int | None, ending: str, oom_seen: int | None) -> dict[str, Any]:
    """How an interpreter ended: the agent's reason for ending it (else "died"), its exit status as
    a shell shows it, the signal that ended it, and whether that was the OOM killer (a SIGKILL the
    agent did not send, with the sandbox's OOM-kill count up since `oom_seen`)."""
    number = os.WTERMSIG(status) if status is not None and os.WIFSIGNALED(status) else None
    now = oom_kills()
    counted = oom_seen is not None and now is not None and now > oom_seen
    oom = number == signal.SIGKILL and not ending and counted
    return {"reason": ending or "died", "exit_code": exit_code(status), "signal": number, "oom": oom}


def rss_kb(pid: int) -> int | None:
    """The resident memory of process `pid`, as the kernel counts it (not as the process says)."""
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        return None


class PyCall:
    """One run_python call: its clock and what it has produced so far."""

    def __init__(self, request_id: int, request: dict[str, Any], now: float) -> None:
        self.request_id = request_id
        self.cap = int(request["max_output"])
        timeout = float(request["timeout_s"])
        self.interrupt_at = now + timeout
        self.kill_at = self.interrupt_at + float(request.get("kill_after_s") or 0)
        self.deadline = now + float(request["deadline_s"])
        self.report_at: float | None = None
        self.totals = {OUT: 0, ERR: 0}
        self.interrupted = self.killed = self.deadline_hit = False
        self.answer: bytes | None = None
        self.summary: dict[str, Any] = {}

    def keep(self, kind: int, data: bytes) -> bytes:
        room = self.cap - self.totals[kind]
        self.totals[kind] += len(data)
        return data[: max(room, 0)]


def spawn(program: str, env: dict[str, str], cwd: str, defaults: list[int]) -> tuple[int, dict[str, int]]:
    """Start `program` (interpreter.py) in a session of its own with stdin from /dev/null, stdout
    and stderr, requests and answers on new pipes, and every signal in `defaults` back to default.
    Its pid and the agent's ends of the pipes (non-blocking); OSError if it cannot be started."""
    opened: list[int] = []
    try:
        for _ in range(4):
            opened += _high_pipe()
        opened.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        for fd in opened:
            os.close(fd)
        raise
    req_r, req_w, ans_r, ans_w, out_r, out_w, err_r, err_w, null = opened
    try:
        pid = os.posix_spawn(
            sys.executable or "/usr/bin/python3",
            [sys.executable or "python3", program, cwd],
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, null, 0),
                (os.POSIX_SPAWN_DUP2, out_w, 1),
                (os.POSIX_SPAWN_DUP2, err_w, 2),
                (os.POSIX_SPAWN_DUP2, req_r, REQUESTS_FD),
                (os.POSIX_SPAWN_DUP2, ans_w, ANSWERS_FD),
            ],
            setsid=True,
            setsigdef=defaults,
        )
    except BaseException:
        for fd in (req_w, ans_r, out_r, err_r):
            os.close(fd)
        raise
    finally:
        for fd in (null, req_r, ans_w, out_w, err_w):
            os.close(fd)
    for fd in (req_w, ans_r, out_r, err_r):
        os.set_blocking(fd, False)
    return pid, {"requests": req_w, "answers": ans_r, "out": out_r, "err": err_r}


def _high_pipe() -> tuple[int, int]:
    """A pipe whose ends are above the interpreter's own descriptors 0-4, so no dup2 of the spawn
    overwrites one before it is copied."""
    ends = []
    for end in os.pipe():
        if end > ANSWERS_FD:
            ends.append(end)
            continue
        ends.append(fcntl.fcntl(end, fcntl.F_DUPFD_CLOEXEC, ANSWERS_FD + 1))
        os.close(end)
    return ends[0], ends[1]
