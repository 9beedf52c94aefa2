"""A sandbox is created with exactly the policy's hardening: read back with inspect and from inside."""

from __future__ import annotations

import anyio
import pytest

from gateway.backend.commands import bash_argv
from gateway.backend.docker_engine import DockerBackend
from gateway.sandboxes.broker import Broker
from gateway.sandboxes.model import Sandbox
from gateway.uids import DEFAULT_UID_RANGE, UidRange
from policy import Action, Allowed, Principal, load_policy
from policy.engine import PolicyEngine
from tests.conftest import policy_with_exec_path

pytestmark = pytest.mark.anyio
ENGINE = PolicyEngine(load_policy())


async def _sandbox(broker: Broker, principal: Principal) -> tuple[Allowed, Sandbox]:
    decision = ENGINE.evaluate(principal, Action("execute_bash", 1))
    assert isinstance(decision, Allowed), decision
    return decision, await broker.ensure_sandbox(principal, decision)


async def _bash(broker: Broker, principal: Principal, command: str) -> tuple[int | None, str]:
    decision = ENGINE.evaluate(principal, Action("execute_bash", len(command)))
    outcome = await broker.execute(principal, decision, bash_argv(command))
    return outcome.exit_code, (outcome.stdout + outcome.stderr).decode()


async def test_inspect_shows_the_policy_hardening(broker: Broker, backend: DockerBackend) -> None:
    decision, sandbox = await _sandbox(broker, Principal("hardening"))
    info = await anyio.to_thread.run_sync(backend.inspect_raw, sandbox.container_id)
    host, config = info["HostConfig"], info["Config"]
    spec = decision.spec
    # PID 1 is the agent, as the sandbox's own uid (recorded on it, from the range); no init (the
    # agent reaps), no log of its stdout.
    uid, gid = (int(part) for part in config["User"].split(":"))
    assert uid == gid and uid in UidRange.parse(DEFAULT_UID_RANGE)
    assert config["Labels"]["sandbox-gateway.user"] == config["User"] == sandbox.user
    assert config["Cmd"] == ["python3", "-I", "-S", "/opt/sandbox-gateway/agent.py"]
    assert config["OpenStdin"] is True and config["StdinOnce"] is False
    assert host["LogConfig"]["Type"] == "none"
    assert config["StopSignal"] == "SIGKILL"
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True
    assert host["Privileged"] is False
    assert host["CapDrop"] == ["ALL"]
    assert not host["CapAdd"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["PidsLimit"] == spec.pids_limit
    assert host["Memory"] == spec.memory and host["MemorySwap"] == spec.memory_swap
    assert host["NanoCpus"] == int(spec.cpus * 1e9)
    assert host["Init"] is False
    assert not host["Binds"]
    assert set(host["Tmpfs"]) == {"/tmp", "/workspace"}
    assert "noexec" in host["Tmpfs"]["/tmp"]
    assert host["PidMode"] in ("", "private") and host["IpcMode"] in ("private", "shareable", "")
    labels = config["Labels"]
    assert labels["sandbox-gateway.managed"] == "true"
    assert labels["sandbox-gateway.principal"] == "hardening"
    assert labels["sandbox-gateway.policy-digest"] == ENGINE.digest


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        pytest.param(
            "u=$(id -u); g=$(id -g); [ $u = $g ] && [ $u -ge 2000000000 ] && [ $u -le 2000999999 ] "
            "&& echo own",
            "own\n",
            id="non-root-own-uid",
        ),
        pytest.param(
            "grep -E '^(NoNewPrivs|CapEff|CapPrm|CapBnd|Seccomp):' /proc/self/status | tr -s '\\t' ' '",
            "CapPrm: 0000000000000000\nCapEff: 0000000000000000\nCapBnd: 0000000000000000\n"
            "NoNewPrivs: 1\nSeccomp: 2\n",
            id="no-caps-nnp-seccomp",
        ),
        pytest.param("ls /sys/class/net", "lo\n", id="only-loopback"),
        pytest.param(
            "touch /rootfs-write 2>/dev/null && echo writable || echo read-only",
            "read-only\n",
            id="read-only-rootfs",
        ),
        pytest.param("touch /workspace/a /tmp/b && echo ok", "ok\n", id="workspace-and-tmp-writable"),
        pytest.param(
            "cp /bin/true /tmp/t && /tmp/t 2>/dev/null && echo exec || echo noexec",
            "noexec\n",
            id="tmp-noexec",
        ),
        pytest.param("find / -xdev -perm /6000 -type f 2>/dev/null | wc -l", "0\n", id="no-setuid-binaries"),
        pytest.param("ulimit -c", "0\n", id="no-core-dumps"),
        pytest.param("env | grep -ci -E 'token|secret|docker_host' || true", "0\n", id="no-secrets-in-env"),
    ],
)
async def test_inside_the_sandbox(broker: Broker, command: str, expected: str, exec_path: str) -> None:
    engine = PolicyEngine(policy_with_exec_path(exec_path))
    decision = engine.evaluate(Principal("inside"), Action("execute_bash", len(command)))
    outcome = await broker.execute(Principal("inside"), decision, bash_argv(command))
    output = (outcome.stdout + outcome.stderr).decode()
    assert output == expected, output


async def test_exec_path_sandbox_keeps_its_own_processes_as_nobody(
    broker: Broker, backend: DockerBackend
) -> None:
    """Without an agent, PID 1 is an init and an idle child, both as nobody, not the calls' uid."""
    principal = Principal("keeper")
    decision = PolicyEngine(policy_with_exec_path("exec")).evaluate(principal, Action("execute_bash", 1))
    sandbox = await broker.ensure_sandbox(principal, decision)
    info = await anyio.to_thread.run_sync(backend.inspect_raw, sandbox.container_id)
    assert info["Config"]["User"] == "65534:65534"
    assert info["Config"]["Cmd"] == ["sleep", "infinity"]
    assert info["HostConfig"]["Init"] is True
    outcome = await broker.execute(principal, decision, bash_argv("kill -9 -1; sleep 0.2; echo alive"))
    assert outcome.stdout == b"alive\n" or outcome.exit_code == 137


async def test_the_agent_cannot_be_signalled_or_opened_by_sandbox_code(broker: Broker) -> None:
    """Same uid, but PID 1 with no handlers and non-dumpable: kill, ptrace and /proc/1/fd all fail."""
    principal = Principal("agent-guard")
    command = (
        "kill -TERM 1; kill -INT 1; kill -KILL 1; kill -STOP 1; sleep 0.2; "
        "ls /proc/1/fd >/dev/null 2>&1 && echo fd-open || echo fd-closed; "
        "cat /proc/1/environ >/dev/null 2>&1 && echo environ-read || echo environ-closed; "
        "kill -9 -1"
    )
    code, output = await _bash(broker, principal, command)
    assert "fd-closed" in output and "environ-closed" in output, output
    code, output = await _bash(broker, principal, "ps -o pid=,args= -p 1")
    assert (code, output.split()) == (0, ["1", "python3", "-I", "-S", "/opt/sandbox-gateway/agent.py"])
