"""Attacks on run_python end to end (real gateway, SDK client, default image): hostile code against the
agent, the gateway, the time limits and the report's truth; one principal against another."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from mcp import Client

from gateway.backend.docker_engine import DockerBackend
from tests.e2e.conftest import Gateway, mcp_client, start_gateway, stop_gateway
from tests.support import audit_events, matching, settled_events

pytestmark = pytest.mark.anyio

#: The default profile's interrupt_grace_s, and a generous allowance on top of timeout + grace.
GRACE_S, SLACK_S = 2, 30
PRINCIPALS = [f"p{i}" for i in range(24)] + ["victim", "mallory"]
#: Code that answers in the interpreter's name: `me` is the call's id (its cell's name holds it).
FORGE = (
    "import base64, json, os, struct, sys\n"
    "me = int(sys._getframe().f_code.co_filename[len('<cell-'):-1])\n"
    "def forge(data):\n"
    "    os.write(4, struct.pack('>II', len(data), me) + data)\n"
)
#: Code that will not end by itself, and what the next call must say of the state ("any": either).
STUBBORN = {
    "sigint-ignored": ("import signal\nsignal.signal(2, signal.SIG_IGN)\nwhile 1: pass", "timeout"),
    "sigint-blocked": ("import signal\nsignal.pthread_sigmask(0, {signal.SIGINT})\nwhile 1: pass", "timeout"),
    "partial-answer": (FORGE + "os.write(4, struct.pack('>II', 99, me))\nos.read(os.pipe()[0], 1)", "any"),
    "slow-answer": (
        FORGE + "import time\nos.write(4, struct.pack('>II', 9999, me))\n"
        "while True:\n    os.write(4, b' ')\n    time.sleep(0.2)",
        "any",
    ),
    "fd4-flood": (
        FORGE + "import threading\ndef flood():\n"
        "    while True: os.write(4, struct.pack('>II', 65536, 0) + b'x' * 65536)\n"
        "threading.Thread(target=flood).start()\nwhile True: pass",
        "any",
    ),
    "closes-its-fds": ("import os\nfor fd in (1, 2, 3, 4):\n    os.close(fd)\nwhile True: pass", "broken"),
    "execs-sleep": ("import os\nos.execv('/bin/sleep', ['sleep', '600'])", "broken"),
    "stops-itself": ("import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)", "timeout"),
    "kills-its-group": ("import os, signal\nos.killpg(0, signal.SIGKILL)", "exited"),
    "stdout-flood": ("import os\nwhile True: os.write(1, b'x' * 65536)", None),
    "fork-holds-pipes": ("import os\nif not os.fork():\n    os.setsid()\n    while 1: print('x')\n0", None),
    "thread-prints-after": (
        "import threading\ndef spam():\n    while True: print('late ' * 200)\n"
        "threading.Thread(target=spam, daemon=True).start()\n'started'",
        None,
    ),
    "deep-recursion": ("import sys\nsys.setrecursionlimit(10**7)\ndef f(n): return f(n + 1)\nf(0)", "any"),
    "fork-bomb": ("import os\nwhile True:\n    try: os.fork()\n    except OSError: pass", "any"),
}
#: What the code tries against the agent (PID 1); every attempt must be refused.
AGAINST_PID_1 = """
import contextlib, ctypes, os, resource, signal
libc, out = ctypes.CDLL(None, use_errno=True), {}
def attempt(name, action):
    try:
        out[name] = 'refused' if (done := action()) is not None and done == -1 else f'done: {done!r}'
    except OSError:
        out[name] = 'refused'
for sig in (signal.SIGKILL, signal.SIGSTOP, signal.SIGTERM, signal.SIGINT, signal.SIGSEGV):
    attempt(f'kill-{sig.name}', lambda: os.kill(1, sig))
attempt('tgkill', lambda: libc.syscall(234, 1, 1, 9))
with contextlib.suppress(OSError):  # Linux drops it (PID 1 has no handler): the agent lives on
    signal.pidfd_send_signal(os.pidfd_open(1), signal.SIGKILL)
attempt('prlimit', lambda: resource.prlimit(1, resource.RLIMIT_NOFILE, (3, 3)))
attempt('setpriority', lambda: os.setpriority(os.PRIO_PROCESS, 1, 19))
attempt('oom-adj', lambda: open('/proc/1/oom_score_adj', 'w').write('1000'))
attempt('fds', lambda: os.listdir('/proc/1/fd'))
attempt('ptrace', lambda: libc.ptrace(16, 1, 0, 0))
out
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, backend: DockerBackend) -> Iterator[Gateway]:
    """This module's own gateway (each attacker a principal of its own); it leaves no container behind."""
    running = start_gateway(
        tmp_path_factory.mktemp("attacks"), principals=dict.fromkeys(PRINCIPALS, "default")
    )
    yield running
    stop_gateway(running)
    assert backend.list({"sandbox-gateway.gateway": running.gateway_id}) == []


@pytest.fixture(autouse=True)
def _collect() -> Iterator[None]:
    """A response the SDK client cannot parse leaves tasks with unretrieved exceptions; collected during a
    later failure's report, their logged traceback re-enters ast.parse (CPython 3.11, gh-106905)."""
    yield
    gc.collect()


async def call(client: Client, code: str, timeout_s: float | None = None) -> tuple[dict[str, Any], float]:
    """A run_python call that must come back as a valid result (not an error), and its seconds."""
    arguments: dict[str, Any] = {"code": code} | ({"timeout_s": timeout_s} if timeout_s else {})
    started = time.monotonic()
    with anyio.fail_after(120):
        try:
            answer = await client.call_tool("run_python", arguments)
        except Exception as exc:  # what the client got instead of a response
            pytest.fail(f"no valid response reached the client: {exc!r}"[:600])
    assert not answer.is_error and answer.structured_content is not None, answer.content
    return answer.structured_content, time.monotonic() - started


async def bash(client: Client, command: str) -> str:
    answer = await client.call_tool("execute_bash", {"command": command})
    return str((answer.structured_content or {}).get("stdout"))


def unfinished(gateway: Gateway, principal: str) -> int:
    """Executions of `principal` without their `exec.finish`, once the log has settled (it is
    written off the call's path: a call left unrecorded fails the wait, by name)."""
    events = settled_events(gateway.audit_log, tool="run_python", principal=principal)
    return len(matching(events, "exec.start")) - len(matching(events, "exec.finish"))


@pytest.mark.parametrize("attack", list(STUBBORN))
async def test_stubborn_code_ends_in_time_and_the_sandbox_serves_on(gateway: Gateway, attack: str) -> None:
    code, reason = STUBBORN[attack]
    principal = PRINCIPALS[list(STUBBORN).index(attack)]
    async with mcp_client(gateway.url, gateway.tokens[principal]) as client:
        await call(client, "kept = 1")
        first, seconds = await call(client, code, timeout_s=2)
        assert seconds < 2 + GRACE_S + SLACK_S
        assert (await bash(client, "echo alive")) == "alive\n", "the agent still serves other calls"
        after, seconds = await call(client, "'kept' in globals(), 6 * 7")
        assert seconds < 30 + GRACE_S + SLACK_S
    assert after["value"] in ("(True, 42)", "(False, 42)") or reason == "any"  # a flood may go on
    if reason != "any":  # None: it lives on; else how the next call says it ended
        assert first["interpreter_killed"] is (reason is not None) and after["state_lost_reason"] == reason


async def test_the_code_cannot_touch_the_agent(gateway: Gateway) -> None:
    async with mcp_client(gateway.url, gateway.tokens["p15"]) as client:
        result, _ = await call(client, AGAINST_PID_1)
        assert (await bash(client, "echo alive")) == "alive\n"
    assert result["value"] is not None and "done" not in result["value"], result["value"]


#: Results with a lone surrogate (any code can make one: a surrogate-escaped file name in a message).
SURROGATES = {
    "p16": "raise ValueError('\\udcff')",
    "p17": "class Table:\n    def _repr_markdown_(self):\n        return '| \\ud800 |'\nTable()",
}


@pytest.mark.parametrize("principal", list(SURROGATES))
async def test_a_lone_surrogate_is_answered_and_audited(gateway: Gateway, principal: str) -> None:
    code = SURROGATES[principal]
    async with mcp_client(gateway.url, gateway.tokens[principal]) as client:
        result, _ = await call(client, code)
    assert (result["error"] or {}).get("type") == "ValueError" or len(result["outputs"]) == 1
    assert unfinished(gateway, principal) == 0, "the call has its exec.finish"


async def test_a_deeply_nested_forged_answer_is_reported_as_malformed(gateway: Gateway) -> None:
    code = FORGE + "forge(b'{\"id\":%d,\"value\":' % me + b'[' * 100000 + b']' * 100000 + b'}')"
    async with mcp_client(gateway.url, gateway.tokens["p18"]) as client:
        result, _ = await call(client, code)
    assert result["value"] is None and result["error"]["type"] == "InterpreterError"


async def test_an_image_with_a_png_header_and_anything_after_it_is_refused(gateway: Gateway) -> None:
    code = FORGE + (
        "fake = b'\\x89PNG\\r\\n\\x1a\\n' + struct.pack('>I4sII', 13, b'IHDR', 1, 1)\n"
        "fake += b'<script>alert(1)</script>'\n"
        "rich = [{'mime': 'image/png', 'data': base64.b64encode(fake).decode()}]\n"
        "forge(json.dumps({'id': me, 'rich': rich}).encode())"
    )
    async with mcp_client(gateway.url, gateway.tokens["p19"]) as client:
        result, _ = await call(client, code)
    assert result["outputs"] == [], "no CRC, no IDAT, no IEND: not a real PNG"


async def test_a_forged_answer_sets_no_gateway_field_and_stays_in_the_caps(gateway: Gateway) -> None:
    code = FORGE + (
        "lies = dict(interrupted=True, interpreter_killed=True, oom_killed=True, new=True, state_lost=True,"
        " ended={'reason': 'idle'}, previous={'reason': 'oom'}, stdout_bytes=-1, timed_out=True)\n"
        "rich = [{'mime': 'text/html', 'data': 'x', 'note': True}]\n"
        "rich += [{'mime': 'text/html', 'data': 'h' * 400_000}] * 45\n"
        "error = {'type': 'T' * 10**5, 'message': 'm' * 10**6, 'traceback': 't' * 10**6}\n"
        "forge(json.dumps({'id': me, 'value': 'v' * 10**6, 'rich': rich, 'error': error, **lies}).encode())"
    )
    async with mcp_client(gateway.url, gateway.tokens["p20"]) as client:
        await call(client, "0")
        result, _ = await call(client, code)
        after, _ = await call(client, "1")
    owned = ("interrupted", "interpreter_killed", "oom_killed", "new_interpreter", "state_lost", "timed_out")
    assert [name for name in owned if result[name] is not False] == []
    assert after["state_lost"] is False and after["new_interpreter"] is False
    assert len(result["value"]) <= 64 * 1024 + 65 and len(result["outputs"]) <= 8 + 32
    assert all(len(item["text"]) <= 256 * 1024 + 65 and not item["note"] for item in result["outputs"])
    assert len(result["error"]["type"]) <= 201 and len(result["error"]["traceback"]) <= 64 * 1024 + 1
    assert any("more outputs were not shown" in note for note in result["notes"])


async def test_an_interpreter_that_kills_itself_is_not_reported_as_oom_killed(gateway: Gateway) -> None:
    """An OOM kill of another process earlier (a subprocess hog) must not be pinned on a later SIGKILL."""
    hog = (
        "import subprocess, sys\n"
        'hog = \'open("/proc/self/oom_score_adj", "w").write("1000")\\nkeep = []\\n'
        "while True: keep.append(bytearray(2**25))'\n"
        "subprocess.run([sys.executable, '-c', hog]).returncode"
    )
    async with mcp_client(gateway.url, gateway.tokens["p21"]) as client:
        killed_hog, _ = await call(client, hog, 25)
        suicide, _ = await call(client, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
        after, _ = await call(client, "1")
    assert killed_hog["value"] == "-9" and killed_hog["oom_killed"] is False, "the hog, not the interpreter"
    assert suicide["interpreter_killed"] is True
    assert suicide["oom_killed"] is False, "the interpreter killed itself; the OOM counter was stale"
    assert after["state_lost_reason"] == "exited"


async def test_memory_in_no_processs_rss_is_reported_truthfully_whoever_the_kernel_kills(
    gateway: Gateway,
) -> None:
    """The interpreter lowers its OOM score back to the agent's (no privilege stops that), then fills a
    memfd (memory in no process's RSS) through a 1 MB `cat`: the kernel may then pick the agent, and
    the sandbox is lost (SECURITY.md, known limits). Whatever it picks, nothing goes unsaid: the call
    is answered, an OOM kill is reported, and the next call says whether the sandbox was replaced."""
    attack = "import os, subprocess, time\nopen('/proc/self/oom_score_adj', 'w').write('0')\n"
    attack += "fd = os.memfd_create('fill')\nfill = ['sh', '-c', f'exec cat /dev/zero >&{fd}']\n"
    attack += "subprocess.Popen(fill, pass_fds=[fd])\ntime.sleep(8)"
    async with mcp_client(gateway.url, gateway.tokens["p22"]) as client:
        await bash(client, "echo kept > /workspace/marker")
        result, _ = await call(client, attack, timeout_s=15)
        await anyio.sleep(2)  # the filler may still be at work: let the kernel finish choosing
        answer = await client.call_tool("execute_bash", {"command": "cat /workspace/marker 2>&1; true"})
    after = answer.structured_content or {}
    assert result["oom_killed"] is True and result["interpreter_killed"] is True
    kept = after.get("stdout") == "kept\n"
    assert kept != bool(after.get("sandbox_replaced")), "either the sandbox lived, or the next call says so"


async def test_one_principals_attack_neither_delays_nor_reaches_another(gateway: Gateway) -> None:
    """mallory holds its interpreter with code that will not stop, four calls at once; p23 sends
    answers of 20 MB (the gateway decodes them); the victim's calls go on, its state its own."""
    huge = FORGE + "rich = [{'mime': 'text/html', 'data': 'h' * 2**18}] * 40\n"
    huge += "forge(json.dumps({'id': me, 'value': 'v' * 10**7, 'rich': rich}).encode())"
    ends: list[float] = []
    waits: list[float] = []

    async def attack(client: Client, code: str, timeout_s: float) -> None:
        started = time.monotonic()
        await client.call_tool("run_python", {"code": code, "timeout_s": timeout_s})
        ends.append(time.monotonic() - started)

    async with (
        mcp_client(gateway.url, gateway.tokens["mallory"]) as mallory,
        mcp_client(gateway.url, gateway.tokens["p23"]) as flooder,
        mcp_client(gateway.url, gateway.tokens["victim"]) as victim,
    ):
        await call(victim, "secret = 'victim-only'")
        async with anyio.create_task_group() as group:
            for _ in range(4):
                group.start_soon(attack, mallory, STUBBORN["sigint-ignored"][0], 3)
                group.start_soon(attack, flooder, huge, 10)
            for _ in range(10):
                result, seconds = await call(victim, "secret")
                assert result["value"] == "'victim-only'" and result["state_lost"] is False
                waits.append(seconds)
                await anyio.sleep(0.3)
        peek, _ = await call(mallory, "'secret' in globals()")
        await mallory.call_tool("reset_sandbox", {})
        still, _ = await call(victim, "secret")
    assert max(waits) < 10, waits
    assert len(ends) == 8 and max(ends) < 10 + GRACE_S + SLACK_S
    assert peek["value"] == "False" and still["value"] == "'victim-only'" and still["state_lost"] is False


async def test_a_call_queued_behind_another_still_ends_within_its_own_timeout(gateway: Gateway) -> None:
    """The wait for the interpreter counts in the queued call's own timeout: it never runs longer."""
    seconds: dict[str, float] = {}

    async def timed(client: Client, name: str, code: str) -> None:
        started = time.monotonic()
        await client.call_tool("run_python", {"code": code, "timeout_s": 20})
        seconds[name] = time.monotonic() - started

    async with mcp_client(gateway.url, gateway.tokens["p14"]) as client, anyio.create_task_group() as group:
        group.start_soon(timed, client, "first", "import time\ntime.sleep(19)")
        await anyio.sleep(0.5)
        group.start_soon(timed, client, "queued", STUBBORN["sigint-ignored"][0])
    assert seconds["queued"] < 20 + GRACE_S + 10, seconds


async def test_every_run_python_call_of_this_module_was_audited_to_its_end(gateway: Gateway) -> None:
    starts = settled_events(gateway.audit_log, "exec.start", tool="run_python")
    finishes = audit_events(gateway.audit_log, "exec.finish", tool="run_python")
    principals = {event["actor"]["principal"] for event in starts}
    assert {name: unfinished(gateway, name) for name in principals if unfinished(gateway, name)} == {}
    assert len(starts) == len(finishes)
