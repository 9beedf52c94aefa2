"""Differential fuzzing of the socket proxy's create check against the real engine.

Hypothesis makes the bodies the broker sends for arbitrary (loadable) profiles, and variants of
them that an attacker would try. For each, the proxy's verdict is compared with what the engine
does: every body the proxy accepts is created on the engine and the container, inspected, must be
exactly what the validated body specifies (and nothing a sandbox must never have); every body it
refuses leaves no container behind.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.backend.create_body import SECCOMP_DIR, USER_LABEL, create_body, seccomp_options
from gateway.sockproxy.create_rules import validate_create
from gateway.sockproxy.errors import Refused
from gateway.sockproxy.rules import ProxyRules
from gateway.uids import DEFAULT_UID_RANGE, UidRange
from policy import SandboxSpec
from policy.model import CAP_ADD_ALLOW_LIST, TmpfsMount
from tests.conftest import IMAGE
from tests.integration.test_socket_proxy import REPO, call, refused_by
from tests.integration.test_socket_proxy import engine_call as _engine

pytestmark = pytest.mark.slow
UIDS = UidRange.parse(DEFAULT_UID_RANGE)
RULES = ProxyRules(
    uid_low=UIDS.low,
    uid_high=UIDS.high,
    seccomp_options=seccomp_options(SECCOMP_DIR),
    mount_sources=frozenset({str(REPO / "skills")}),
    images=frozenset({IMAGE}),
)
MIB = 1024**2

tmpfs_mounts = st.lists(
    st.builds(
        TmpfsMount,
        path=st.sampled_from(["/tmp", "/workspace", "/var/tmp", "/home/sandbox"]),
        size=st.integers(1, 512).map(lambda n: n * MIB),
        noexec=st.booleans(),
        mode=st.sampled_from([0o1777, 0o755, 0o700]),
    ),
    max_size=3,
    unique_by=lambda mount: mount.path,
)


@st.composite
def specs(draw: st.DrawFn) -> SandboxSpec:
    memory = draw(st.integers(32, 2048)) * MIB
    return SandboxSpec(
        images=(IMAGE,),
        read_only_rootfs=draw(st.booleans()),
        cpus=draw(st.sampled_from([0.1, 0.5, 1.0, 1.5, 2.0])),
        memory=memory,
        memory_swap=memory + draw(st.integers(0, 512)) * MIB,
        pids_limit=draw(st.integers(1, 4096)),
        tmpfs=tuple(draw(tmpfs_mounts)),
        cap_add=tuple(draw(st.lists(st.sampled_from(sorted(CAP_ADD_ALLOW_LIST)), unique=True, max_size=3))),
        no_new_privileges=draw(st.booleans()),
        seccomp=draw(st.sampled_from(["sandbox", "default"])),
        runtime=draw(st.sampled_from(["runc", "runsc"])),
        init=draw(st.booleans()),
        ulimits=draw(
            st.dictionaries(
                st.sampled_from(["nofile", "nproc", "fsize", "core"]), st.integers(0, 1 << 20), max_size=3
            )
        ),
        workdir=draw(st.sampled_from(["/workspace", "/tmp", "/home/sandbox"])),
        exec_path=draw(st.sampled_from(["agent", "exec"])),
    )


def _set(body: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = body
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


#: What an attacker changes in a body the broker would send: (path, value) pairs.
MUTATIONS: list[tuple[tuple[str, ...], Any]] = [
    (("HostConfig", "Privileged"), True),
    (("HostConfig", "privileged"), True),
    (("HostConfig", "Binds"), ["/:/tools:ro"]),
    (("HostConfig", "Binds"), [f"{REPO}/skills:/skills:ro"]),
    (("HostConfig", "NetworkMode"), "host"),
    (("HostConfig", "PidMode"), "host"),
    (("HostConfig", "CapAdd"), ["SYS_ADMIN"]),
    (("HostConfig", "CapAdd"), ["cap_chown"]),
    (("HostConfig", "Memory"), 0),
    (("HostConfig", "PidsLimit"), 0),
    (("HostConfig", "NanoCpus"), 0),
    (("HostConfig", "SecurityOpt"), []),
    (("HostConfig", "SecurityOpt"), ["seccomp=unconfined"]),
    (("HostConfig", "Ulimits"), [{"Name": "nofile", "Soft": 10, "Hard": 5}]),
    (("HostConfig", "Tmpfs"), {"/tmp": "rw,nosuid,nodev,size=1,mode=1777,uid=0,gid=0"}),
    (("HostConfig", "ReadonlyRootfs"), 1),
    (("User",), "0:0"),
    (("User",), "00:00"),
    (("Labels", USER_LABEL), "1000:1000"),
    (("Env",), ["PATH=/tmp"]),
    (("WorkingDir",), "/"),
    (("Cmd",), ["sh"]),
    (("Image",), "busybox"),
]


def _expect_created_as(body: dict[str, Any], doc: dict[str, Any]) -> None:
    """The inspected container is exactly the validated body, and has nothing a sandbox may not."""
    config, host = doc["Config"], doc["HostConfig"]
    agent = body["Cmd"][0] == "python3"
    assert config["User"] == body["User"]
    assert config["Cmd"] == body["Cmd"] and not config["Entrypoint"]
    assert config["Env"] == body["Env"] and config["WorkingDir"] == body["WorkingDir"]
    image_labels = _engine("GET", f"/v1.41/images/{IMAGE}/json").json()["Config"]["Labels"] or {}
    assert config["Labels"] == {**image_labels, **body["Labels"]}
    assert doc["Image"] == _engine("GET", f"/v1.41/images/{IMAGE}/json").json()["Id"]  # pinned by id
    assert config["Hostname"] == "sandbox" and config["NetworkDisabled"] is True
    assert (config["AttachStdin"], config["OpenStdin"], config["Tty"]) == (agent, agent, False)
    expected_host = body["HostConfig"]
    for key in (
        "NetworkMode",
        "ReadonlyRootfs",
        "Privileged",
        "PidsLimit",
        "Memory",
        "MemorySwap",
        "NanoCpus",
    ):
        assert host[key] == expected_host[key], key
    assert host["CapDrop"] == ["ALL"] and sorted(host["CapAdd"] or []) == sorted(expected_host["CapAdd"])
    assert (host["SecurityOpt"] or []) == expected_host["SecurityOpt"]
    assert (host.get("Tmpfs") or {}) == expected_host["Tmpfs"]
    ulimits = {item["Name"]: item for item in host.get("Ulimits") or []}
    assert all(ulimits.get(item["Name"]) == item for item in expected_host["Ulimits"])
    # Beyond the body's, only the engine's own stricter default (no core dumps) may appear.
    assert set(ulimits) - {item["Name"] for item in expected_host["Ulimits"]} <= {"core"}
    assert ulimits.get("core", {"Hard": 0})["Hard"] == next(
        (item["Hard"] for item in expected_host["Ulimits"] if item["Name"] == "core"), 0
    )
    assert host["Runtime"] == expected_host["Runtime"] and bool(host["Init"]) == expected_host["Init"]
    assert (host["Binds"] or []) == expected_host["Binds"]
    assert all(
        not host.get(key) for key in ("Mounts", "Devices", "VolumesFrom", "PortBindings", "Links", "Sysctls")
    )
    assert all(not host.get(key) for key in ("CgroupParent", "PidMode", "UsernsMode", "OomKillDisable"))
    assert host["IpcMode"] in ("private", "shareable") and host["UTSMode"] == ""
    uid, gid = (int(part) for part in body["User"].split(":")) if agent else (0, 0)
    assert agent is False or (uid == gid and uid in UIDS)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs(), mutate=st.one_of(st.none(), st.sampled_from(MUTATIONS)), with_skills=st.booleans())
def test_what_the_proxy_accepts_the_engine_creates_exactly(
    spec: SandboxSpec, mutate: tuple[tuple[str, ...], Any] | None, with_skills: bool
) -> None:
    name = f"sgw-{uuid.uuid4().hex[:16]}"
    body = create_body(
        spec,
        uid=UIDS.pick(),
        image=IMAGE,
        labels={"sandbox-gateway.managed": "true", "sandbox-gateway.gateway": "proxy-fuzz"},
        skills_path=REPO / "skills" if with_skills else None,
    )
    if mutate is not None:
        _set(body, *mutate)
    try:
        validate_create(name, json.loads(json.dumps(body)), RULES)
        accepted = body["Image"] in RULES.images
    except Refused:
        accepted = False
    response = call("POST", f"/v1.41/containers/create?name={name}", body)
    try:
        if not accepted:
            assert response.status_code in (403, 404, 409) and refused_by(response), response.text
            assert _engine("GET", f"/v1.41/containers/{name}/json").status_code == 404
            return
        assert response.status_code == 201, response.text
        _expect_created_as(body, _engine("GET", f"/v1.41/containers/{name}/json").json())
    finally:
        _engine("DELETE", f"/v1.41/containers/{name}?force=1")
