"""An in-memory Backend for the broker, the service and the tools: no engine, no processes.

Containers are records (id, name, labels, running, created). Nothing is ever executed: a command
is answered by a handler the test sets (`FakeBackend.handler`, by default it echoes the code it was
given), on either exec path:

- `docker exec` (`exec_open` / `exec_pump` / `exec_result`): the handler runs on the stream thread
  that pumps the output, as the real backend reads the output stream there.
- the sandbox agent (`attach`): each attach gets a `socket.socketpair()` whose far end is served by
  a thread speaking the agent's frame protocol (hello, run, kill, reap) inside Docker's multiplexed
  attach framing, so `gateway.backend.agent_channel.AgentChannel` talks to it as to the real agent.
  Each run is answered on a thread of its own, so a handler may block until the test releases it.

Faults follow what `gateway.backend.docker_engine.DockerBackend` raises: a missing or stopped
container is `SandboxGone` (code `sandbox-gone`), and so is a name already in use (the engine's 409
Conflict, which DockerBackend maps the same way); a uid another sandbox holds is `SandboxError` with
code `uid-in-use` (the socket proxy's 409); a missing image is `image-missing`; and any method can
be made to fail with an error of the test's choosing (`fail`). Removing a container that is already
gone is not an error, as with the real backend.

The container's own state answers the gateway's internal commands: the cgroup OOM-kill counter
(`cat /sys/fs/cgroup/memory.events ...`) and the reap of stray processes (`kill -KILL -1` or the
agent's `reap`), whose exit status is `reap_exit_code`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import posixpath
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.agent.protocol import ERR, EXIT, FAIL, HEADER, HELLO, MAX_PAYLOAD, OUT, PROTOCOL
from gateway.backend.base import (
    Backend,
    ContainerInfo,
    ExecOutcome,
    ExecRequest,
    ExecStream,
    OutputCallback,
    Pumped,
    close_stream,
)
from gateway.backend.create_body import USER_LABEL
from gateway.backend.frames import BoundedCapture
from gateway.calls.files import HELPER_PATH
from gateway.errors import SandboxError, SandboxGone, UidInUse

__all__ = ["Command", "FakeBackend", "FakeContainer", "Gate", "Reply", "echo_handler", "held"]

ExecPath = Literal["agent", "exec"]
_OOM_FILES = "/sys/fs/cgroup/memory.events"
_WORKSPACE = "/workspace"
#: How long a blocked handler waits for its gate at most, so that a failing test cannot hang.
GATE_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Reply:
    """What a command does, as the handler scripts it."""

    exit_code: int | None = 0
    stdout: bytes = b""
    stderr: bytes = b""
    #: The command ran into its deadline (the agent reports it; `docker exec` stops reading).
    deadline_hit: bool = False
    #: The kernel's OOM killer ended it: the sandbox cgroup's OOM-kill counter goes up by one.
    oom_kill: bool = False
    #: The container dies while the command runs (after its output was written).
    lose_sandbox: bool = False


@dataclass(slots=True)
class FakeContainer:
    """One container as the fake engine keeps it."""

    id: str
    name: str
    labels: dict[str, str]
    body: dict[str, Any]
    running: bool
    created: float
    oom_kills: int = 0
    #: Whether an agent answers on the attach stream (the image has one and it started).
    agent: bool = True
    #: The container's /workspace, for the file tools' helper.
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def uid(self) -> int:
        return _uid(self.labels)


def _uid(labels: dict[str, str]) -> int:
    """The host uid a sandbox runs as, from its `uid:gid` label (-1 when it has none)."""
    uid = labels.get(USER_LABEL, "").partition(":")[0]
    return int(uid) if uid.isdigit() else -1


@dataclass(slots=True)
class Command:
    """One command a sandbox was asked to run (the `timeout` wrapper already taken off)."""

    container: FakeContainer
    argv: list[str]
    path: ExecPath
    env: list[str]
    workdir: str
    max_output_bytes: int
    timeout_s: float | None
    #: Set when the gateway asks the agent to kill the command (its deadline passed, the client left).
    cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def kind(self) -> str:
        """bash | python | file | oom-check | reap | other."""
        argv = self.argv
        if argv[:2] == ["bash", "-c"]:
            return "bash"
        if argv[:4] == ["python3", "-I", "-S", HELPER_PATH]:
            return "file"
        if argv[:2] == ["python3", "-c"]:
            return "python"
        if argv[:1] == ["cat"] and _OOM_FILES in argv:
            return "oom-check"
        if argv == ["kill", "-KILL", "-1"]:
            return "reap"
        return "other"

    @property
    def code(self) -> str:
        """The tool's code (the bash command or the Python source) put back together from argv."""
        if self.kind == "bash":
            return "".join(self.argv[4:])
        if self.kind == "python":
            return "".join(self.argv[3:])
        return " ".join(self.argv)


Handler = Callable[[Command], Reply]


def echo_handler(command: Command) -> Reply:
    """The default: exit 0 and print the code back; the file helper works on the container's
    in-memory /workspace."""
    if command.kind == "file":
        return workspace_file_op(command)
    return Reply(exit_code=0, stdout=command.code.encode() + b"\n")


def _done(**fields: object) -> Reply:
    """The helper's answer: one JSON line, exit 0 (errors are answers too)."""
    return Reply(exit_code=0, stdout=json.dumps(fields).encode() + b"\n")


def workspace_file_op(command: Command) -> Reply:
    """The answers of the file helper (gateway/calls/files.py) for write, read and list, on the
    container's in-memory workspace (files only; directories exist where files are below them)."""
    op, raw, extra = command.argv[4], command.argv[5], command.argv[6:]
    files = command.container.files
    if raw in ("", "."):
        raw = _WORKSPACE
    if raw.startswith("/") and raw != _WORKSPACE and not raw.startswith(_WORKSPACE + "/"):
        return _done(error="path-outside-workspace", message="only paths under /workspace are reachable")
    target = posixpath.normpath(posixpath.join(_WORKSPACE, raw))
    if target != _WORKSPACE and not target.startswith(_WORKSPACE + "/"):
        return _done(error="path-outside-workspace", message="the path leaves /workspace")
    is_dir = target == _WORKSPACE or any(name.startswith(target + "/") for name in files)
    if op == "write":
        return _write(files, target, "".join(extra), is_dir)
    if op == "read":
        return _read(files, target, int(extra[0]), is_dir)
    if op == "list":
        return _list(files, target) if is_dir else _done(error="not-found", message="no such directory")
    return Reply(exit_code=2, stderr=f"unknown file op {op}".encode())


def _write(files: dict[str, bytes], target: str, encoded: str, is_dir: bool) -> Reply:
    if is_dir:
        return _done(error="is-a-directory", message="the path is a directory")
    files[target] = base64.b64decode(encoded)
    return _done(size=len(files[target]), path=target)


def _read(files: dict[str, bytes], target: str, cap: int, is_dir: bool) -> Reply:
    if is_dir:
        return _done(error="is-a-directory", message="the path is a directory; use list_files")
    if target not in files:
        return _done(error="not-found", message="no such file or directory")
    data = files[target]
    encoded = base64.b64encode(data[:cap]).decode()
    return _done(size=len(data), data=encoded, truncated=len(data) > cap, path=target)


def _list(files: dict[str, bytes], target: str) -> Reply:
    entries: dict[str, dict[str, object]] = {}
    for name, data in files.items():
        if name.startswith(target + "/"):
            first, _, rest = name[len(target) + 1 :].partition("/")
            entries[first] = {
                "name": first,
                "type": "dir" if rest else "file",
                "size": 0 if rest else len(data),
            }
    return _done(entries=sorted(entries.values(), key=lambda e: str(e["name"])), path=target)


class Gate:
    """Holds commands until the test opens it (bounded, so a failing test cannot hang)."""

    def __init__(self) -> None:
        self._open = threading.Event()

    def open(self) -> None:
        self._open.set()

    def wait(self, command: Command | None = None) -> bool:
        """Block until opened (or the command is cancelled); True when opened."""
        deadline = time.monotonic() + GATE_TIMEOUT_S
        while not self._open.is_set() and time.monotonic() < deadline:
            if command is not None and command.cancelled.is_set():
                return False
            self._open.wait(0.01)
        return self._open.is_set()


def held(gate: Gate, when: Callable[[Command], bool] | None = None, then: Handler = echo_handler) -> Handler:
    """A handler that holds the commands `when` selects (by default: code `hold`) until `gate`
    opens, then answers every command with `then`."""

    def handle(command: Command) -> Reply:
        if (command.code == "hold") if when is None else when(command):
            gate.wait(command)
        return then(command)

    return handle


class FakeBackend:
    """The `Backend` protocol over an in-memory container store."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._store: dict[str, FakeContainer] = {}
        self._ids = itertools.count(1)
        self._execs: dict[str, tuple[FakeContainer, Command, Reply | None]] = {}
        self._connections: dict[str, list[_AgentConnection]] = {}
        self._attached: list[_AgentConnection] = []
        self._failures: dict[str, list[Exception]] = {}
        #: How every command is answered (the built-in ones excepted, see the module doc).
        self.handler: Handler = echo_handler
        #: When it returns True, the sandbox cannot start the command: on the `docker exec` path the
        #: engine says the container is not running (SandboxGone); the agent refuses with
        #: `no-resources` (no process, memory or descriptor left). Both mean "replace the sandbox".
        self.cannot_start: Callable[[Command], bool] | None = None
        #: Exit status of the reap of stray processes: 1 found none, 0 killed some, else it failed.
        self.reap_exit_code: int | None = 1
        #: Whether the cgroup OOM-kill counter can be read.
        self.oom_counter_readable = True
        #: New containers get an agent that answers (False: the attach stream closes at once).
        self.agents_answer = True
        #: Creates to refuse with uid-in-use (as the socket proxy does for a uid another sandbox has).
        self.refuse_uids = 0
        #: Image name -> (id, repo digests); any other image is present with an id made from its name.
        self.images: dict[str, tuple[str, frozenset[str]]] = {}
        self.missing_images: set[str] = set()
        #: Every backend call: (method, its first argument).
        self.calls: list[tuple[str, str]] = []
        #: Every command a sandbox was asked to run (internal ones included), in order.
        self.commands: list[Command] = []
        #: Container ids passed to `remove` (existing or not).
        self.removals: list[str] = []
        #: Commands inside the handler right now.
        self.active = 0
        #: Called with (method, first argument) at the start of every backend call, on its thread
        #: (e.g. to hold creates until the test lets them go).
        self.on_call: Callable[[str, str], object] | None = None
        #: Exceptions raised by a handler on a thread (the test should see them).
        self.errors: list[BaseException] = []
        self.closed = False

    # -- the test's controls ------------------------------------------------------------------

    def fail(self, method: str, error: Exception, times: int = 1) -> None:
        """The next `times` calls of `method` raise `error`."""
        with self._lock:
            self._failures.setdefault(method, []).extend([error] * times)

    def heal(self) -> None:
        """The engine behaves again: no injected failure, refusal or held call is left."""
        with self._lock:
            self.on_call = None
            self._failures.clear()
            self.refuse_uids = 0
            self.cannot_start = None

    def containers(self) -> list[FakeContainer]:
        with self._lock:
            return list(self._store.values())

    def container(self, container_id: str) -> FakeContainer:
        with self._lock:
            return self._store[container_id]

    def by_name(self, name: str) -> FakeContainer | None:
        with self._lock:
            return next((c for c in self._store.values() if c.name == name), None)

    def add_container(
        self,
        name: str,
        labels: dict[str, str],
        *,
        running: bool = True,
        created: float | None = None,
        agent: bool = True,
    ) -> FakeContainer:
        """A container that was there before the gateway started (left by an earlier run)."""
        with self._lock:
            container = FakeContainer(
                id=self._new_id(),
                name=name,
                labels=dict(labels),
                body={"Labels": dict(labels)},
                running=running,
                created=time.time() if created is None else created,
                agent=agent,
            )
            self._store[container.id] = container
            return container

    def vanish(self, container_id: str) -> None:
        """The container is removed behind the gateway's back (`docker rm -f`, an engine restart)."""
        with self._lock:
            self._store.pop(container_id, None)
        self.drop_connections(container_id)

    def stop(self, container_id: str) -> None:
        """The container stops (killed from outside); its agent, PID 1, is gone with it."""
        with self._lock:
            self._store[container_id].running = False
        self.drop_connections(container_id)

    def drop_connections(self, container_id: str) -> None:
        """Close the agent's end of every attach stream of the container (a proxy restart does this
        without the container stopping)."""
        with self._lock:
            connections = self._connections.pop(container_id, [])
        for connection in connections:
            connection.close()

    def open_connections(self) -> int:
        """Attach streams whose agent end is still open (the container and its agent still there)."""
        with self._lock:
            return sum(1 for conns in self._connections.values() for c in conns if not c.closed)

    def gateway_ends_open(self) -> int:
        """Attach streams handed to the gateway that the gateway has not closed yet."""
        with self._lock:
            return sum(1 for c in self._attached if c.gateway_end.fileno() != -1)

    def called(self, method: str) -> list[str]:
        """The first arguments of every call of `method` so far."""
        with self._lock:
            return [subject for name, subject in self.calls if name == method]

    def close_everything(self) -> None:
        """Close both ends of every attach stream (after a test, whatever it left)."""
        with self._lock:
            attached, self._attached = self._attached, []
            self._connections.clear()
        for connection in attached:
            connection.close()
            connection.gateway_end.close()

    def ran(self, kind: str) -> list[Command]:
        """The commands of one kind (bash, python, file, oom-check, reap, other) run so far."""
        with self._lock:
            return [c for c in self.commands if c.kind == kind]

    # -- internals ----------------------------------------------------------------------------

    def _new_id(self) -> str:
        return hashlib.sha256(f"fake-{next(self._ids)}".encode()).hexdigest()

    def _enter(self, method: str, subject: str) -> None:
        with self._lock:
            self.calls.append((method, subject))
        if self.on_call is not None:
            self.on_call(method, subject)
        with self._lock:
            pending = self._failures.get(method)
            error = pending.pop(0) if pending else None
        if error is not None:
            raise error

    def _get(self, container_id: str, what: str) -> FakeContainer:
        container = self._store.get(container_id)
        if container is None:
            raise SandboxGone(f"the sandbox container is gone ({what})")
        return container

    def _running(self, container_id: str, what: str) -> FakeContainer:
        container = self._get(container_id, what)
        if not container.running:
            raise SandboxGone(f"the sandbox container is not running ({what})")
        return container

    def _answer(self, command: Command) -> Reply:
        """The container's own answer to the gateway's internal commands, else the handler's."""
        container = command.container
        with self._lock:
            self.commands.append(command)
        if command.kind == "oom-check":
            if not self.oom_counter_readable:
                return Reply(exit_code=1, stderr=b"cat: No such file or directory\n")
            text = f"low 0\nhigh 0\nmax 0\noom 0\noom_kill {container.oom_kills}\n"
            return Reply(exit_code=0, stdout=text.encode())
        if command.kind == "reap":
            return Reply(exit_code=self.reap_exit_code)
        with self._lock:
            self.active += 1
        try:
            reply = self.handler(command)
        except BaseException as exc:
            with self._lock:
                self.errors.append(exc)
            raise
        finally:
            with self._lock:
                self.active -= 1
        if reply.oom_kill:
            with self._lock:
                container.oom_kills += 1
        return reply

    def _command(self, container: FakeContainer, request: ExecRequest, path: ExecPath) -> Command:
        timeout_s, argv = _unwrap_timeout(request.argv)
        return Command(
            container=container,
            argv=list(argv),
            path=path,
            env=list(request.env),
            workdir=request.workdir,
            max_output_bytes=request.max_output_bytes,
            timeout_s=timeout_s,
        )

    # -- the Backend protocol -----------------------------------------------------------------

    def ping(self) -> None:
        self._enter("ping", "")

    def image_present(self, image: str) -> bool:
        self._enter("image_present", image)
        return image not in self.missing_images

    def image_identity(self, image: str) -> tuple[str, frozenset[str]]:
        self._enter("image_identity", image)
        if image in self.missing_images:
            raise SandboxError(f"the sandbox image {image} is not on the engine", code="image-missing")
        known = self.images.get(image)
        if known is not None:
            return known
        return "sha256:" + hashlib.sha256(image.encode()).hexdigest(), frozenset()

    def create(self, name: str, body: dict[str, object], needs: object = None) -> str:
        self._enter("create", name)
        labels = dict(body.get("Labels") or {})  # type: ignore[call-overload]
        with self._lock:
            if any(c.name == name for c in self._store.values()):
                raise SandboxGone("the sandbox container is not running (create a sandbox)")  # 409 Conflict
            uid = _uid(labels)
            if self.refuse_uids > 0 or (uid >= 0 and any(c.uid == uid for c in self._store.values())):
                self.refuse_uids = max(0, self.refuse_uids - 1)
                raise UidInUse("another sandbox runs as this uid")
            container = FakeContainer(
                id=self._new_id(),
                name=name,
                labels=labels,
                body=dict(body),
                running=False,
                created=time.time(),
                agent=self.agents_answer and bool(body.get("OpenStdin")),
            )
            self._store[container.id] = container
            return container.id

    def start(self, container_id: str) -> None:
        self._enter("start", container_id)
        with self._lock:
            self._get(container_id, "start a sandbox").running = True

    def inspect(self, container_id: str) -> ContainerInfo:
        self._enter("inspect", container_id)
        with self._lock:
            c = self._get(container_id, "inspect a sandbox")
            return ContainerInfo(
                id=c.id, name=c.name, running=c.running, labels=dict(c.labels), created=c.created
            )

    def list(self, labels: dict[str, str], name: str | None = None) -> list[ContainerInfo]:
        self._enter("list", name or "")
        with self._lock:
            return [
                ContainerInfo(
                    id=c.id,
                    name=c.name,
                    running=c.running,
                    labels=dict(c.labels),
                    created=float(int(c.created)),
                )
                for c in self._store.values()
                if all(c.labels.get(k) == v for k, v in labels.items()) and (name is None or c.name == name)
            ]

    def remove(self, container_id: str) -> None:
        self._enter("remove", container_id)
        with self._lock:
            self.removals.append(container_id)
            self._store.pop(container_id, None)  # the real backend ignores a container already gone
        self.drop_connections(container_id)

    def rename(self, container_id: str, name: str) -> None:
        self._enter("rename", container_id)
        with self._lock:
            container = self._get(container_id, "rename a sandbox")
            if any(c.name == name and c is not container for c in self._store.values()):
                raise SandboxGone("the sandbox container is not running (rename a sandbox)")  # 409 Conflict
            container.name = name

    def attach(self, container_id: str) -> tuple[socket.socket, bytes, Any]:
        self._enter("attach", container_id)
        with self._lock:
            container = self._running(container_id, "attach to a sandbox")
            connection = _AgentConnection(self, container)
            self._connections.setdefault(container_id, []).append(connection)
            self._attached.append(connection)
        connection.start()
        return connection.gateway_end, b"", None

    def exec(
        self, container_id: str, request: ExecRequest, on_output: OutputCallback | None = None
    ) -> ExecOutcome:
        stream = self.exec_open(container_id, request)
        return self.exec_result(stream, self.exec_pump(stream, request, on_output))

    def exec_open(self, container_id: str, request: ExecRequest) -> ExecStream:
        self._enter("exec_open", container_id)
        with self._lock:
            container = self._running(container_id, "start a command")
        command = self._command(container, request, "exec")
        if self.cannot_start is not None and self.cannot_start(command):
            with self._lock:
                self.commands.append(command)
            raise SandboxGone("the sandbox container is not running (start a command)")
        ours, theirs = socket.socketpair()
        exec_id = self._new_id()
        with self._lock:
            self._execs[exec_id] = (container, command, None)
        return ExecStream(container_id, exec_id, ours, theirs, b"", time.monotonic())

    def exec_pump(
        self, stream: ExecStream, request: ExecRequest, on_output: OutputCallback | None = None
    ) -> Pumped:
        out, err = BoundedCapture(request.max_output_bytes), BoundedCapture(request.max_output_bytes)
        try:
            with self._lock:
                container, command, _ = self._execs[stream.exec_id]
            reply = self._answer(command)
            for name, capture, data in (("stdout", out, reply.stdout), ("stderr", err, reply.stderr)):
                if data:
                    capture.write(data)
                    if on_output is not None:
                        on_output(name, data)
            with self._lock:
                self._execs[stream.exec_id] = (container, command, reply)
            if reply.lose_sandbox:
                self.vanish(container.id)
        finally:
            close_stream(stream.sock, stream.raw)
        return Pumped(out, err, reply.deadline_hit)

    def exec_result(self, stream: ExecStream, pumped: Pumped) -> ExecOutcome:
        self._enter("exec_result", stream.container_id)
        with self._lock:
            _, _, reply = self._execs.pop(stream.exec_id)
            lost = stream.container_id not in self._store
        assert reply is not None, "exec_result before exec_pump"
        out, err = pumped.out, pumped.err
        return ExecOutcome(
            exit_code=None if lost or reply.deadline_hit else reply.exit_code,
            stdout=out.getvalue(),
            stderr=err.getvalue(),
            stdout_bytes=out.total,
            stderr_bytes=err.total,
            truncated=out.truncated or err.truncated,
            deadline_hit=pumped.deadline_hit,
            duration_ms=(time.monotonic() - stream.started) * 1000,
            sandbox_lost=lost,
        )

    def close(self) -> None:
        self.closed = True


def _docker_frame(payload: bytes) -> bytes:
    """Docker's multiplexed-stream header (stdout) around a payload, as attach delivers it."""
    return struct.pack(">BxxxI", 1, len(payload)) + payload


class _AgentConnection:
    """The agent's end of one attach stream: hello, run, kill and reap, as gateway/agent does."""

    def __init__(self, backend: FakeBackend, container: FakeContainer) -> None:
        self.backend = backend
        self.container = container
        self.gateway_end, self.agent_end = socket.socketpair()
        self._send_lock = threading.Lock()
        self._runs: dict[int, Command] = {}
        self.closed = False

    def start(self) -> None:
        if not self.container.agent:  # nothing answers: the stream ends at once
            self.close()
            return
        threading.Thread(target=self._serve, name=f"fake-agent-{self.container.id[:8]}", daemon=True).start()

    def close(self) -> None:
        with self._send_lock:
            if self.closed:
                return
            self.closed = True
            with contextlib.suppress(OSError):
                self.agent_end.shutdown(socket.SHUT_RDWR)
            self.agent_end.close()

    def _serve(self) -> None:
        buffer = b""
        try:
            while True:
                data = self.agent_end.recv(65536)
                if not data:
                    break
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        self._handle(json.loads(line))
        except (OSError, ValueError):
            pass
        finally:
            self.close()

    def _handle(self, request: dict[str, Any]) -> None:
        op, request_id = request.get("op"), int(request.get("id", 0))
        if op == "hello":
            self._send(HELLO, 0, f"{request['nonce']} {PROTOCOL}".encode())
        elif op == "run":
            threading.Thread(target=self._run, args=(request_id, request), daemon=True).start()
        elif op == "kill":
            run = self._runs.get(request_id)
            if run is not None:
                run.cancelled.set()
        elif op == "reap":
            command = Command(self.container, ["kill", "-KILL", "-1"], "agent", [], "/", 1024, None)
            reply = self.backend._answer(command)
            self._send_json(EXIT, request_id, {"exit_code": reply.exit_code, "deadline_hit": False})
        else:
            self._send_json(FAIL, request_id, {"error": "bad-request", "message": f"unknown op {op!r}"})

    def _run(self, request_id: int, body: dict[str, Any]) -> None:
        argv = [str(a) for a in body["argv"]]
        command = Command(
            container=self.container,
            argv=argv,
            path="agent",
            env=[str(e) for e in body.get("env", [])],
            workdir=str(body.get("cwd") or "/"),
            max_output_bytes=int(body["max_output"]),
            timeout_s=body.get("timeout_s"),
        )
        backend = self.backend
        if backend.cannot_start is not None and backend.cannot_start(command):
            with backend._lock:
                backend.commands.append(command)
            message = "the sandbox could not start the command: Resource temporarily unavailable"
            self._send_json(FAIL, request_id, {"error": "no-resources", "message": message})
            return
        self._runs[request_id] = command
        try:
            reply = backend._answer(command)
        except Exception as exc:
            self._send_json(FAIL, request_id, {"error": "spawn-failed", "message": str(exc)[:200]})
            return
        finally:
            self._runs.pop(request_id, None)
        cap = command.max_output_bytes
        for kind, data in ((OUT, reply.stdout), (ERR, reply.stderr)):
            kept = data[:cap]
            for start in range(0, len(kept), MAX_PAYLOAD):
                self._send(kind, request_id, kept[start : start + MAX_PAYLOAD])
        if reply.lose_sandbox:
            backend.vanish(self.container.id)
            return
        summary = {
            "exit_code": None if reply.deadline_hit else reply.exit_code,
            "deadline_hit": reply.deadline_hit,
            "stdout_bytes": len(reply.stdout),
            "stderr_bytes": len(reply.stderr),
        }
        self._send_json(EXIT, request_id, summary)

    def _send(self, kind: int, request_id: int, payload: bytes) -> None:
        frame = _docker_frame(HEADER.pack(kind, request_id, len(payload)) + payload)
        with self._send_lock:
            if self.closed:
                return
            with contextlib.suppress(OSError):
                self.agent_end.sendall(frame)

    def _send_json(self, kind: int, request_id: int, body: dict[str, Any]) -> None:
        self._send(kind, request_id, json.dumps(body, separators=(",", ":")).encode())


def _implements_backend(backend: FakeBackend) -> Backend:
    """Checked by mypy: the fake has every method of the Backend protocol, with its signature."""
    return backend


def _unwrap_timeout(argv: list[str]) -> tuple[float | None, list[str]]:
    """What coreutils `timeout` would run, and after how long: the `docker exec` path wraps each
    command in `timeout --kill-after=K Ts`; anything else runs as it is."""
    if len(argv) >= 4 and argv[0] == "timeout" and argv[1].startswith("--kill-after="):
        return float(argv[2].removesuffix("s")), argv[3:]
    return None, argv
