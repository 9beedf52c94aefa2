"""The SandboxSpec -> Docker create body mapping, and what no loadable policy can produce."""

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.backend.create_body import create_body
from policy import PolicyLoadError, load_policy, load_policy_text

IMAGE = "mcp-code-executor:latest"
SHIPPED = json.loads((Path(__file__).parents[2] / "seccomp" / "sandbox.json").read_text())
UID = 2000000123


def test_exec_path_body_runs_an_init_and_an_idle_child_as_nobody() -> None:
    spec = load_policy().profiles["default"].sandbox.model_copy(update={"exec_path": "exec"})
    body = create_body(spec, uid=UID, image=IMAGE, labels={})
    host = body["HostConfig"]
    assert isinstance(host, dict)
    assert (body["User"], body["Cmd"], host["Init"], body["OpenStdin"]) == (
        "65534:65534",
        ["sleep", "infinity"],
        True,
        False,
    )


def test_gvisor_sandboxes_get_clone3_from_gvisor_itself() -> None:
    """gVisor answers EPERM for any refused syscall, which stops libc's fallback from clone3 to clone;
    it implements no clone3, so the rule is left to it (ENOSYS) on runsc, and kept everywhere else."""
    import json

    policy = load_policy()
    for profile, expected in (("default", "SCMP_ACT_ERRNO"), ("strict", "SCMP_ACT_ALLOW")):
        body = create_body(policy.profiles[profile].sandbox, uid=UID, image=IMAGE, labels={})
        host = body["HostConfig"]
        assert isinstance(host, dict)
        seccomp = next(opt for opt in host["SecurityOpt"] if opt.startswith("seccomp="))
        rules = json.loads(seccomp.removeprefix("seccomp="))["syscalls"]
        assert [r["action"] for r in rules if r["names"] == ["clone3"]] == [expected]
        # every argument filter (the agent out of reach of signals, limits and priorities) stays
        assert [r for r in rules if r.get("args")] == [r for r in SHIPPED["syscalls"] if r.get("args")]


def test_default_profile_body_has_every_hardening_switch() -> None:
    spec = load_policy().profiles["default"].sandbox
    body = create_body(spec, uid=UID, image=IMAGE, labels={"a": "b"})
    host, labels = body["HostConfig"], body["Labels"]
    assert isinstance(host, dict) and isinstance(labels, dict)
    assert body["User"] == f"{UID}:{UID}"  # the agent, PID 1, runs as the sandbox's own uid
    assert labels["sandbox-gateway.user"] == f"{UID}:{UID}"  # recorded on the sandbox
    assert body["Cmd"] == ["python3", "-I", "-S", "/opt/sandbox-gateway/agent.py"]
    assert body["NetworkDisabled"] is True
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True
    assert host["Privileged"] is False
    assert host["CapDrop"] == ["ALL"] and host["CapAdd"] == []
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["PidsLimit"] == 128
    assert host["Memory"] == host["MemorySwap"] == 512 * 1024**2
    assert host["NanoCpus"] == 10**9
    assert host["Init"] is False  # the agent is PID 1 and reaps orphans itself
    assert host["Binds"] == []
    assert host["Tmpfs"]["/tmp"].startswith("rw,nosuid,nodev,noexec,size=67108864")
    assert "noexec" not in host["Tmpfs"]["/workspace"]
    assert {u["Name"] for u in host["Ulimits"]} == {"nofile", "nproc", "fsize", "core"}


def test_tools_and_skills_are_the_only_mounts_and_read_only(tmp_path: Path) -> None:
    spec = load_policy().profiles["default"].sandbox
    body = create_body(spec, uid=UID, image=IMAGE, labels={}, tools_path=tmp_path, skills_path=tmp_path)
    host = body["HostConfig"]
    assert isinstance(host, dict)
    assert host["Binds"] == [f"{tmp_path}:/tools:ro", f"{tmp_path}:/skills:ro"]


def test_environment_holds_no_gateway_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SGW_SECRET_PROBE", "leak")
    spec = load_policy().profiles["default"].sandbox
    env = create_body(spec, uid=UID, image=IMAGE, labels={})["Env"]
    assert isinstance(env, list)
    assert not any("leak" in item for item in env)


FORBIDDEN = {
    "privileged": st.just(True),
    "network": st.sampled_from(["host", "none", "bridge", "container:x"]),
    "pid": st.sampled_from(["host", "private"]),
    "ipc_mode": st.just("host"),
    "user": st.sampled_from(["0:0", "root", "1000:1000", "1000:0", "0", "00:00", "+0:1", "65534:65534"]),
    "seccomp": st.sampled_from(["unconfined", "default", "Unconfined"]),
    "security_opt": st.lists(
        st.sampled_from(["seccomp=unconfined", "apparmor:unconfined", "label=disable"]), max_size=2
    ),
    "volumes": st.just(["/var/run/docker.sock:/var/run/docker.sock"]),
    "binds": st.just(["/:/host"]),
    "devices": st.just(["/dev/mem"]),
    "cap_add": st.lists(
        st.sampled_from(["CHOWN", "SYS_ADMIN", "NET_ADMIN", "KILL", "ALL", "SYS_PTRACE"]), max_size=3
    ),
    "workdir": st.sampled_from(["/workspace", "/run/containerd/containerd.sock"]),
    "read_only_rootfs": st.booleans(),
}


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    extra=st.dictionaries(st.sampled_from(sorted(FORBIDDEN)), st.nothing(), max_size=6).flatmap(
        lambda keys: st.fixed_dictionaries({k: FORBIDDEN[k] for k in keys})
    )
)
def test_no_loadable_policy_produces_a_dangerous_container(extra: dict[str, Any]) -> None:
    doc = {
        "version": 1,
        "profiles": {"p": {"tools": ["execute_bash"], "sandbox": {"images": [IMAGE], **extra}}},
    }
    try:
        policy = load_policy_text(yaml.safe_dump(doc))
    except PolicyLoadError:
        return
    body = create_body(policy.profiles["p"].sandbox, uid=UID, image=IMAGE, labels={})
    host = body["HostConfig"]
    assert isinstance(host, dict)
    text = json.dumps(body).lower()
    assert host["Privileged"] is False
    assert host["NetworkMode"] == "none"
    assert "PidMode" not in host and "IpcMode" not in host and "UsernsMode" not in host
    assert host["Binds"] == [] and "Mounts" not in host and "Devices" not in host
    assert "docker.sock" not in text and "containerd.sock" not in text
    assert "unconfined" not in text
    uid, gid = str(body["User"]).split(":")
    assert int(uid) != 0 and int(gid) != 0
    assert host["CapDrop"] == ["ALL"]
    assert set(host["CapAdd"]) <= {"CHOWN", "KILL"}


def test_gvisor_pids_limit_leaves_room_for_the_sentry() -> None:
    """Under gVisor the pids cgroup also counts the Sentry's host threads: the limit is scaled."""
    policy = load_policy()
    strict = create_body(policy.profiles["strict"].sandbox, uid=UID, image=IMAGE, labels={})["HostConfig"]
    default = create_body(policy.profiles["default"].sandbox, uid=UID, image=IMAGE, labels={})["HostConfig"]
    assert isinstance(strict, dict) and isinstance(default, dict)
    assert strict["PidsLimit"] == 64 * 3 + 128
    assert default["PidsLimit"] == 128
