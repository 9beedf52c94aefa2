"""Attacks on the socket proxy that the bypass corpus (test_socket_proxy.py) does not cover.

The attacker can send arbitrary bytes to the proxy's socket. Each test asserts the secure
behaviour against the real proxy and engine, so it fails while the hole it describes is open.
Containers made here carry their own test label (not the corpus's), and are removed afterwards.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import struct
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.backend.create_body import USER_LABEL, _seccomp_option, create_body
from gateway.setup.state import SetupPaths
from gateway.uids import DEFAULT_UID_RANGE, UidRange
from policy import load_policy
from tests.conftest import IMAGE, PROXY_URL
from tests.integration.test_socket_proxy import call, exec_body, refused_by, sandbox_name
from tests.integration.test_socket_proxy import engine_call as _engine
from tests.support import eventually

SOCKET = PROXY_URL.removeprefix("unix://")
ENGINE = "/var/run/docker.sock"
UIDS = UidRange.parse(DEFAULT_UID_RANGE)
TEST_LABEL = "sandbox-gateway.gateway"
TEST_VALUE = "proxy-attack-test"
UPGRADE = {"Connection": "Upgrade", "Upgrade": "tcp"}
#: How long a client may take to finish sending a request before the proxy should drop it.
IDLE_LIMIT = 30.0


def canonical(exec_path: str = "exec", profile: str = "default", uid: int | None = None) -> dict[str, Any]:
    spec = load_policy().profiles[profile].sandbox.model_copy(update={"exec_path": exec_path})
    labels = {"sandbox-gateway.managed": "true", TEST_LABEL: TEST_VALUE}
    return create_body(spec, uid=uid or UIDS.pick(), image=IMAGE, labels=labels)


@pytest.fixture(autouse=True)
def remove_what_the_test_made() -> Iterator[None]:
    yield
    query = json.dumps({"label": [f"{TEST_LABEL}={TEST_VALUE}"]})
    for row in _engine("GET", f"/v1.41/containers/json?all=1&filters={query}").json():
        _engine("DELETE", f"/v1.41/containers/{row['Id']}?force=1")


def _raw_exchange(data: bytes, *, timeout: float = 10.0) -> bytes:
    """Send raw bytes to the proxy and read until it closes (or `timeout` passes)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(SOCKET)
        sock.sendall(data)
        sock.settimeout(timeout)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except TimeoutError:
            pass
    return out


def _demux(stream: bytes) -> bytes:
    """stdout+stderr of a multiplexed (non-tty) Docker stream."""
    out, rest = b"", stream
    while len(rest) >= 8:
        size = struct.unpack(">I", rest[4:8])[0]
        out += rest[8 : 8 + size]
        rest = rest[8 + size :]
    return out


def _run_in(container_id: str, user: str, cmd: list[str]) -> str:
    """Run `cmd` in a sandbox through the proxy (exec create + start), as the broker does."""
    body = exec_body(user, Container=container_id, Cmd=cmd)
    made = call("POST", f"/v1.41/containers/{container_id}/exec", body)
    assert made.status_code == 201, made.text
    start = b'{"Detach":false,"Tty":false}'
    head = (
        f"POST /v1.41/exec/{made.json()['Id']}/start HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\n"
        f"Upgrade: tcp\r\nContent-Type: application/json\r\nContent-Length: {len(start)}\r\n\r\n"
    )
    reply = _raw_exchange(head.encode() + start, timeout=20)
    assert reply.startswith(b"HTTP/1.1 101"), reply[:200]
    return _demux(reply.partition(b"\r\n\r\n")[2]).decode(errors="replace")


def _made_and_started(body: dict[str, Any]) -> tuple[httpx.Response, str | None]:
    created = call("POST", f"/v1.41/containers/create?name={sandbox_name()}", body)
    if created.status_code != 201:
        return created, None
    container_id = str(created.json()["Id"])
    assert call("POST", f"/v1.41/containers/{container_id}/start").status_code == 204
    return created, container_id


# -- seccomp: the profile must be the one sent for the container's own runtime ---------------------

#: clone3 with CLONE_NEWUSER | CLONE_NEWNS; the project's runc profile answers ENOSYS so that only the
#: flag-filtered clone is left. Prints the syscall's return value and errno.
_CLONE3_PROBE = r"""
import ctypes, os, struct
libc = ctypes.CDLL(None, use_errno=True)
args = ctypes.create_string_buffer(struct.pack("8Q", 0x10000000 | 0x20000, 0, 0, 0, 17, 0, 0, 0))
pid = libc.syscall(435, args, 64)
if pid == 0:
    os._exit(0)
print("clone3", pid, ctypes.get_errno())
if pid > 0:
    os.waitpid(pid, 0)
"""


def _runtime_mismatched_seccomp() -> dict[str, Any]:
    """The broker's runc body with the project's profile as sent for runsc (clone3 allowed there,
    since gVisor implements none)."""
    body = canonical("exec")
    spec = load_policy().profiles["default"].sandbox
    assert spec.runtime == "runc" and spec.seccomp != "default"
    body["HostConfig"]["SecurityOpt"] = ["no-new-privileges:true", _seccomp_option(spec.seccomp, "runsc")[0]]
    return body


def test_the_runsc_seccomp_variant_is_refused_under_runc() -> None:
    """The runsc variant of the profile allows clone3 unfiltered; under runc it must not be accepted."""
    name = sandbox_name()
    response = call("POST", f"/v1.41/containers/create?name={name}", _runtime_mismatched_seccomp())
    assert response.status_code == 403, response.text
    assert refused_by(response) == "security-opt"
    assert _engine("GET", f"/v1.41/containers/{name}/json").status_code == 404


def test_no_runc_sandbox_can_make_a_user_namespace_with_clone3() -> None:
    """Behaviour: whatever the proxy lets through, clone3(CLONE_NEWUSER) fails inside a runc sandbox
    (with the runsc variant accepted, it succeeds and the child has every capability in its namespace)."""
    body = _runtime_mismatched_seccomp()
    created, container_id = _made_and_started(body)
    if container_id is None:
        assert created.status_code == 403
        return
    out = _run_in(container_id, body["Labels"][USER_LABEL], ["python3", "-c", _CLONE3_PROBE])
    ret = int(out.split()[1])
    assert ret == -1, f"clone3(CLONE_NEWUSER) made a child in a runc sandbox: {out!r}"


# -- which containers count as sandboxes ------------------------------------------------------------


def _lookalike(**changes: Any) -> tuple[str, str]:
    """A container made on the raw engine (an older gateway's sandbox, another tool's container) that
    has the four marks the proxy checks (sandbox name, managed label, network none, not privileged)
    but not a sandbox's shape. Created, not started: (name, id)."""
    name = sandbox_name()
    uid = UIDS.pick()
    body: dict[str, Any] = {
        "Image": IMAGE,
        "Cmd": ["sh"],
        "Entrypoint": [],
        "User": f"{uid}:{uid}",
        "Env": ["SECRET=hunter2"],
        "OpenStdin": True,
        "AttachStdin": True,
        "AttachStdout": True,
        "AttachStderr": True,
        "Labels": {"sandbox-gateway.managed": "true", USER_LABEL: f"{uid}:{uid}", TEST_LABEL: TEST_VALUE},
        "HostConfig": {"NetworkMode": "none", "Privileged": False},
    }
    for path, value in changes.items():
        node = body
        *parents, last = path.split("/")
        for part in parents:
            node = node[part]
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    created = _engine("POST", f"/v1.41/containers/create?name={name}", body)
    assert created.status_code == 201, created.text
    return name, str(created.json()["Id"])


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"User": "0:0"}, id="root-user"),
        pytest.param({"HostConfig/Binds": ["/etc:/hostetc:ro"]}, id="host-bind"),
        pytest.param({"HostConfig/CapAdd": ["SYS_ADMIN"]}, id="cap-sys-admin"),
        pytest.param({"HostConfig/PidMode": "host"}, id="host-pid"),
        pytest.param({"HostConfig/SecurityOpt": ["seccomp=unconfined"]}, id="seccomp-unconfined"),
        pytest.param(
            {
                "HostConfig/Devices": [
                    {"PathOnHost": "/dev/null", "PathInContainer": "/dev/x", "CgroupPermissions": "rwm"}
                ]
            },
            id="device",
        ),
        # A sandbox of the gateway before per-sandbox uids: its agent ran as 1000:1000, no uid label.
        pytest.param({"User": "1000:1000", f"Labels/{USER_LABEL}": None}, id="legacy-uid-1000"),
    ],
)
def test_a_container_with_the_marks_but_not_the_shape_of_a_sandbox_is_not_one(
    changes: dict[str, Any],
) -> None:
    """Start, attach, inspect (Env) and kill reach only containers a create through the proxy could
    have made; the four marks alone are not enough."""
    name, container_id = _lookalike(**changes)
    start = call("POST", f"/v1.41/containers/{name}/start")
    assert start.status_code == 404, f"started a non-sandbox: {start.status_code} {start.text}"
    inspect = call("GET", f"/v1.41/containers/{container_id}/json")
    assert inspect.status_code == 404 and "hunter2" not in inspect.text
    attach_path = f"/v1.41/containers/{container_id}/attach?stream=1&stdin=1&stdout=1"
    attach = call("POST", attach_path, headers=UPGRADE)
    assert attach.status_code == 404
    assert not _engine("GET", f"/v1.41/containers/{container_id}/json").json()["State"]["Running"]


def test_attach_to_a_root_lookalike_gives_no_shell() -> None:
    """End to end: a lookalike running sh as root with the host's /etc bound is started and driven
    through the proxy (attach stdin) to read /etc/shadow of the host."""
    _name, container_id = _lookalike(**{"User": "0:0", "HostConfig/Binds": ["/etc:/hostetc:ro"]})
    if call("POST", f"/v1.41/containers/{container_id}/start").status_code != 204:
        return
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(SOCKET)
        sock.sendall(
            f"POST /v1.41/containers/{container_id}/attach?stream=1&stdin=1&stdout=1&stderr=1 HTTP/1.1\r\n"
            "Host: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n".encode()
        )
        sock.settimeout(10)
        head = sock.recv(4096)
        if not head.startswith(b"HTTP/1.1 101"):
            return
        sock.sendall(b"id -u; head -c 5 /hostetc/shadow; exit\n")
        out = head
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except TimeoutError:
            pass
    shown = _demux(out.partition(b"\r\n\r\n")[2])
    assert b"root:" not in shown and not shown.startswith(b"0\n"), shown[:200]


def test_the_container_list_shows_only_sandboxes() -> None:
    """A container that only wears the managed label (privileged, the host's /etc bound) is not
    listed with its mounts, command and labels."""
    name = f"victim-{uuid.uuid4().hex[:8]}"
    body = {
        "Image": IMAGE,
        "Cmd": ["sleep", "infinity"],
        "Labels": {"sandbox-gateway.managed": "true", TEST_LABEL: TEST_VALUE, "secret": "s3cr3t"},
        "HostConfig": {"Privileged": True, "Binds": ["/etc:/hostetc:ro"]},
    }
    created = _engine("POST", f"/v1.41/containers/create?name={name}", body)
    assert created.status_code == 201, created.text
    listed = call("GET", "/v1.41/containers/json?all=1").json()
    assert created.json()["Id"] not in {row["Id"] for row in listed}


# -- bind sources: what the engine mounts at start must be what was checked at create -----------------


@pytest.fixture
def mount_dir() -> Iterator[str]:
    path = str(SetupPaths.from_env().mount_root / f"proxy-attack-{uuid.uuid4().hex[:8]}")
    yield path
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


def test_a_bind_source_that_does_not_exist_is_refused(mount_dir: str) -> None:
    """The check passes a missing source (nothing to resolve); the engine creates it, or follows
    whatever is put there, only at start."""
    body = copy.deepcopy(canonical())
    body["HostConfig"]["Binds"] = [f"{mount_dir}:/tools:ro"]
    response = call("POST", f"/v1.41/containers/create?name={sandbox_name()}", body)
    assert response.status_code == 403, response.text
    assert refused_by(response) == "bind-source"


def test_a_bind_source_swapped_for_a_link_after_create_does_not_expose_the_host(mount_dir: str) -> None:
    """Checked as a real directory at create, replaced by a link to / before start: the sandbox must
    not see the host's root at /tools (start refused, or the link not followed)."""
    os.mkdir(mount_dir)
    body = canonical()
    body["HostConfig"]["Binds"] = [f"{mount_dir}:/tools:ro"]
    created = call("POST", f"/v1.41/containers/create?name={sandbox_name()}", body)
    assert created.status_code == 201, created.text
    container_id = created.json()["Id"]
    os.rmdir(mount_dir)
    os.symlink("/", mount_dir)
    if call("POST", f"/v1.41/containers/{container_id}/start").status_code != 204:
        return
    out = _run_in(container_id, body["Labels"][USER_LABEL], ["sh", "-c", "ls /tools"])
    assert "etc" not in out.split(), f"the host's root is mounted at /tools: {out[:300]!r}"


# -- denial of service: a client that never finishes its request -------------------------------------


def _closed(sock: socket.socket, wait_s: float) -> bool:
    """Whether the peer has closed `sock`: an end of stream or a broken connection within `wait_s`
    (what arrives meanwhile is read and dropped)."""
    sock.settimeout(wait_s)
    try:
        return sock.recv(65536) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def _wait_closed(sock: socket.socket, message: str) -> None:
    """Until the proxy closes `sock`, for as long as the proxy's idle limit and a margin."""
    eventually(lambda: _closed(sock, 1.0), timeout_s=IDLE_LIMIT + 15, interval_s=0, message=message)


def test_an_incomplete_request_head_is_dropped() -> None:
    """No idle or header timeout: each such connection holds a descriptor forever, and the proxy
    (open-file limit 20000, no connection cap) stops accepting once enough are held."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(SOCKET)
        sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\n")
        _wait_closed(sock, "the proxy keeps a half-sent request head open forever")


def test_a_slowly_trickled_request_head_is_dropped() -> None:
    """Slowloris: one header byte every two seconds keeps the connection alive indefinitely."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(SOCKET)
        sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nX-Pad: ")
        sock.settimeout(2.0)

        def one_more_byte_then_closed() -> bool:
            try:
                sock.sendall(b"a")
            except TimeoutError:
                return False
            except OSError:
                return True
            return _closed(sock, 2.0)

        eventually(
            one_more_byte_then_closed,
            timeout_s=IDLE_LIMIT + 15,
            interval_s=0,
            message="a trickled request head is never cut off",
        )


def test_a_request_body_that_never_completes_is_dropped() -> None:
    """A body announced at the cap and never sent: up to 512 KiB buffered per connection, forever."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(SOCKET)
        sock.sendall(
            f"POST /v1.41/containers/create?name={sandbox_name()} HTTP/1.1\r\nHost: docker\r\n"
            "Content-Type: application/json\r\nContent-Length: 524288\r\n\r\n".encode()
            + b'{"Labels": "'
            + b"x" * 400_000
        )
        _wait_closed(sock, "the proxy waits forever for the rest of the body")
