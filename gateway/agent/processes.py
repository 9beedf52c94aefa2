"""The sandbox agent's commands: starting them, timing them, and how they ended (standard library only)."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from typing import Any

from .protocol import ERR, OUT

#: Errors of starting a command that mean the sandbox is out of a resource (processes, memory, descriptors).
NO_RESOURCES = frozenset({errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE})
#: After a run's hard deadline, how long its exit status is awaited before the result goes without it.
AFTER_DEADLINE_S = 1.0
#: How long, and how often, a command's OOM preference is retried while it cannot be set yet.
OOM_RETRY_S, OOM_RETRY_EVERY_S = 1.0, 0.005
_UNCATCHABLE = (signal.SIGKILL, signal.SIGSTOP)


def ignore_signals() -> list[int]:
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


def killpg(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal the process group of a command (its own session, led by `pid`), if it is still there."""
    if pid <= 1:  # 0 would be the agent's own group
        return
    with contextlib.suppress(OSError):
        os.killpg(pid, sig)


def exit_code(status: int | None) -> int | None:
    """A wait status as a shell reports it: the exit code, or 128 + the signal that ended it."""
    if status is None:
        return None
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


class Run:
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
        #: Until when its OOM preference is still to be set (0: done, or given up).
        self.oom_until = 0.0
        self.status: int | None = None
        self.pipes: dict[int, int] = {}
        self.totals = {OUT: 0, ERR: 0}
        self.termed = self.killed = self.deadline_hit = False

    def tick(self, now: float) -> float:
        """Send what is due; return the seconds until the next thing to do."""
        if self.term_at is not None and not self.termed and now >= self.term_at:
            self.termed = True
            killpg(self.pid, signal.SIGTERM)
        if self.kill_at is not None and self.termed and not self.killed and now >= self.kill_at:
            self.killed = True
            killpg(self.pid, signal.SIGKILL)
        if now >= self.deadline and not self.deadline_hit:
            self.deadline_hit = True
            self.report_at = now + AFTER_DEADLINE_S
            killpg(self.pid, signal.SIGKILL)
        if self.oom_until and (prefer_for_oom_kill(self.pid) or now >= self.oom_until):
            self.oom_until = 0.0
        upcoming = [self.report_at if self.report_at is not None else self.deadline]
        if self.oom_until:
            upcoming.append(now + OOM_RETRY_EVERY_S)
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
        code = exit_code(self.status)
        if code is None or not self.termed:
            return code
        return 128 + signal.SIGKILL if self.killed else 124

    def keep(self, kind: int, data: bytes) -> bytes:
        """Count what the command wrote on a stream; return what of it fits under the cap."""
        room = self.cap - self.totals[kind]
        self.totals[kind] += len(data)
        return data[: max(room, 0)]


def parse_run(request_id: int, request: dict[str, Any]) -> tuple[Run, list[str], dict[str, str], str]:
    """A run request's command, environment, working directory and clock (TypeError, ValueError or
    KeyError when it is malformed)."""
    argv = [str(a) for a in request["argv"]]
    env = dict(str(item).partition("=")[::2] for item in request.get("env", []))
    cwd = str(request.get("cwd") or "/")
    if not argv:
        raise ValueError("empty argv")
    started = time.monotonic()
    run = Run(request_id, started + float(request["deadline_s"]), int(request["max_output"]))
    if request.get("timeout_s") is not None:  # `timeout --kill-after=K T`, done here
        run.term_at = started + float(request["timeout_s"])
        run.kill_at = run.term_at + float(request.get("kill_after_s") or 0)
    return run, argv, env, cwd


def start(run: Run, argv: list[str], env: dict[str, str], cwd: str, *, defaults: list[int]) -> None:
    """Start the command of `run` in its own session with stdin from /dev/null, its output on two
    new pipes (run.pipes) and every signal in `defaults` back to default; OSError if it cannot."""
    out_r, out_w = os.pipe()
    try:
        err_r, err_w = os.pipe()
    except OSError:
        os.close(out_r)
        os.close(out_w)
        raise
    try:
        if os.path.realpath(cwd) == os.getcwd():  # vfork-based: far cheaper than fork
            run.pid = _spawn(argv, env, out_w, err_w, defaults=defaults)
        else:
            run.pid = os.fork()
            if run.pid == 0:  # pragma: no cover - the child execs or exits
                _child(argv, env, cwd, out_w, err_w, defaults=defaults)
    except Exception:
        os.close(out_r)
        os.close(err_r)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    run.pipes = {out_r: OUT, err_r: ERR}
    for fd in run.pipes:  # a stale poll event for a reused descriptor number must never block PID 1
        os.set_blocking(fd, False)
    if not prefer_for_oom_kill(run.pid):
        run.oom_until = time.monotonic() + OOM_RETRY_S


def _spawn(argv: list[str], env: dict[str, str], out_w: int, err_w: int, *, defaults: list[int]) -> int:
    """posix_spawn in the agent's working directory."""
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


def prefer_for_oom_kill(pid: int) -> bool:
    """The OOM killer should pick the command, not the agent (raising a score needs no privilege).
    False while that cannot be done yet: until a command's exec is through, it is as non-dumpable
    as the agent it came from, so its /proc files are root's (always on the fork path, for a moment
    after posix_spawn returns)."""
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as adj:
            adj.write("1000")
    except PermissionError:
        return False
    except OSError:  # it is gone already
        pass
    return True
