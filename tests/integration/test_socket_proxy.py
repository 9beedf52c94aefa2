"""The socket proxy allows what the broker needs and refuses everything else (real HAProxy, real engine)."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from tests.conftest import IMAGE, PROXY_URL

BASE = PROXY_URL.replace("tcp://", "http://")


def call(method: str, path: str, body: object | None = None, raw: bytes | None = None) -> httpx.Response:
    content = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": "application/json"} if content is not None else {}
    with httpx.Client(base_url=BASE, timeout=10) as client:
        return client.request(method, path, content=content, headers=headers)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/_ping"),
        ("GET", "/v1.41/_ping"),
        ("GET", "/version"),
        ("GET", "/v1.41/containers/json"),
        ("GET", f"/v1.41/images/{IMAGE}/json"),
    ],
)
def test_allowed_reads_pass(method: str, path: str) -> None:
    assert call(method, path).status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("POST", "/build", id="build"),
        pytest.param("POST", "/v1.41/build", id="build-versioned"),
        pytest.param("POST", "/volumes/create", id="volumes-create"),
        pytest.param("GET", "/volumes", id="volumes-list"),
        pytest.param("POST", "/networks/create", id="networks-create"),
        pytest.param("GET", "/networks", id="networks-list"),
        pytest.param("POST", "/swarm/init", id="swarm-init"),
        pytest.param("GET", "/secrets", id="secrets"),
        pytest.param("GET", "/configs", id="configs"),
        pytest.param("GET", "/plugins", id="plugins"),
        pytest.param("GET", "/info", id="system-info"),
        pytest.param("GET", "/system/df", id="system-df"),
        pytest.param("GET", "/events", id="events"),
        pytest.param("POST", "/commit", id="commit"),
        pytest.param("POST", "/images/create?fromImage=alpine", id="image-pull"),
        pytest.param("GET", "/images/json", id="image-list"),
        pytest.param("DELETE", f"/images/{IMAGE}", id="image-remove"),
        pytest.param("POST", "/auth", id="auth"),
        pytest.param("GET", "/containers/abc/logs", id="container-logs"),
        pytest.param("GET", "/containers/abc/archive?path=/", id="archive-read"),
        pytest.param("PUT", "/containers/abc/archive?path=/", id="archive-write"),
        pytest.param("POST", "/containers/abc/update", id="container-update"),
        pytest.param("POST", "/containers/prune", id="container-prune"),
        pytest.param("POST", "/containers/../build", id="dotdot"),
        pytest.param("POST", "/v1.41/containers/x/%2e%2e/%2e%2e/build", id="encoded-dotdot"),
        pytest.param("GET", "//info", id="double-slash"),
        pytest.param("PUT", "/containers/create", id="wrong-method"),
        pytest.param("POST", "/containers/abc/rename?name=evil", id="rename-other-name"),
        pytest.param("POST", "/containers/abc/rename?name=sgw-0123456789abcdef&x=1", id="rename-extra-param"),
        pytest.param("POST", "/containers/abc/rename?name=sgw-0123456789abcdeff", id="rename-long-name"),
        pytest.param("POST", "/containers/abc/rename", id="rename-no-name"),
    ],
)
def test_everything_else_is_403(method: str, path: str) -> None:
    assert call(method, path, raw=b"{}" if method in ("POST", "PUT") else None).status_code == 403


def test_rename_passes_only_to_a_sandbox_name() -> None:
    """The one rename the broker makes (a pooled sandbox to its principal's name) reaches the engine."""
    assert (
        call("POST", "/v1.41/containers/no-such-container/rename?name=sgw-0123456789abcdef").status_code
        == 404
    )


def _body(**host_config: object) -> dict[str, object]:
    return {
        "Image": IMAGE,
        "Cmd": ["true"],
        "User": "1000:1000",
        "HostConfig": {"NetworkMode": "none", **host_config},
    }


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(_body(Privileged=True), id="privileged"),
        pytest.param(_body(NetworkMode="host"), id="host-network"),
        pytest.param(_body(PidMode="host"), id="host-pid"),
        pytest.param(_body(IpcMode="host"), id="host-ipc"),
        pytest.param(_body(Binds=["/var/run/docker.sock:/var/run/docker.sock"]), id="socket-bind"),
        pytest.param(_body(Binds=["/etc:/host-etc:ro"]), id="host-bind"),
        pytest.param(_body(Binds=["/tmp:/tools:ro", "/:/host"]), id="allowed-then-forbidden-bind"),
        pytest.param(_body(Mounts=[{"Type": "bind", "Source": "/", "Target": "/host"}]), id="mounts"),
        pytest.param(
            _body(Devices=[{"PathOnHost": "/dev/mem", "PathInContainer": "/dev/mem"}]), id="devices"
        ),
        pytest.param(_body(CapAdd=["SYS_ADMIN"]), id="cap-sys-admin"),
        pytest.param(_body(CapAdd=["CHOWN", "NET_RAW"]), id="cap-second-entry"),
        pytest.param(_body(SecurityOpt=["seccomp=unconfined"]), id="seccomp-unconfined"),
        pytest.param(_body(SecurityOpt=["apparmor:unconfined"]), id="apparmor-unconfined"),
        pytest.param(
            _body(SecurityOpt=['seccomp={"defaultAction":"SCMP_ACT_ALLOW"}']), id="seccomp-allow-all"
        ),
        pytest.param({**_body(), "User": "0:0"}, id="root-user"),
        pytest.param({**_body(), "User": "root"}, id="root-name"),
        pytest.param({**_body(), "User": ""}, id="image-default-user"),
        pytest.param({**_body(), "Volumes": {"/data": {}}}, id="anonymous-volume"),
        pytest.param(
            {"image": IMAGE, "user": "1000:1000", "hostconfig": {"privileged": True}}, id="lower-case-keys"
        ),
    ],
)
def test_dangerous_create_bodies_are_refused_by_the_proxy(body: dict[str, object]) -> None:
    name = f"sgw-proxy-test-{uuid.uuid4().hex[:8]}"
    try:
        response = call("POST", f"/v1.41/containers/create?name={name}", body)
        assert response.status_code == 403
        assert call("GET", f"/v1.41/containers/{name}/json").status_code == 404
    finally:
        call("DELETE", f"/v1.41/containers/{name}?force=1")


def test_unicode_escapes_in_a_create_body_are_refused() -> None:
    raw = json.dumps(_body()).replace('"NetworkMode"', '"Privileg\\u0065d": true, "NetworkMode"').encode()
    assert call("POST", "/v1.41/containers/create", raw=raw).status_code == 403


def test_a_hardened_create_passes_and_exec_runs_through_the_hijacked_stream(backend) -> None:  # type: ignore[no-untyped-def]
    from gateway.backend.base import ExecRequest

    body = _body(ReadonlyRootfs=True, CapDrop=["ALL"], Binds=[])
    body["Cmd"] = ["sleep", "infinity"]
    container = backend.create(f"sgw-proxy-test-{uuid.uuid4().hex[:8]}", body)
    try:
        backend.start(container)
        outcome = backend.exec(
            container,
            ExecRequest(
                argv=["sh", "-c", "echo out; echo err >&2; exit 5"],
                user="1000:1000",
                workdir="/",
                env=[],
                timeout_s=10,
                max_output_bytes=1024,
            ),
        )
        assert (outcome.exit_code, outcome.stdout, outcome.stderr) == (5, b"out\n", b"err\n")
    finally:
        backend.remove(container)
