"""The Backend protocol: what the broker needs from one container engine."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.backend.interpreter_results import PythonOutcome, PythonRequest

__all__ = [
    "KILL_AFTER_S",
    "Backend",
    "ContainerInfo",
    "ExecOutcome",
    "ExecRequest",
    "ExecStream",
    "Executor",
    "OutputCallback",
    "Pumped",
    "ToolCallHandler",
    "close_stream",
    "internal_request",
]

#: After a command's timeout, TERM; this many seconds later, KILL (unless a request says otherwise).
KILL_AFTER_S = 2.0
#: Called with ("stdout" | "stderr", chunk) as a command's output arrives, on the calling thread.
OutputCallback = Callable[[str, bytes], None]
#: Code mode: serves one tool call a command made (the line it wrote, untrusted) and returns the
#: answer line for it (JSON, no newline). It never raises; the executor awaits it on the event loop.
ToolCallHandler = Callable[[bytes], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class ExecRequest:
    """One process to run in a sandbox, with its bounds."""

    argv: list[str]
    workdir: str
    env: list[str]
    timeout_s: float
    max_output_bytes: int
    #: `uid:gid` to run as: the sandbox's own, which the broker fills in.
    user: str = ""
    #: After `timeout_s`, TERM; this many seconds later, KILL for whatever ignored TERM.
    kill_after_s: float = KILL_AFTER_S
    #: Gateway-side deadline on top of the in-sandbox timeout (covers escaped background writers).
    grace_s: float = 5.0
    #: Code mode: the command may call upstream tools, served by this (the agent path only).
    tool_calls: ToolCallHandler | None = None


@dataclass(frozen=True, slots=True)
class ExecOutcome:
    """What came back: bounded output, exit status and how it ended."""

    exit_code: int | None
    stdout: bytes
    stderr: bytes
    stdout_bytes: int
    stderr_bytes: int
    truncated: bool
    deadline_hit: bool
    duration_ms: float
    #: The container was gone when the exit status was read (the command killed it, or it was removed).
    sandbox_lost: bool = False
    #: The kernel's OOM killer ended a process of this call (the sandbox hit its memory limit).
    oom_killed: bool = False
    #: The principal's previous sandbox was lost; this call ran in a new one (earlier files are gone).
    sandbox_replaced: bool = False


@dataclass(frozen=True, slots=True)
class ExecStream:
    """A `docker exec` started: its id and its output stream (socket, response, bytes already read)."""

    container_id: str
    exec_id: str
    sock: socket.socket
    raw: Any
    early: bytes
    started: float


@dataclass(frozen=True, slots=True)
class Pumped:
    """A `docker exec`'s output, read to its end or its deadline."""

    out: Any
    err: Any
    deadline_hit: bool


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """A container as listed by the engine."""

    id: str
    name: str
    running: bool
    labels: dict[str, str] = field(default_factory=dict)
    oom_killed: bool = False
    #: Creation time, seconds since the epoch (0 when unknown).
    created: float = 0.0
    #: The sandbox host it is on (fleet mode; "" for the one engine otherwise).
    host: str = ""


def internal_request(argv: list[str], max_output_bytes: int, user: str = "") -> ExecRequest:
    """A short command of the gateway's own in a sandbox: 5 s, from `/`, no environment."""
    return ExecRequest(
        argv=argv, user=user, workdir="/", env=[], timeout_s=5, max_output_bytes=max_output_bytes, grace_s=2
    )


class Executor(Protocol):
    """Runs commands in one sandbox, bounded by each request's `timeout_s`: through the sandbox's
    agent (`AgentChannel`) or with `docker exec` (`DockerExec`)."""

    #: "agent" or "exec", as recorded in spans and audit events.
    path: str

    @property
    def connected(self) -> bool:
        """False once the executor can run nothing more (the agent's stream broke)."""
        ...

    async def run(self, request: ExecRequest, on_output: OutputCallback | None = None) -> ExecOutcome: ...

    async def run_python(
        self, request: PythonRequest, on_output: OutputCallback | None = None
    ) -> PythonOutcome:
        """run_python in the sandbox's interpreter (InterpreterUnavailable where there is none)."""
        ...

    async def reap(self) -> int | None:
        """Kill every process of the sandbox's uid but PID 1: 0 if one was killed, 1 if none was
        found, anything else (None: could not even try) when the sandbox is unusable."""
        ...

    def close(self) -> None: ...


class Backend(Protocol):
    """Create / exec / remove / list / ping over one engine. Methods block; call them off the event loop."""

    def ping(self) -> None: ...

    def image_present(self, image: str) -> bool: ...

    def image_identity(self, image: str) -> tuple[str, frozenset[str]]: ...

    def create(self, name: str, body: dict[str, object], needs: Mapping[str, str] | None = None) -> str:
        """Create the container; `needs`: labels its host must carry (only a fleet has host labels)."""
        ...

    def start(self, container_id: str) -> None: ...

    def inspect(self, container_id: str) -> ContainerInfo: ...

    def exec_open(self, container_id: str, request: ExecRequest) -> ExecStream: ...

    def exec_pump(
        self, stream: ExecStream, request: ExecRequest, on_output: OutputCallback | None = None
    ) -> Pumped: ...

    def exec_result(self, stream: ExecStream, pumped: Pumped) -> ExecOutcome: ...

    def attach(self, container_id: str) -> tuple[socket.socket, bytes, Any]: ...

    def remove(self, container_id: str) -> None: ...

    def rename(self, container_id: str, name: str) -> None: ...

    def list(self, labels: dict[str, str], name: str | None = None) -> list[ContainerInfo]: ...

    def close(self) -> None: ...


def close_stream(sock: socket.socket, raw: Any) -> None:
    """Close a hijacked stream: the socket, its file object and the HTTP response holding a
    reference to it (a TLS socket is only closed when all of them are)."""
    sock.close()
    for part in (raw, getattr(raw, "_response", None)):
        if part is not None:
            with contextlib.suppress(OSError, ValueError):  # ValueError: its file is already closed
                part.close()
