"""The sandbox agent out of reach of the code it runs, though both have the sandbox's uid.

Code cannot change PID 1's limits, priority or scheduling, nor signal or stop it (under runc and
under gVisor, which does not shield a PID 1 from signals itself); a command the agent has no
resources left to start makes the broker replace the sandbox; and the file helper answers the truth
whatever the code put in /workspace or on PYTHONPATH (/skills). On the `exec` path PID 1 is an init
running as `nobody`: the same assertions hold there.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from pathlib import Path

import anyio
import pytest

from audit import AuditLog, MemorySink
from gateway.backend.commands import bash_argv
from gateway.backend.docker_engine import DockerBackend
from gateway.calls.service import ExecutionService
from gateway.errors import AgentBroken
from gateway.sandboxes.broker import Broker
from policy import Action, Principal
from policy.engine import PolicyEngine
from tests.conftest import LABEL, policy_with_exec_path
from tests.support import audit_events
from tests.support.sandboxes import sandbox_of

pytestmark = pytest.mark.anyio


@pytest.fixture
def service(broker: Broker, exec_path: str) -> ExecutionService:
    return ExecutionService(PolicyEngine(policy_with_exec_path(exec_path)), broker, broker.audit)


def _principal() -> Principal:
    return Principal(f"reach-{uuid.uuid4().hex[:8]}")


_LIMITS_OF_PID_1 = "grep -E '^Max (open files|cpu time|processes|address space)' /proc/1/limits"


async def test_code_cannot_change_the_limits_of_pid_1(service: ExecutionService, broker: Broker) -> None:
    """prlimit on PID 1 once left every later call refused (RLIMIT_NOFILE 3) or ended the sandbox
    mid-call (RLIMIT_CPU). Now it is refused, PID 1's limits stay, and calls and files keep working."""
    who = _principal()
    before = await service.execute(who, "execute_bash", _LIMITS_OF_PID_1)
    assert before.exit_code == 0 and before.stdout.count("\n") == 4, before
    container = sandbox_of(broker, who).container_id
    attack = await service.execute(
        who,
        "execute_bash",
        "for limit in --nofile=3:3 --cpu=1:1 --nproc=1:1 --as=10000000:10000000; do "
        "prlimit --pid 1 $limit 2>&1 && echo CHANGED; done; "
        "python3 -c 'import resource; resource.prlimit(1, resource.RLIMIT_NOFILE, (3, 3))' 2>&1 | tail -1",
    )
    assert "CHANGED" not in attack.stdout, attack.stdout
    assert attack.stdout.count("Operation not permitted") == 5, attack.stdout
    after = await service.execute(who, "execute_bash", _LIMITS_OF_PID_1)
    assert after.stdout == before.stdout
    # The sandbox keeps serving: commands, the file helper, and the caller's own limits still move.
    await service.write_file(who, "kept.txt", "kept")
    assert (await service.read_file(who, "kept.txt")).content == "kept"
    own = await service.execute(who, "execute_bash", "ulimit -n 64; ulimit -n; ulimit -t 100; ulimit -t")
    assert own.stdout == "64\n100\n"
    spin = await service.execute(who, "execute_python", "n = 0\nfor i in range(3_000_000): n += i\nprint(n)")
    assert spin.stdout == f"{sum(range(3_000_000))}\n"
    assert sandbox_of(broker, who).container_id == container
    assert not (attack.sandbox_replaced or after.sandbox_replaced or spin.sandbox_replaced)


async def test_code_cannot_lower_the_priority_or_change_the_scheduling_of_pid_1(
    service: ExecutionService,
) -> None:
    """renice of PID 1, of the process group 1 or of the whole uid (which includes the agent), idle
    scheduling, CPU pinning and idle I/O class for PID 1 are refused; the caller's own nice works."""
    who = _principal()
    attacks = [
        "renice -n 19 -p 1",
        "renice -n 19 -g 1",
        "renice -n 19 -u $(id -u)",
        "chrt --idle -p 0 1",
        "taskset -p 1 1 >/dev/null",
        "ionice -c 3 -p 1",
        "ionice -c 3 -u $(id -u)",
    ]
    script = "".join(
        f"{attack} 2>/dev/null && echo CHANGED: {attack} || echo refused; " for attack in attacks
    )
    result = await service.execute(who, "execute_bash", script + "ps -o ni=,cls= -p 1; nice -n 7 nice")
    lines = result.stdout.splitlines()
    assert lines[: len(attacks)] == ["refused"] * len(attacks), result.stdout
    assert lines[len(attacks)].split() == ["0", "TS"], "PID 1 keeps nice 0 and normal scheduling"
    assert lines[len(attacks) + 1] == "7", "a command may still lower its own priority"


#: Every way found to signal or stop PID 1 from inside: kill (each signal), tgkill and tkill aimed at
#: its thread, F_SETOWN with F_SETSIG (I/O signals of the code's choice), and CLONE_PARENT (a sibling
#: whose exit signal goes to PID 1). Prints what each attempt did.
_SIGNAL_ATTACKS = r"""
import ctypes, fcntl, os, signal, time
libc = ctypes.CDLL(None, use_errno=True)
calls = {"x86_64": {"tgkill": 234, "tkill": 200, "clone": 56},
         "aarch64": {"tgkill": 131, "tkill": 130, "clone": 220}}[os.uname().machine]
def syscall(name, *args):
    ctypes.set_errno(0)
    result = libc.syscall(calls[name], *args)
    return "refused" if result == -1 else f"done {result}"
def attempt(what, action):
    try:
        action()
        print(what, "done")
    except OSError as exc:
        print(what, "refused" if exc.errno == 1 else exc)
for sig in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGSTOP", "SIGKILL"):
    attempt(f"kill {sig}", lambda: os.kill(1, getattr(signal, sig)))
print("tgkill SIGSTOP", syscall("tgkill", 1, 1, signal.SIGSTOP))
print("tkill SIGKILL", syscall("tkill", 1, signal.SIGKILL))
r, w = os.pipe()
fcntl.fcntl(r, fcntl.F_SETOWN, 1)
attempt("F_SETSIG SIGKILL", lambda: fcntl.fcntl(r, 10, signal.SIGKILL))
fcntl.fcntl(r, fcntl.F_SETFL, os.O_ASYNC | os.O_NONBLOCK)
os.write(w, b"x")
flags = 0x00008000 | signal.SIGSTOP
child = libc.syscall(calls["clone"], flags, 0, 0, 0, 0)
if child == 0:
    os._exit(0)
print("clone CLONE_PARENT", "refused" if child == -1 else "done")
time.sleep(0.3)
"""


def _pid1_state() -> str:
    return (
        "import os\n"
        "fields = open('/proc/1/stat').read().rsplit(')', 1)[1].split()\n"
        "print(fields[0], fields[19], ','.join(sorted(os.listdir('/proc/1/task'))))\n"
    )


@pytest.mark.parametrize("profile", ["default", "strict"], ids=["runc", "gvisor"])
async def test_code_cannot_signal_or_stop_pid_1(broker: Broker, exec_path: str, profile: str) -> None:
    """Linux ignores signals sent to a PID 1 from inside its namespace, gVisor does not: the seccomp
    profile refuses them (the agent has a single thread, so PID 1 is all of it) and the agent
    ignores every signal it can. PID 1 is the same process, running, after every attempt."""
    service = ExecutionService(PolicyEngine(policy_with_exec_path(exec_path)), broker, broker.audit)
    who = Principal(f"signals-{uuid.uuid4().hex[:8]}", profile=profile)
    before = await service.execute(who, "execute_python", _pid1_state())
    state, started, tasks = before.stdout.split()
    container = sandbox_of(broker, who).container_id
    attack = await service.execute(who, "execute_python", _SIGNAL_ATTACKS)
    report = attack.stdout.splitlines()
    if exec_path == "agent":  # aimed at the agent, with its uid: the seccomp profile refuses each one
        assert attack.exit_code == 0, (attack.exit_code, attack.stdout, attack.stderr)
        assert len(report) == 11 and all(line.endswith("refused") for line in report), attack.stdout
        assert tasks == "1", "the agent has a single thread: PID 1 names all of it"
    after = await service.execute(who, "execute_python", _pid1_state())
    assert after.exit_code == 0 and not after.sandbox_replaced, after
    assert after.stdout.split() == [state, started, tasks], "PID 1 unchanged and not stopped"
    assert state in ("S", "R")
    assert sandbox_of(broker, who).container_id == container


async def test_a_sandbox_whose_agent_cannot_start_a_command_is_replaced(
    broker: Broker, audit_sink: MemorySink
) -> None:
    """A call fills the sandbox's pids limit with sleeping processes and keeps running; the next call
    cannot be started by the agent (no process slot). Refusing it forever would leave the principal
    stuck: the broker replaces the sandbox and runs the call on the new one."""
    engine = PolicyEngine(policy_with_exec_path("agent"))
    who = _principal()
    farm = (
        "import os, time\n"
        "n = 0\n"
        "while True:\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except BlockingIOError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(3600)\n"
        "        os._exit(0)\n"
        "    n += 1\n"
        "print('full', n, flush=True)\n"
        "time.sleep(3600)\n"
    )
    full = threading.Event()

    def watch(stream: str, data: bytes) -> None:
        if b"full" in data:
            full.set()

    decision = engine.evaluate(who, Action("execute_python", len(farm)))
    first = await broker.ensure_sandbox(who, decision)
    results: dict[str, object] = {}

    async def fill() -> None:
        try:
            results["farm"] = await broker.execute(who, decision, ["python3", "-c", farm], on_output=watch)
        except AgentBroken as exc:  # its sandbox was removed under it: either way, the call is lost
            results["farm"] = exc

    async with anyio.create_task_group() as group:
        group.start_soon(fill)
        assert await anyio.to_thread.run_sync(full.wait, 60), "the farm filled the pids limit"
        command = "echo fresh; ls /workspace | wc -l"
        results["next"] = await broker.execute(
            who, engine.evaluate(who, Action("execute_bash", len(command))), bash_argv(command)
        )
    following = results["next"]
    assert following.stdout == b"fresh\n0\n" and following.exit_code == 0, following  # type: ignore[attr-defined]
    assert following.sandbox_replaced  # type: ignore[attr-defined]
    assert sandbox_of(broker, who).container_id != first.container_id
    farm_call = results["farm"]
    assert isinstance(farm_call, AgentBroken) or farm_call.sandbox_lost  # type: ignore[attr-defined]
    again = await broker.execute(who, decision, ["python3", "-c", "print('ok')"])
    assert again.stdout == b"ok\n"
    removals = audit_events(audit_sink, "sandbox.remove")
    assert [(e["resource"]["container_id"], e["detail"]["reason"]) for e in removals] == [
        (first.container_id, "lost")
    ]


#: Modules the file helper (or Python's start-up) would import, each replaced by one that prints a
#: forged answer and exits: what a hijacked helper would report.
_FORGED = {
    "size": 6,
    "path": "/workspace/forged",
    "data": base64.b64encode(b"forged").decode(),
    "truncated": False,
    "entries": [{"name": "forged", "type": "file", "size": 6}],
}
_HIJACK = (
    "import os, sys\n"
    f"sys.stdout.write({json.dumps(json.dumps(_FORGED))} + '\\n')\n"
    "sys.stdout.flush()\n"
    "os._exit(0)\n"
)
#: Shadowed in /workspace, the code's working directory (on sys.path of `python3 -c` there).
_IN_WORKSPACE = [
    "json",
    "base64",
    "binascii",
    "struct",
    "re",
    "errno",
    "os",
    "io",
    "abc",
    "codecs",
    "stat",
    "posixpath",
    "genericpath",
    "sitecustomize",
    "usercustomize",
    "_collections_abc",
    "types",
    "enum",
    "functools",
    "collections",
    "operator",
    "keyword",
    "copyreg",
]
#: Shadowed in /skills, on PYTHONPATH: what the helper imports, and what every Python start-up runs
#: (not the modules start-up itself needs: no Python would start at all).
_ON_PYTHONPATH = ["json", "base64", "binascii", "struct", "re", "sitecustomize", "usercustomize"]


@pytest.fixture
def hostile_skills(mount_dir: Path) -> Path:
    """A skills directory (mounted at /skills, which is on sandbox processes' PYTHONPATH) full of
    hijacking modules."""
    for name in _ON_PYTHONPATH:
        (mount_dir / f"{name}.py").write_text(_HIJACK)
        (mount_dir / f"{name}.py").chmod(0o644)
    return mount_dir


async def test_the_file_helper_ignores_what_the_code_put_in_workspace_and_on_pythonpath(
    backend: DockerBackend,
    exec_path: str,
    hostile_skills: Path,
) -> None:
    """Hostile json.py, base64.py, os.py, sitecustomize.py... in /workspace (the code's working
    directory) and in /skills (on PYTHONPATH) take over any plain `python3` there, but not the file
    helper: write_file, read_file and list_files still report the truth."""
    broker = Broker(
        backend,
        AuditLog([MemorySink()]),
        gateway_id=f"test-{uuid.uuid4().hex[:12]}",
        skills_path=hostile_skills,
    )
    service = ExecutionService(PolicyEngine(policy_with_exec_path(exec_path)), broker, broker.audit)
    who = _principal()
    try:
        hijack = base64.b64encode(_HIJACK.encode()).decode()
        plant = (
            f"cd /workspace && for name in {' '.join(_IN_WORKSPACE)}; do "
            f"echo {hijack} | base64 -d > $name.py; done; "
            f"mkdir encodings && echo {hijack} | base64 -d > encodings/__init__.py; "
            "printf 'the truth' > real.txt"
        )
        assert (await service.execute(who, "execute_bash", plant)).exit_code == 0
        # The hijack works on an ordinary python3 in /workspace, so the checks below can fail.
        plain = await service.execute(
            who,
            "execute_bash",
            "cd /workspace && env -u PYTHONPATH python3 -c 'import json'; cd / && python3 -c 'import json'",
        )
        assert plain.stdout.count('"/workspace/forged"') == 2, plain.stdout

        written = await service.write_file(who, "new.txt", "written for real")
        assert (written.path, written.size) == ("/workspace/new.txt", len("written for real"))
        read = await service.read_file(who, "real.txt")
        assert (read.content, read.size, read.path) == ("the truth", 9, "/workspace/real.txt")
        assert (await service.read_file(who, "new.txt")).content == "written for real"
        listing = await service.list_files(who, "/workspace")
        names = {entry.name for entry in listing.entries}
        assert {"real.txt", "new.txt", "json.py", "encodings"} <= names and "forged" not in names
        check = await service.execute(who, "execute_bash", "cat /workspace/new.txt")
        assert check.stdout == "written for real"
    finally:
        broker.cleanup_all_sync()
        assert backend.list({f"{LABEL}.gateway": broker.gateway_id}) == []
