"""The socket proxy against an attacker who can reach it: a bypass corpus on the real proxy and engine.

Every case starts from the exact body the broker sends and changes one thing the way an attacker
would (spellings of uid 0, keys that Go folds onto known ones, whitespace, duplicates, host paths
at allowed targets, verbs on containers that are not sandboxes...). Each must be refused, by the
rule that should refuse it, and leave nothing behind on the engine.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.backend.create_body import USER_LABEL, create_body
from gateway.setup.state import SetupPaths
from gateway.uids import DEFAULT_UID_RANGE, UidRange
from policy import load_policy
from tests.conftest import IMAGE, PROXY_URL
from tests.support import matching, read_events
from tests.support.proxy import PrivateProxy

SOCKET = PROXY_URL.removeprefix("unix://")
ENGINE = "/var/run/docker.sock"
REPO = Path(__file__).resolve().parents[2]
UIDS = UidRange.parse(DEFAULT_UID_RANGE)
TEST_LABEL = "sandbox-gateway.gateway"
#: This test process's own label value, so that parallel workers never clean up each other's containers.
RUN = f"proxy-test-{uuid.uuid4().hex[:8]}"


def call(
    method: str,
    path: str,
    body: object | None = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    through: str = SOCKET,
) -> httpx.Response:
    content = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    sent = {"Content-Type": "application/json"} if content is not None else {}
    with httpx.Client(
        transport=httpx.HTTPTransport(uds=through), base_url="http://docker", timeout=30
    ) as client:
        return client.request(method, path, content=content, headers={**sent, **(headers or {})})


def refused_by(response: httpx.Response) -> str:
    """The rule the proxy named in its refusal ('' when the proxy did not refuse)."""
    message = response.json().get("message", "") if response.content else ""
    prefix = "socket proxy refused ("
    return message[len(prefix) : message.index(")")] if message.startswith(prefix) else ""


def sandbox_name() -> str:
    return f"sgw-{uuid.uuid4().hex[:16]}"


def canonical(exec_path: str = "agent", profile: str = "default", uid: int | None = None) -> dict[str, Any]:
    """The body the broker sends for a profile of the shipped policy."""
    spec = load_policy().profiles[profile].sandbox.model_copy(update={"exec_path": exec_path})
    labels = {"sandbox-gateway.managed": "true", TEST_LABEL: RUN}
    image = IMAGE if IMAGE in spec.image_names() else spec.image_names()[0]  # data-science has its own
    return create_body(spec, uid=uid or UIDS.pick(), image=image, labels=labels)


def engine_call(method: str, path: str, body: object | None = None) -> httpx.Response:
    """The raw engine, for setting up victims and checking that nothing was made (never the gateway's way)."""
    return call(method, path, body, through=ENGINE)


def remove_labelled(run: str) -> None:
    """Remove every container a test run labelled `sandbox-gateway.gateway=run` (on the raw engine)."""
    rows = engine_call(
        "GET", '/v1.41/containers/json?all=1&filters={"label":["sandbox-gateway.gateway=' + run + '"]}'
    )
    for row in rows.json():
        engine_call("DELETE", f"/v1.41/containers/{row['Id']}?force=1")


@pytest.fixture(autouse=True)
def remove_what_the_test_made() -> Iterator[None]:
    yield
    remove_labelled(RUN)


# -- routes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/_ping"),
        ("HEAD", "/_ping"),
        ("GET", "/v1.41/_ping"),
        ("GET", "/v1.41/version"),
        ("GET", "/v1.41/containers/json"),
        ("GET", f"/v1.41/images/{IMAGE}/json"),
    ],
)
def test_allowed_reads_pass(method: str, path: str) -> None:
    assert call(method, path).status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("POST", "/v1.41/build", id="build"),
        pytest.param("POST", "/build", id="build-unversioned"),
        pytest.param("POST", "/v1.41/volumes/create", id="volumes-create"),
        pytest.param("GET", "/v1.41/volumes", id="volumes-list"),
        pytest.param("POST", "/v1.41/networks/create", id="networks-create"),
        pytest.param("POST", "/v1.41/swarm/init", id="swarm-init"),
        pytest.param("GET", "/v1.41/secrets", id="secrets"),
        pytest.param("GET", "/v1.41/plugins", id="plugins"),
        pytest.param("GET", "/v1.41/info", id="system-info"),
        pytest.param("GET", "/v1.41/events", id="events"),
        pytest.param("POST", "/v1.41/commit", id="commit"),
        pytest.param("POST", "/v1.41/images/create?fromImage=alpine", id="image-pull"),
        pytest.param("GET", "/v1.41/images/json", id="image-list"),
        pytest.param("DELETE", f"/v1.41/images/{IMAGE}", id="image-remove"),
        pytest.param("GET", "/v1.41/containers/abc/logs", id="container-logs"),
        pytest.param("GET", "/v1.41/containers/abc/archive?path=/", id="archive-read"),
        pytest.param("PUT", "/v1.41/containers/abc/archive?path=/", id="archive-write"),
        pytest.param("POST", "/v1.41/containers/abc/update", id="container-update"),
        pytest.param("POST", "/v1.41/containers/prune", id="container-prune"),
        pytest.param("GET", "/v1.41/containers/abc/export", id="export"),
        pytest.param("POST", "/containers/create", id="create-unversioned"),
        pytest.param("POST", "/v1.24/containers/create", id="create-older-version"),
        pytest.param("POST", "/v1.12/containers/abc/start", id="start-with-hostconfig-version"),
        pytest.param("POST", "/v1.41/containers/../build", id="dotdot"),
        pytest.param("POST", "/v1.41/containers/x/%2e%2e/%2e%2e/build", id="encoded-dotdot"),
        pytest.param("POST", "/v1.41/containers%2fcreate", id="encoded-slash"),
        pytest.param("GET", "//v1.41/info", id="double-slash"),
        pytest.param("GET", "/V1.41/containers/json", id="upper-case-version"),
        pytest.param("PUT", "/v1.41/containers/create", id="wrong-method"),
        pytest.param("GET", "/v1.41/exec/abc/json", id="exec-id-not-an-id"),
        pytest.param("GET", "/v1.41/images/a/../../info/json", id="image-dotdot"),
        pytest.param("GET", "/v1.41/images/a//b/json", id="image-double-slash"),
    ],
)
def test_every_other_operation_is_refused(method: str, path: str) -> None:
    response = call(method, path, raw=b"{}" if method in ("POST", "PUT") else None)
    assert response.status_code == 403
    assert refused_by(response) == "no-route"


def test_only_a_unix_socket_for_its_owner_listens() -> None:
    """No TCP port on loopback; the socket is root's alone, and another local user cannot connect."""
    mode = os.stat(SOCKET).st_mode & 0o777
    assert mode == 0o600 and os.stat(SOCKET).st_uid == 0
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", 2375)) != 0
    attempt = subprocess.run(
        [
            "python3",
            "-c",
            "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])",
            SOCKET,
        ],
        capture_output=True,
        user=65534,
        group=65534,
        check=False,
    )
    assert attempt.returncode != 0 and b"PermissionError" in attempt.stderr


# -- create bodies --------------------------------------------------------------------------------


def _with(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """`body` with `path` (keys joined by '/') set to `value`; the key is written as given (case, Unicode)."""
    out = copy.deepcopy(body)
    *parents, last = path.split("/")
    node = out
    for part in parents:
        node = node[part]
    node[last] = value
    return out


def _without(body: dict[str, Any], path: str) -> dict[str, Any]:
    out = copy.deepcopy(body)
    *parents, last = path.split("/")
    node = out
    for part in parents:
        node = node[part]
    del node[last]
    return out


def _user(body: dict[str, Any], user: str) -> dict[str, Any]:
    """The same body claiming another uid everywhere it appears (User, label, tmpfs owners)."""
    return _with(_with(body, "User", user), f"Labels/{USER_LABEL}", user)


def _uid_zero_cases() -> list[Any]:
    spellings = [
        "0:0",
        "00:00",
        "000:0",
        "+0:+0",
        "-0:-0",
        " 0:0",
        "0",
        "root",
        "root:root",
        "0x0:0x0",
        "0:2000000001",
    ]
    return [pytest.param(spelling, id=f"uid0-{spelling.strip() or 'blank'}") for spelling in spellings]


@pytest.mark.parametrize("user", _uid_zero_cases())
def test_uid_zero_in_any_spelling_is_refused(user: str) -> None:
    response = call("POST", f"/v1.41/containers/create?name={sandbox_name()}", _user(canonical(), user))
    assert response.status_code == 403
    assert refused_by(response) in ("user", "body-shape")


#: Raw UTF-8 letters that Go's case folding maps onto ASCII ones: long s -> s, Kelvin sign -> k.
_FOLD = {"s": "\u017f", "k": "\u212a"}


def _folded(key: str) -> str:
    for ascii_letter, unicode_letter in _FOLD.items():
        if ascii_letter in key.lower():
            index = key.lower().index(ascii_letter)
            return key[:index] + unicode_letter + key[index + 1 :]
    raise AssertionError(f"no foldable letter in {key}")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param("HostConfig/Binds", ["/:/host"], id="binds"),
        pytest.param("HostConfig/Mounts", [{"Type": "bind", "Source": "/", "Target": "/host"}], id="mounts"),
        pytest.param(
            "HostConfig/Devices", [{"PathOnHost": "/dev/mem", "PathInContainer": "/dev/mem"}], id="devices"
        ),
        pytest.param("HostConfig/NetworkMode", "host", id="network-mode"),
        pytest.param("HostConfig/UTSMode", "host", id="uts-mode"),
        pytest.param("User", "0:0", id="user"),
        pytest.param("HostConfig/SecurityOpt", ["seccomp=unconfined"], id="security-opt"),
    ],
)
def test_keys_that_fold_onto_known_keys_are_refused(key: str, value: Any) -> None:
    """Raw UTF-8 keys are refused whole; their JSON \\u escapes too (they are the same key to Go)."""
    *parents, last = key.split("/")
    body = canonical()
    target = _with(body, "/".join([*parents, _folded(last)]), value)
    raw = json.dumps(target, ensure_ascii=False).encode()
    response = call("POST", f"/v1.41/containers/create?name={sandbox_name()}", raw=raw)
    assert response.status_code == 403 and refused_by(response) == "body-json"
    escaped = call("POST", f"/v1.41/containers/create?name={sandbox_name()}", raw=json.dumps(target).encode())
    assert escaped.status_code == 403 and refused_by(escaped) == "body-json"


def _raw_cases() -> list[Any]:
    body = json.dumps(canonical())
    return [
        pytest.param(
            body.replace('"Privileged": false', '"Privileged": false, "Privileged": true'), id="duplicate-key"
        ),
        pytest.param(
            body.replace('"Privileged": false', '"Privileged": false, "privileged": true'), id="case-twin"
        ),
        pytest.param(body.replace('"Privileged": false', '"PRIVILEGED": true'), id="upper-case-key"),
        pytest.param(
            body.replace('"Privileged": false', '"Privileged": false, "Privileg\\u0065d": true'),
            id="escaped-twin",
        ),
        pytest.param(body.replace('"Memory": 536870912', '"Memory": 5.36870912e8'), id="float-memory"),
        pytest.param(body.replace('"Memory": 536870912', '"Memory": NaN'), id="nan"),
        pytest.param(body.replace('"Memory": 536870912', '"Memory": 0'), id="memory-unlimited"),
        pytest.param(body.replace('"PidsLimit": 128', '"PidsLimit": -1'), id="pids-unlimited"),
        pytest.param(body.replace('"MemorySwap": 536870912', '"MemorySwap": -1'), id="swap-unlimited"),
        pytest.param(body.replace('"Privileged": false', '"Privileged": "false"'), id="string-bool"),
        pytest.param(body[:-1] + ', "HostConfig": {"Privileged": true}}', id="second-hostconfig"),
        pytest.param(
            body.replace('"Privileged": false', '"Privileged": false, "x": ' + "[" * 50 + "]" * 50), id="deep"
        ),
        pytest.param("\ufeff" + body, id="byte-order-mark"),
        pytest.param(body.replace('"/workspace"', '"/work\\u017fpace"', 1), id="non-ascii-string"),
    ]


@pytest.mark.parametrize("raw", _raw_cases())
def test_ambiguous_json_is_refused(raw: str) -> None:
    response = call("POST", f"/v1.41/containers/create?name={sandbox_name()}", raw=raw.encode())
    assert response.status_code == 403 and refused_by(response) in ("body-json", "body-shape")


def test_whitespace_is_read_as_the_engine_reads_it() -> None:
    """Any JSON whitespace decodes as the engine decodes it, and the engine gets the proxy's own
    compact encoding: an allow-all seccomp profile padded with whitespace is still refused, and
    the broker's body padded with whitespace is still the broker's body."""
    padded = json.dumps(
        canonical(), indent="\t" * 3 + " " * 40, separators=(" \r\n,\t ", "\n\n :\t" + " " * 60)
    )
    name = sandbox_name()
    assert call("POST", f"/v1.41/containers/create?name={name}", raw=padded.encode()).status_code == 201
    allow_all = 'seccomp={"defaultAction"  \n\t   :   "SCMP_ACT_ALLOW"}'
    body = _with(canonical(), "HostConfig/SecurityOpt", ["no-new-privileges:true", allow_all])
    response = call("POST", f"/v1.41/containers/create?name={sandbox_name()}", body)
    assert response.status_code == 403 and refused_by(response) == "security-opt"


def _shape_cases() -> list[Any]:
    agent, exec_body = canonical("agent"), canonical("exec")
    uid = agent["Labels"][USER_LABEL]
    seccomp_allow = 'seccomp={"defaultAction":' + " " * 40 + '"SCMP_ACT_ALLOW"}'
    cases = {
        "privileged": _with(agent, "HostConfig/Privileged", True),
        "host-network": _with(agent, "HostConfig/NetworkMode", "host"),
        "bridge-network": _with(agent, "HostConfig/NetworkMode", "bridge"),
        "container-network": _with(agent, "HostConfig/NetworkMode", "container:abc"),
        "host-pid": _with(agent, "HostConfig/PidMode", "host"),
        "host-ipc": _with(agent, "HostConfig/IpcMode", "host"),
        "host-uts": _with(agent, "HostConfig/UTSMode", "host"),
        "host-userns": _with(agent, "HostConfig/UsernsMode", "host"),
        "host-cgroupns": _with(agent, "HostConfig/CgroupnsMode", "host"),
        "mounts": _with(agent, "HostConfig/Mounts", [{"Type": "bind", "Source": "/", "Target": "/h"}]),
        "devices": _with(agent, "HostConfig/Devices", [{"PathOnHost": "/dev/mem", "PathInContainer": "/m"}]),
        "device-requests": _with(agent, "HostConfig/DeviceRequests", [{"Count": -1}]),
        "device-cgroup-rules": _with(agent, "HostConfig/DeviceCgroupRules", ["a *:* rwm"]),
        "volumes-from": _with(agent, "HostConfig/VolumesFrom", ["other"]),
        "volumes": _with(agent, "Volumes", {"/data": {}}),
        "port-bindings": _with(agent, "HostConfig/PortBindings", {"22/tcp": [{"HostPort": "2222"}]}),
        "links": _with(agent, "HostConfig/Links", ["other:o"]),
        "sysctls": _with(agent, "HostConfig/Sysctls", {"kernel.shm_rmid_forced": "1"}),
        "cgroup-parent": _with(agent, "HostConfig/CgroupParent", "/"),
        "oom-kill-disable": _with(agent, "HostConfig/OomKillDisable", True),
        "cap-sys-admin": _with(agent, "HostConfig/CapAdd", ["SYS_ADMIN"]),
        "cap-all": _with(agent, "HostConfig/CapAdd", ["ALL"]),
        "cap-second-entry": _with(agent, "HostConfig/CapAdd", ["CHOWN", "NET_RAW"]),
        "cap-drop-less": _with(agent, "HostConfig/CapDrop", ["NET_RAW"]),
        "no-cap-drop": _without(agent, "HostConfig/CapDrop"),
        "seccomp-unconfined": _with(agent, "HostConfig/SecurityOpt", ["seccomp=unconfined"]),
        "seccomp-allow-all": _with(agent, "HostConfig/SecurityOpt", [seccomp_allow]),
        "seccomp-colon": _with(agent, "HostConfig/SecurityOpt", ["seccomp:unconfined"]),
        "apparmor-unconfined": _with(
            agent, "HostConfig/SecurityOpt", [*agent["HostConfig"]["SecurityOpt"], "apparmor=unconfined"]
        ),
        "label-disable": _with(agent, "HostConfig/SecurityOpt", ["label=disable"]),
        "no-new-privs-false": _with(
            agent,
            "HostConfig/SecurityOpt",
            ["no-new-privileges:false", agent["HostConfig"]["SecurityOpt"][1]],
        ),
        "root-bind-at-tools": _with(agent, "HostConfig/Binds", ["/:/tools:ro"]),
        "run-bind-at-skills": _with(agent, "HostConfig/Binds", ["/run:/skills:ro"]),
        "socket-bind-at-tools": _with(agent, "HostConfig/Binds", ["/var/run/docker.sock:/tools:ro"]),
        "allowed-then-forbidden-bind": _with(
            agent, "HostConfig/Binds", [f"{REPO}/skills:/tools:ro", "/:/host"]
        ),
        "writable-tools": _with(agent, "HostConfig/Binds", [f"{REPO}/skills:/tools:rw"]),
        "bind-options": _with(agent, "HostConfig/Binds", [f"{REPO}/skills:/tools:ro,rshared"]),
        "dotdot-source": _with(
            agent, "HostConfig/Binds", ["/var/lib/sandbox-gateway/mounts/../../..:/tools:ro"]
        ),
        "tmpfs-exec-suid": _with(agent, "HostConfig/Tmpfs", {"/tmp": f"rw,exec,suid,size=1m,uid={uid}"}),
        "tmpfs-root-owned": _with(
            agent, "HostConfig/Tmpfs", {"/tmp": "rw,nosuid,nodev,size=1m,mode=1777,uid=0,gid=0"}
        ),
        "tmpfs-over-proc": _with(agent, "HostConfig/Tmpfs", {"/proc": agent["HostConfig"]["Tmpfs"]["/tmp"]}),
        "tmpfs-over-dev": _with(agent, "HostConfig/Tmpfs", {"/dev": agent["HostConfig"]["Tmpfs"]["/tmp"]}),
        "env-ld-preload": _with(agent, "Env", [*agent["Env"], "LD_PRELOAD=/tmp/x.so"]),
        "other-command": _with(agent, "Cmd", ["sh", "-c", "id"]),
        "entrypoint": _with(agent, "Entrypoint", ["/bin/sh"]),
        "keeper-user-on-agent": _user(agent, "65534:65534"),
        "uid-below-range": _user(agent, "1000:1000"),
        "uid-above-range": _user(agent, f"{UIDS.high + 1}:{UIDS.high + 1}"),
        "uid-not-gid": _user(agent, f"{UIDS.low}:{UIDS.low + 1}"),
        "label-user-mismatch": _with(agent, f"Labels/{USER_LABEL}", f"{UIDS.low}:{UIDS.low}"),
        "user-name": _user(agent, "nobody"),
        "exec-path-root-keeper": _with(exec_body, "User", "0:0"),
        "unmanaged": _with(agent, "Labels", {USER_LABEL: uid}),
        "restart-always": _with(agent, "HostConfig/RestartPolicy", {"Name": "always"}),
        "no-memory-limit": _without(agent, "HostConfig/Memory"),
        "no-pids-limit": _without(agent, "HostConfig/PidsLimit"),
        "runtime-other": _with(agent, "HostConfig/Runtime", "io.containerd.runc.v2"),
        "log-driver": _with(agent, "HostConfig/LogConfig", {"Type": "syslog", "Config": {}}),
        "pid-limit-huge": _with(agent, "HostConfig/PidsLimit", 10**9),
        "memory-huge": _with(agent, "HostConfig/Memory", 2**70),
        "shm-size": _with(agent, "HostConfig/ShmSize", 2**40),
        "hostname-other": _with(agent, "Hostname", "host"),
        "domainname": _with(agent, "Domainname", "x"),
        "healthcheck": _with(agent, "Healthcheck", {"Test": ["CMD", "id"]}),
        "exposed-ports": _with(agent, "ExposedPorts", {"22/tcp": {}}),
        "network-enabled": _with(agent, "NetworkDisabled", False),
        "networking-config": _with(agent, "NetworkingConfig", {"EndpointsConfig": {"host": {}}}),
        "top-level-privileged": _with(agent, "Privileged", True),
    }
    return [pytest.param(body, id=name) for name, body in cases.items()]


@pytest.mark.parametrize("body", _shape_cases())
def test_bodies_the_broker_never_sends_are_refused(body: dict[str, Any]) -> None:
    name = sandbox_name()
    response = call("POST", f"/v1.41/containers/create?name={name}", body)
    assert response.status_code == 403, response.text
    assert refused_by(response) not in ("", "container-name", "no-route")
    assert engine_call("GET", f"/v1.41/containers/{name}/json").status_code == 404


def test_a_link_in_the_mount_root_to_the_host_root_is_refused(tmp_path: Path) -> None:
    root = SetupPaths.from_env().mount_root
    link = root / f"proxy-test-{uuid.uuid4().hex[:8]}"
    link.symlink_to("/")
    try:
        body = _with(canonical(), "HostConfig/Binds", [f"{link}:/tools:ro"])
        response = call("POST", f"/v1.41/containers/create?name={sandbox_name()}", body)
        assert response.status_code == 403 and refused_by(response) == "bind-source"
    finally:
        link.unlink()


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("name=victim", id="not-a-sandbox-name"),
        pytest.param("", id="no-name"),
        pytest.param("name=sgw-0123456789abcdef&platform=linux", id="extra-parameter"),
        pytest.param("name=sgw-0123456789abcdef&name=other", id="name-twice"),
        pytest.param("name=sgw-0123456789ABCDEF", id="upper-case-name"),
    ],
)
def test_create_takes_exactly_a_sandbox_name(query: str) -> None:
    response = call("POST", f"/v1.41/containers/create?{query}", canonical())
    assert response.status_code == 403 and refused_by(response) in ("query", "container-name")


def test_the_bodies_the_broker_sends_pass_for_every_shipped_profile() -> None:
    """The canonical bodies themselves are created, for each profile and both exec paths."""
    for profile in ("default", "strict", "data-science"):
        for exec_path in ("agent", "exec"):
            name = sandbox_name()
            response = call("POST", f"/v1.41/containers/create?name={name}", canonical(exec_path, profile))
            assert response.status_code == 201, (profile, exec_path, response.text)


def test_a_body_larger_than_the_cap_gets_413() -> None:
    body = _with(canonical(), "Labels/sandbox-gateway.pad", "x" * 600_000)
    assert call("POST", f"/v1.41/containers/create?name={sandbox_name()}", body).status_code == 413


def test_a_chunked_body_is_read_whole_before_it_is_judged() -> None:
    body = json.dumps(_with(canonical(), "HostConfig/Privileged", True)).encode()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 100):
            yield body[start : start + 100]

    with httpx.Client(transport=httpx.HTTPTransport(uds=SOCKET), base_url="http://docker") as client:
        response = client.post(f"/v1.41/containers/create?name={sandbox_name()}", content=chunks())
    assert response.status_code == 403 and refused_by(response) == "body-shape"


def test_two_sandboxes_cannot_share_a_uid() -> None:
    uid = UIDS.pick()
    first = call("POST", f"/v1.41/containers/create?name={sandbox_name()}", canonical(uid=uid))
    assert first.status_code == 201
    second = call("POST", f"/v1.41/containers/create?name={sandbox_name()}", canonical("exec", uid=uid))
    assert second.status_code == 409 and refused_by(second) == "uid-in-use"
    # Released when the sandbox goes: the uid is free again.
    assert call("DELETE", f"/v1.41/containers/{first.json()['Id']}?force=1").status_code == 204
    third = call("POST", f"/v1.41/containers/create?name={sandbox_name()}", canonical("exec", uid=uid))
    assert third.status_code == 201


# -- verbs on containers ------------------------------------------------------------------------


def _raw_container(name: str, **extra: Any) -> str:
    """A container made on the raw engine (as an operator or another tool would), started."""
    body = {
        "Image": IMAGE,
        "Cmd": ["sleep", "infinity"],
        "Env": ["SECRET=hunter2"],
        "Labels": {TEST_LABEL: RUN},
        "HostConfig": {"NetworkMode": "none"},
        **extra,
    }
    created = engine_call("POST", f"/v1.41/containers/create?name={name}", body)
    assert created.status_code == 201, created.text
    container_id = str(created.json()["Id"])
    assert engine_call("POST", f"/v1.41/containers/{container_id}/start").status_code == 204
    return container_id


@pytest.fixture
def victims() -> list[tuple[str, str]]:
    """Containers that are not sandboxes: a plain one, and one that wears a sandbox's name and
    label but not its shape (it is privileged)."""
    plain = f"victim-{uuid.uuid4().hex[:8]}"
    fake = sandbox_name()
    fake_labels = {TEST_LABEL: RUN, "sandbox-gateway.managed": "true"}
    return [
        (plain, _raw_container(plain)),
        (
            fake,
            _raw_container(fake, Labels=fake_labels, HostConfig={"NetworkMode": "none", "Privileged": True}),
        ),
    ]


def _verbs(ref: str) -> list[tuple[str, str, object | None]]:
    return [
        ("GET", f"/v1.41/containers/{ref}/json", None),
        ("POST", f"/v1.41/containers/{ref}/kill", None),
        ("POST", f"/v1.41/containers/{ref}/wait", None),
        ("POST", f"/v1.41/containers/{ref}/start", None),
        ("POST", f"/v1.41/containers/{ref}/rename?name=sgw-0123456789abcdef", None),
        ("DELETE", f"/v1.41/containers/{ref}?force=1", None),
        (
            "POST",
            f"/v1.41/containers/{ref}/exec",
            {"User": "0", "Cmd": ["id"], "AttachStdout": True, "AttachStderr": True},
        ),
    ]


def test_no_verb_reaches_a_container_that_is_not_a_sandbox(victims: list[tuple[str, str]]) -> None:
    """By name, full id or id prefix: 404 from the proxy, and the container is untouched."""
    for name, container_id in victims:
        for ref in (name, container_id, container_id[:12]):
            for method, path, body in _verbs(ref):
                response = call(method, path, body)
                assert response.status_code == 404, (method, path, response.text)
                assert refused_by(response) in ("not-a-sandbox", "no-such-sandbox")
            attach = call(
                "POST",
                f"/v1.41/containers/{ref}/attach?logs=1&stdout=1&stream=1",
                headers={"Connection": "Upgrade", "Upgrade": "tcp"},
            )
            assert attach.status_code in (403, 404)
        state = engine_call("GET", f"/v1.41/containers/{container_id}/json").json()
        assert state["State"]["Running"] and state["Name"] == f"/{name}"


def test_the_container_list_shows_sandboxes_only(victims: list[tuple[str, str]]) -> None:
    listed = {row["Id"] for row in call("GET", "/v1.41/containers/json?all=1").json()}
    assert victims[0][1] not in listed
    assert all(
        row["Labels"].get("sandbox-gateway.managed") == "true"
        for row in call("GET", "/v1.41/containers/json?all=1").json()
    )


def test_an_exec_on_another_container_cannot_be_started_or_read(victims: list[tuple[str, str]]) -> None:
    _, container_id = victims[0]
    made = engine_call(
        "POST", f"/v1.41/containers/{container_id}/exec", {"Cmd": ["env"], "AttachStdout": True}
    ).json()["Id"]
    start = call(
        "POST",
        f"/v1.41/exec/{made}/start",
        {"Detach": False, "Tty": False},
        headers={"Connection": "Upgrade", "Upgrade": "tcp"},
    )
    assert start.status_code == 404 and refused_by(start) == "not-a-sandbox"
    assert call("GET", f"/v1.41/exec/{made}/json").status_code == 404


@pytest.fixture
def sandbox() -> tuple[str, str]:
    """A sandbox made through the proxy from the broker's body (exec path), started: (id, uid:gid)."""
    body = canonical("exec")
    created = call("POST", f"/v1.41/containers/create?name={sandbox_name()}", body)
    assert created.status_code == 201, created.text
    container_id = created.json()["Id"]
    assert call("POST", f"/v1.41/containers/{container_id}/start").status_code == 204
    return container_id, body["Labels"][USER_LABEL]


def exec_body(user: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "Container": "x",
        "User": user,
        "Privileged": False,
        "Tty": False,
        "AttachStdin": False,
        "AttachStdout": True,
        "AttachStderr": True,
        "Cmd": ["id", "-u"],
        "Env": [],
        "WorkingDir": "/",
    }
    body.update(changes)
    return body


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"User": "0"}, id="root-uid"),
        pytest.param({"User": "root"}, id="root-name"),
        pytest.param({"User": "0:0"}, id="root-pair"),
        pytest.param({"User": ""}, id="image-default-user"),
        pytest.param({"User": "65534:65534"}, id="keeper-user"),
        pytest.param({"Privileged": True}, id="privileged"),
        pytest.param({"Tty": True}, id="tty"),
        pytest.param({"AttachStdin": True}, id="stdin"),
        pytest.param({"Env": ["LD_PRELOAD=/tmp/x.so"]}, id="env-override"),
        pytest.param({"DetachKeys": "ctrl-p"}, id="unknown-key"),
        pytest.param({"WorkingDir": "/../.."}, id="workdir-dotdot"),
        pytest.param({"privileged": True}, id="case-twin"),
    ],
)
def test_exec_create_runs_only_as_the_sandbox_itself(
    sandbox: tuple[str, str], changes: dict[str, Any]
) -> None:
    container_id, user = sandbox
    body = exec_body(user, **changes)
    response = call("POST", f"/v1.41/containers/{container_id}/exec", body)
    assert response.status_code == 403, response.text
    assert refused_by(response) in ("body-shape", "body-json", "user")


def test_start_kill_wait_and_attach_take_no_body_and_attach_never_replays_logs(
    sandbox: tuple[str, str],
) -> None:
    container_id, user = sandbox
    with_body = call(
        "POST", f"/v1.41/containers/{container_id}/start", {"Privileged": True, "Binds": ["/:/h"]}
    )
    assert with_body.status_code == 403 and refused_by(with_body) == "body"
    upgrade = {"Connection": "Upgrade", "Upgrade": "tcp"}
    logs = call("POST", f"/v1.41/containers/{container_id}/attach?logs=1&stream=1&stdout=1", headers=upgrade)
    assert logs.status_code == 403 and refused_by(logs) == "attach-logs"
    not_upgraded = call("POST", f"/v1.41/containers/{container_id}/attach?stream=1&stdout=1")
    assert not_upgraded.status_code == 403 and refused_by(not_upgraded) == "upgrade"
    signal = call("POST", f"/v1.41/containers/{container_id}/kill?signal=SIGSTOP")
    assert signal.status_code == 403 and refused_by(signal) == "query"
    allowed = call("POST", f"/v1.41/containers/{container_id}/exec", exec_body(user))
    assert allowed.status_code == 201


def test_only_a_pool_sandbox_is_renamed_and_only_to_a_sandbox_name(sandbox: tuple[str, str]) -> None:
    container_id, _ = sandbox
    response = call("POST", f"/v1.41/containers/{container_id}/rename?name=sgw-0123456789abcdef")
    assert response.status_code == 403 and refused_by(response) == "rename"
    pooled = f"sgw-pool-{uuid.uuid4().hex[:16]}"
    assert call("POST", f"/v1.41/containers/create?name={pooled}", canonical("exec")).status_code == 201
    bad = call("POST", f"/v1.41/containers/{pooled}/rename?name=victim")
    assert bad.status_code == 403 and refused_by(bad) == "rename"
    good = call("POST", f"/v1.41/containers/{pooled}/rename?name={sandbox_name()}")
    assert good.status_code == 204


def _refuse_from_a_new_client(path: str, times: int = 1) -> None:
    """`times` refused requests from a process of its own (the proxy knows clients by pid and uid)."""
    subprocess.run([sys.executable, "-c", _FLOOD, SOCKET, path, str(times)], check=True, timeout=120)


def test_every_refusal_is_logged_and_counted() -> None:
    """The proxy's log (JSON lines) names method, path, rule and client; its counters move."""
    before = call("GET", "/_sandbox_gateway/proxy/stats").json()
    marker = uuid.uuid4().hex
    _refuse_from_a_new_client(f"/v1.41/volumes?marker={marker}")
    after = call("GET", "/_sandbox_gateway/proxy/stats").json()
    assert after["refused"]["no-route"] == before["refused"].get("no-route", 0) + 1
    assert after["allowed"]["proxy.stats"] >= 1
    log = SetupPaths.from_env().state_dir / "log" / "socket-proxy.log"
    events = [e for e in read_events(log, text_lines=True) if marker in e.get("path", "")]
    assert len(events) == 1
    event = events[0]
    assert event["event"] == "proxy.refused" and event["rule"] == "no-route" and event["method"] == "GET"
    assert event["path"].startswith("/v1.41/volumes") and event["client"].startswith("unix:pid=")


def test_a_flood_of_refusals_writes_one_line_per_window_and_counts_the_rest(tmp_path: Path) -> None:
    """A client cannot wash the proxy's log out: of 500 refusals, one line is written per window
    (5 s) and every other one is counted in that window's summary, also for windows still open when
    the proxy stops (a private proxy, stopped with SIGTERM)."""
    proxy = PrivateProxy(tmp_path, extra=("--log-repeat-window", "5"), image=IMAGE)
    proxy.start()
    try:
        marker = uuid.uuid4().hex
        subprocess.run(
            [sys.executable, "-c", _FLOOD, str(proxy.socket), f"/v1.41/volumes?m={marker}", "500"],
            check=True,
            timeout=120,
        )
        assert proxy.process is not None
        proxy.process.terminate()
        assert proxy.process.wait(timeout=30) == 0
    finally:
        proxy.stop()
    events = read_events(proxy.log, text_lines=True)
    refused = matching(events, "proxy.refused")
    summaries = matching(events, "proxy.refused.repeated")
    assert 1 <= len(refused) <= 5 and all(marker in event["path"] for event in refused)
    assert summaries, "the counted refusals are summarised"
    assert sum(summary["unlogged"] for summary in summaries) == 500 - len(refused)
    assert all(summary["rules"] == {"no-route": summary["count"]} for summary in summaries)
    assert all(summary["count"] == summary["unlogged"] + 1 for summary in summaries)


_FLOOD = (
    "import socket, sys\n"
    "for _ in range(int(sys.argv[3])):\n"
    "    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
    "    s.sendall(f'GET {sys.argv[2]} HTTP/1.1\\r\\nHost: d\\r\\n\\r\\n'.encode())\n"
    "    assert s.recv(100).startswith(b'HTTP/1.1 403'); s.close()\n"
)


def test_sandboxes_are_made_only_from_allowed_images_and_pinned_by_id() -> None:
    """An image under another name is refused; an allowed one is created from its id, not its tag."""
    source = _raw_container(f"victim-{uuid.uuid4().hex[:8]}")
    made = engine_call("POST", f"/v1.41/commit?container={source}&repo=sgw-other-{RUN}&tag=x", {})
    assert made.status_code == 201, made.text
    try:
        other = _with(canonical(), "Image", f"sgw-other-{RUN}:x")
        response = call("POST", f"/v1.41/containers/create?name={sandbox_name()}", other)
        assert response.status_code == 403 and refused_by(response) == "image"
        assert call("GET", f"/v1.41/images/sgw-other-{RUN}:x/json").status_code == 403
    finally:
        engine_call("DELETE", f"/v1.41/images/sgw-other-{RUN}:x")
    name = sandbox_name()
    assert call("POST", f"/v1.41/containers/create?name={name}", canonical()).status_code == 201
    image_id = engine_call("GET", f"/v1.41/images/{IMAGE}/json").json()["Id"]
    assert engine_call("GET", f"/v1.41/containers/{name}/json").json()["Image"] == image_id


def test_parallel_creates_of_one_uid_make_one_sandbox() -> None:
    """Twelve creates with the same uid at once: one sandbox, eleven refusals."""
    from concurrent.futures import ThreadPoolExecutor

    uid = UIDS.pick()
    with ThreadPoolExecutor(12) as pool:
        responses = list(
            pool.map(
                lambda _: call("POST", f"/v1.41/containers/create?name={sandbox_name()}", canonical(uid=uid)),
                range(12),
            )
        )
    assert sorted(response.status_code for response in responses) == [201] + [409] * 11


def test_an_exec_carrying_the_largest_code_passes(sandbox: tuple[str, str]) -> None:
    """Code travels in an exec's argv (up to MAX_ARGV_BYTES): its JSON, escaped, is not refused as too big."""
    from gateway.backend.commands import MAX_ARGV_BYTES, split_chunks

    container_id, user = sandbox
    code = '\u00e9"\n' * (MAX_ARGV_BYTES // 12)  # escapes to several times its size in JSON
    response = call(
        "POST", f"/v1.41/containers/{container_id}/exec", exec_body(user, Cmd=["true", *split_chunks(code)])
    )
    assert response.status_code == 201, response.text[:300]
