"""The Docker backend: the only module that imports `docker`.

It speaks to the engine through the socket proxy (a tcp:// DOCKER_HOST). Engine and proxy
failures become EngineError or SandboxGone with a message that says what to do.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from typing import Any

import docker
import docker.errors
import requests

from gateway.backend.base import (
    ContainerInfo,
    ExecOutcome,
    ExecRequest,
    ExecStream,
    OutputCallback,
    Pumped,
    close_stream,
)
from gateway.backend.exec_stream import already_buffered, pump
from gateway.backend.frames import BoundedCapture
from gateway.errors import AddressInUse, EngineError, SandboxError, SandboxGone, UidInUse
from gateway.telemetry import tracer

__all__ = ["DockerBackend"]

_API_VERSION = "1.41"  # Docker 20.10; newer engines accept it too


def _engine_error(exc: Exception, base_url: str, what: str) -> EngineError:
    if isinstance(exc, docker.errors.APIError) and exc.status_code == 403:
        # The proxy's own words (which rule refused), never the engine's: the proxy wrote them.
        return EngineError(f"the socket proxy refused to {what} (403): {str(exc.explanation or '')[:300]}")
    if isinstance(exc, docker.errors.APIError) and exc.status_code in (502, 503, 504):
        return EngineError(
            f"the Docker engine behind the socket proxy at {base_url} is not answering "
            f"(HTTP {exc.status_code}) while trying to {what}; is dockerd running?"
        )
    if isinstance(exc, requests.exceptions.ConnectionError | ConnectionError | socket.timeout):
        return EngineError(
            f"cannot reach the Docker engine through {base_url} while trying to {what}; "
            "is the socket proxy running? (`sandbox-gateway setup` starts it)"
        )
    return EngineError(f"the Docker engine failed to {what}")


class DockerBackend:
    """Backend over one engine, reached at `base_url` (normally the socket proxy)."""

    def __init__(
        self, base_url: str, *, timeout_s: float = 30.0, pool_size: int = 32, tls: Any = None
    ) -> None:
        self.base_url = base_url
        self._api = docker.APIClient(
            base_url=base_url, version=_API_VERSION, timeout=timeout_s, max_pool_size=pool_size, tls=tls
        )
        if base_url.startswith(("tcp://", "http://", "https://")):  # docker-py leaves requests' 10 there
            for scheme in ("http://", "https://"):
                self._api.mount(scheme, requests.adapters.HTTPAdapter(pool_maxsize=pool_size))

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except docker.errors.NotFound as exc:
            raise SandboxGone(f"the sandbox container is gone ({what})") from exc
        except docker.errors.APIError as exc:
            # 409, or a 500 saying so when the container died between exec create and start.
            if exc.status_code == 409 or "is not running" in str(exc.explanation or ""):
                raise SandboxGone(f"the sandbox container is not running ({what})") from exc
            if "Address already in use" in str(exc.explanation or ""):  # an egress address (at start)
                raise AddressInUse(f"another container holds this egress address ({what})") from exc
            raise _engine_error(exc, self.base_url, what) from exc
        except (requests.exceptions.RequestException, OSError) as exc:
            raise _engine_error(exc, self.base_url, what) from exc

    def ping(self) -> None:
        self._call("ping", self._api.ping)

    def image_present(self, image: str) -> bool:
        try:
            self._call("inspect the image", self._api.inspect_image, image)
        except SandboxGone:
            return False
        return True

    def image_identity(self, image: str) -> tuple[str, frozenset[str]]:
        """The image's id and its repo digests (`sha256:...` each), to check a pinned image."""
        try:
            data = self._call("inspect the image", self._api.inspect_image, image)
        except SandboxGone as exc:
            raise SandboxError(
                f"the sandbox image {image} is not on the engine; build it with `sandbox-gateway setup` "
                "(or load it), or set MCP_EXECUTOR_IMAGE to an image the policy allows",
                code="image-missing",
            ) from exc
        digests = frozenset(str(ref).partition("@")[2] for ref in data.get("RepoDigests") or [])
        return str(data.get("Id", "")), digests - {""}

    def create(self, name: str, body: dict[str, object], needs: Mapping[str, str] | None = None) -> str:
        if needs:
            wanted = ", ".join(f"{key}={value}" for key, value in needs.items())
            raise EngineError(
                f"the profile asks for a sandbox host with the labels {wanted}; only a fleet of hosts "
                "(--hosts-file) has host labels",
                code="no-host-available",
            )
        try:
            result = self._call("create a sandbox", self._api.create_container_from_config, body, name=name)
        except SandboxGone as exc:
            if "(uid-in-use)" in str(getattr(exc.__cause__, "explanation", "")):
                raise UidInUse("another sandbox runs as this uid") from exc
            raise
        return str(result["Id"])

    def start(self, container_id: str) -> None:
        self._call("start a sandbox", self._api.start, container_id)

    def inspect(self, container_id: str) -> ContainerInfo:
        data = self._call("inspect a sandbox", self._api.inspect_container, container_id)
        state = data.get("State") or {}
        return ContainerInfo(
            id=data["Id"],
            name=data.get("Name", "").lstrip("/"),
            running=bool(state.get("Running")),
            labels=(data.get("Config") or {}).get("Labels") or {},
            oom_killed=bool(state.get("OOMKilled")),
        )

    def inspect_raw(self, container_id: str) -> dict[str, Any]:
        """The engine's full inspect document (for tests and `sandbox_info`)."""
        return dict(self._call("inspect a sandbox", self._api.inspect_container, container_id))

    def attach(self, container_id: str) -> tuple[socket.socket, bytes, Any]:
        """The container's stdin/stdout/stderr as one hijacked stream (for its agent), any bytes
        already read with the response headers, and the response object, which must stay referenced
        as long as the socket is used (collecting it would hand the connection back to the pool)."""
        raw = self._call(
            "attach to a sandbox",
            self._api.attach_socket,
            container_id,
            params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1},
        )
        sock: socket.socket = getattr(raw, "_sock", raw)
        sock.setblocking(False)  # so that peeking at the buffered reader cannot wait for data
        early = already_buffered(raw)
        sock.settimeout(None)
        return sock, early, raw

    def remove(self, container_id: str) -> None:
        try:
            self._call("remove a sandbox", self._api.remove_container, container_id, force=True, v=True)
        except SandboxGone:
            return

    def rename(self, container_id: str, name: str) -> None:
        self._call("rename a sandbox", self._api.rename, container_id, name)

    def list(self, labels: dict[str, str], name: str | None = None) -> list[ContainerInfo]:
        """Containers with all these labels (and exactly this name, when given)."""
        filters: dict[str, Any] = {"label": [f"{k}={v}" for k, v in labels.items()]}
        if name is not None:
            filters["name"] = [f"^/{name}$"]
        rows = self._call("list sandboxes", self._api.containers, all=True, filters=filters)
        return [
            ContainerInfo(
                id=row["Id"],
                name=(row.get("Names") or ["/"])[0].lstrip("/"),
                running=row.get("State") == "running",
                labels=row.get("Labels") or {},
                created=float(row.get("Created") or 0),
            )
            for row in rows
        ]

    def exec_open(self, container_id: str, request: ExecRequest) -> ExecStream:
        """exec create and start (short Docker API calls): the command runs, its stream is open."""
        started = time.monotonic()
        attributes = {"sandbox_gateway.container_id": container_id}
        with tracer().start_as_current_span("docker.exec_create", attributes=attributes):
            created = self._call(
                "start a command",
                self._api.exec_create,
                container_id,
                request.argv,
                stdout=True,
                stderr=True,
                stdin=False,
                tty=False,
                user=request.user,
                workdir=request.workdir,
                environment=request.env,
            )
        exec_id = created["Id"]
        with tracer().start_as_current_span("docker.exec_start", attributes=attributes):
            raw = self._call("start a command", self._api.exec_start, exec_id, socket=True)
        sock: socket.socket = getattr(raw, "_sock", raw)  # a TLS connection is the socket itself
        try:
            sock.setblocking(False)
            early = already_buffered(raw)
        except OSError:
            close_stream(sock, raw)
            raise
        return ExecStream(container_id, exec_id, sock, raw, early, started)

    def exec_pump(
        self, stream: ExecStream, request: ExecRequest, on_output: OutputCallback | None = None
    ) -> Pumped:
        """Read the command's output until it ends or its deadline passes (as long as the command
        runs: call it on threads of the sandbox's own, not on the pool for short calls); closes the stream."""
        out, err = BoundedCapture(request.max_output_bytes), BoundedCapture(request.max_output_bytes)
        attributes = {"sandbox_gateway.container_id": stream.container_id}
        with tracer().start_as_current_span("docker.exec_stream", attributes=attributes) as span:
            try:
                deadline = stream.started + request.timeout_s + request.grace_s
                deadline_hit = pump(stream.sock, out, err, deadline, stream.early, on_output=on_output)
            finally:
                close_stream(stream.sock, stream.raw)
            span.set_attribute("sandbox_gateway.stdout_bytes", out.total)
            span.set_attribute("sandbox_gateway.stderr_bytes", err.total)
        return Pumped(out, err, deadline_hit)

    def exec_result(self, stream: ExecStream, pumped: Pumped) -> ExecOutcome:
        """exec inspect (a short Docker API call): the outcome of a pumped command."""
        attributes = {"sandbox_gateway.container_id": stream.container_id}
        with tracer().start_as_current_span("docker.exec_inspect", attributes=attributes):
            try:
                info = self._call("read a command's exit status", self._api.exec_inspect, stream.exec_id)
                lost = False
            except SandboxGone:
                info, lost = {}, True
        exit_code = None if info.get("Running") else info.get("ExitCode")
        out, err = pumped.out, pumped.err
        return ExecOutcome(
            exit_code=exit_code,
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
        self._api.close()


def tls_config(ca_cert: str, client_cert: str, client_key: str) -> Any:
    """TLS for a remote engine (tcp://host:2376): verify it against `ca_cert`, present the client pair.

    The only place the gateway builds Docker TLS settings, so that `docker` stays imported here alone.
    """
    return _EngineTLS(client_cert=(client_cert, client_key), ca_cert=ca_cert, verify=ca_cert)


class _EngineTLS(docker.tls.TLSConfig):  # type: ignore[misc]
    def configure_client(self, client: Any) -> None:
        super().configure_client(client)
        # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace a session's CA and routes through
        # HTTP(S)_PROXY: the engine is trusted through its own CA only, and reached directly.
        client.trust_env = False
