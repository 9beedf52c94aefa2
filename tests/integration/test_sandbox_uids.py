"""A host uid per sandbox: per-user kernel counters are never shared between sandboxes or with a host account.

One principal's code exhausts what the kernel counts per user (inotify instances, message-queue
bytes, processes under RLIMIT_NPROC) and holds it; meanwhile another principal, and a host
account, are unaffected, while a host process with the first sandbox's uid is refused: the limit
was really reached, and it belongs to that sandbox's uid alone.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import anyio
import pytest

from gateway.calls.service import ExecutionService
from gateway.sandboxes.broker import Broker
from gateway.uids import DEFAULT_UID_RANGE, UidRange
from policy import Principal
from policy.engine import PolicyEngine
from tests.conftest import policy_with_exec_path

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
UIDS = UidRange.parse(DEFAULT_UID_RANGE)
NPROC = 40

#: Python for inside a sandbox and on the host: each counter's own probe.
PROBES = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)

class MqAttr(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_long), ("maxmsg", ctypes.c_long), ("msgsize", ctypes.c_long),
                ("curmsgs", ctypes.c_long), ("pad", ctypes.c_long * 4)]

libc.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(MqAttr)]
ATTR = MqAttr(0, 10, 8192, 0)

def inotify():
    return libc.inotify_init() >= 0

def mqueue(name):
    return libc.mq_open(name.encode(), os.O_CREAT | os.O_RDWR, 0o600, ctypes.byref(ATTR)) >= 0

def fork_many(count):
    children = []
    for _ in range(count):
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            import time
            time.sleep(600)
            os._exit(0)
        children.append(pid)
    return children
"""

HOLDER = (
    PROBES
    + r"""
import time
inotify_held = 0
while inotify():
    inotify_held += 1
queues = 0
while mqueue(f"/holder-{queues}"):
    queues += 1
children = fork_many(200)
print(f"held inotify={inotify_held} mq={queues} procs={len(children)}", flush=True)
time.sleep(25)
"""
)

CHECK = (
    PROBES
    + r"""
children = fork_many(10)
print(f"inotify={inotify()} mq={mqueue('/check')} procs={len(children)}", flush=True)
libc.mq_unlink(b"/check")
for pid in children:
    os.kill(pid, 9)
"""
)


def _policy() -> PolicyEngine:
    """The default profile with a small RLIMIT_NPROC, so that one sandbox reaches it quickly."""
    base = policy_with_exec_path("agent")
    profile = base.profiles["default"]
    sandbox = profile.sandbox.model_copy(
        update={"ulimits": {**profile.sandbox.ulimits, "nproc": NPROC}, "pids_limit": 512}
    )
    profiles = {**base.profiles, "default": profile.model_copy(update={"sandbox": sandbox})}
    return PolicyEngine(base.model_copy(update={"profiles": profiles}))


def _on_host(uid: int, *, nproc: int | None = None) -> str:
    """CHECK run on the host as `uid` (a host account, or a sandbox's uid), with RLIMIT_NPROC set.

    The interpreter starts as root and drops to `uid` itself before CHECK runs: an execve after
    the drop would fail (EAGAIN) whenever the uid is at its process limit, which is the case under
    test, and the probes would not run at all."""
    limit = "" if nproc is None else f"resource.setrlimit(resource.RLIMIT_NPROC, ({nproc}, {nproc}))\n"
    drop = f"import os, resource\n{limit}os.setgroups([])\nos.setgid({uid})\nos.setuid({uid})\n"
    proc = subprocess.run(
        ["/usr/bin/python3", "-I", "-c", drop + CHECK],
        capture_output=True,
        text=True,
        cwd="/",
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


async def test_one_sandbox_exhausting_per_user_limits_leaves_others_and_the_host_untouched(
    broker: Broker,
) -> None:
    service = ExecutionService(_policy(), broker, broker.audit)
    alice, bob = Principal("alice"), Principal("bob")
    held = anyio.Event()
    seen: list[str] = []

    async def progress(_total: float, latest: str) -> None:
        seen.append(latest)
        if "held" in latest:
            held.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(lambda: service.execute(alice, "execute_python", HOLDER, on_progress=progress))
        with anyio.fail_after(30):
            await held.wait()
        holding = next(line for line in seen if "held" in line)
        # Alice's sandbox can start nothing now (its uid has no process left): ask the broker.
        alice_sandbox = broker.sandbox_of(alice)
        assert alice_sandbox is not None
        alice_uid = int(alice_sandbox.user.split(":")[0])
        bob_uid = int((await service.execute(bob, "execute_bash", "id -u")).stdout)
        assert alice_uid != bob_uid and alice_uid in UIDS and bob_uid in UIDS

        bob_check = (await service.execute(bob, "execute_python", CHECK)).stdout.strip()
        host_account = await anyio.to_thread.run_sync(lambda: _on_host(1000, nproc=NPROC))
        alice_on_host = await anyio.to_thread.run_sync(lambda: _on_host(alice_uid, nproc=NPROC))
        # The holder ends (from the host: nothing can start in its sandbox); its call then returns.
        subprocess.run(["pkill", "-9", "-u", str(alice_uid), "-f", "python3 -c"], check=False)

    instances = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
    assert f"inotify={instances}" in holding and "mq=0" not in holding, holding
    assert bob_check == "inotify=True mq=True procs=10"
    assert host_account == "inotify=True mq=True procs=10"
    # The same checks with the first sandbox's uid fail on the host: its counters are spent.
    assert alice_on_host == "inotify=False mq=False procs=0", alice_on_host
