# ruff: noqa: E501 - the attacks are scripts embedded in strings, kept readable as written
"""Code mode under attack, below the gateway process: the gateway's parsing and handling of the
lines sandbox code writes, what it passes back from an upstream, the generated modules of a hostile
upstream, the policy's path constraint, and the sandbox agent's door (live, under a dedicated uid, as
tests/unit/test_agent_tool_ports.py runs it).

Every test asserts the secure behaviour: a failing test is a hole.
"""

from __future__ import annotations

import ast
import contextlib
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import mcp_types
import pytest
import yaml

from audit import AuditLog, MemorySink
from gateway.agent.protocol import EXIT, OUT, TOOL, TOOL_PART
from gateway.calls.code_mode import CodeModeCalls, ExecutionTools
from gateway.calls.tool_call_line import CallRefused, parse_call
from gateway.errors import UpstreamFailed
from gateway.ratelimit import RateLimiter
from gateway.upstream import UpstreamResult, UpstreamTool, generate
from policy import Action, Allowed, Denied, Principal
from policy.engine import PolicyEngine
from policy.loader import default_policy_path, load_policy_text
from tests.support.live_agent import LiveAgent, interpreter, launcher, live  # noqa: F401 - fixtures

CODER = Principal("alice", "acme", "coder", "token", frozenset({"sandbox:exec"}))
KEY = "AKIA" + "QWERTYUIOPASDFGH"


# -- the gateway's parsing of a call line ------------------------------------------------------------


def _nested(depth: int, leaf: Any = 0) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


HOSTILE_LINES = {
    "lone-surrogate-value": b'{"id":1,"server":"notes","tool":"search","arguments":{"q":"\\ud800"}}',
    "lone-surrogate-key": b'{"id":1,"server":"notes","tool":"search","arguments":{"\\udfff":1}}',
    "lone-surrogate-server": b'{"id":1,"server":"n\\ud800","tool":"search","arguments":{}}',
    "invalid-utf8": b'{"id":1,"server":"notes","tool":"search","arguments":{"q":"\xff\xfe"}}',
    "utf16": '{"id":1,"server":"notes","tool":"search","arguments":{}}'.encode("utf-16-le"),
    "bom": b'\xef\xbb\xbf{"id":1,"server":"notes","tool":"search","arguments":{}}',
    "huge-int": b'{"id":1,"server":"notes","tool":"search","arguments":{"n":' + b"9" * 5000 + b"}}",
    "huge-id": b'{"id":' + b"9" * 4000 + b',"server":"notes","tool":"search","arguments":{}}',
    "deep": b'{"id":1,"server":"notes","tool":"search","arguments":{"a":' + b"[" * 200_000 + b"}}",
    "nan": b'{"id":1,"server":"notes","tool":"search","arguments":{"a":NaN}}',
}


@pytest.mark.parametrize("line", HOSTILE_LINES.values(), ids=HOSTILE_LINES.keys())
def test_parsing_a_hostile_line_refuses_or_parses_and_never_raises_anything_else(line: bytes) -> None:
    """Anything but CallRefused escapes ExecutionTools.__call__ and kills the whole execution."""
    with contextlib.suppress(CallRefused):
        parse_call(line)


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999", "-1e400"])
def test_non_finite_numbers_are_refused(number: str) -> None:
    """Not JSON; the MCP client would send them upstream as null while the policy and the audit saw a
    number."""
    line = b'{"id":1,"server":"notes","tool":"search","arguments":{"a":' + number.encode() + b"}}"
    with pytest.raises(CallRefused):
        parse_call(line)


def _sdk_sends(arguments: dict[str, Any]) -> None:
    """What the MCP client does with the arguments of a call: a python-mode dump in the caller's task,
    then a JSON dump in the transport's writer task (whose failure ends the shared session)."""
    request = mcp_types.CallToolRequest(params=mcp_types.CallToolRequestParams(name="t", arguments=arguments))
    data = request.model_dump(by_alias=True, mode="json", exclude_none=True)
    message = mcp_types.JSONRPCRequest(jsonrpc="2.0", id=1, method=data["method"], params=data.get("params"))
    message.model_dump_json(by_alias=True, exclude_unset=True)


def test_arguments_the_mcp_client_cannot_send_are_refused_by_the_gateway() -> None:
    """Depth 254 passes the client's first dump and breaks its transport writer: the upstream session
    every principal shares ends (tests/e2e: the stdio server is restarted, other calls are cut)."""
    unsendable = []
    for depth in range(240, 270):
        arguments = {"values": _nested(depth)}
        line = json.dumps({"id": 1, "server": "calc", "tool": "stats", "arguments": arguments}).encode()
        try:
            parse_call(line)
        except CallRefused:
            continue
        try:
            _sdk_sends(arguments)
        except ValueError:
            unsendable.append(depth)
    assert unsendable == [], f"parse_call accepts nesting depths the MCP client cannot send: {unsendable}"


# -- the gateway's handler for one execution ------------------------------------------------------------


class FakeUpstreams:
    def __init__(self, answer: UpstreamResult | Exception) -> None:
        self.answer = answer
        self.sent: list[dict[str, Any]] = []

    async def call(
        self, server: str, tool: str, arguments: dict[str, Any], *, timeout_s: float
    ) -> UpstreamResult:
        self.sent.append(arguments)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def _tools(upstream: FakeUpstreams, sink: MemorySink) -> ExecutionTools:
    policy = yaml.safe_load(default_policy_path().read_text())
    policy["profiles"]["coder"] = {
        "extends": "default",
        "code_mode": {"allow": [{"server": "notes", "tools": ["*"]}], "calls_per_minute": 10_000},
    }
    engine = PolicyEngine(load_policy_text(yaml.safe_dump(policy)))
    bridge = CodeModeCalls(lambda: engine, upstream, AuditLog([sink]), RateLimiter("memory://"))  # type: ignore[arg-type]
    decision = engine.evaluate(CODER, Action(tool="execute_python"))
    assert isinstance(decision, Allowed)
    tools = bridge.for_execution(CODER, decision)
    assert tools is not None
    tools.deadline = time.monotonic() + 30
    return tools


@pytest.mark.anyio
@pytest.mark.parametrize("line", HOSTILE_LINES.values(), ids=HOSTILE_LINES.keys())
async def test_the_handler_answers_every_hostile_line_with_one_json_line(line: bytes) -> None:
    """The handler's contract: an answer line for every call, never an exception (one would end the
    execution with an internal error and no exec.finish)."""
    upstream = FakeUpstreams(UpstreamResult(False, [], {"ok": True}, "", 20))
    answer = await _tools(upstream, MemorySink())(line)
    decoded = json.loads(answer)
    assert isinstance(decoded, dict) and "\n" not in answer
    answer.encode()  # it goes to the agent as UTF-8


@pytest.mark.anyio
async def test_a_secret_in_an_upstream_failure_message_is_not_passed_to_the_code() -> None:
    """refuse_secrets checks results and error results, not the text of a JSON-RPC error, which the
    gateway hands to the code as the ToolError's message."""
    failure = UpstreamFailed(f"upstream notes: tool t: MCP error -32000: backend refused the key {KEY}")
    answer = await _tools(FakeUpstreams(failure), MemorySink())(
        b'{"id":1,"server":"notes","tool":"t","arguments":{}}'
    )
    assert KEY not in answer, answer


@pytest.mark.anyio
async def test_a_secret_in_a_structured_key_or_an_error_result_is_refused() -> None:
    for result in (
        UpstreamResult(False, [], {KEY: 1}, "", 40),
        UpstreamResult(True, [], None, f"denied for {KEY}", 40),
    ):
        answer = await _tools(FakeUpstreams(result), MemorySink())(
            b'{"id":1,"server":"notes","tool":"t","arguments":{}}'
        )
        assert KEY not in answer and json.loads(answer)["error"]["code"] == "secret-in-result", answer


# -- a hostile upstream's tool list -> generated modules ----------------------------------------------

#: One small schema (7 KB) whose union members multiply: each level of `anyOf` refers back to itself.
BLOWUP = textwrap.dedent(
    """
    import sys, time
    from gateway.upstream.render import render_tool
    from gateway.upstream.results import UpstreamTool
    schema = {"type": "object", "$defs": {"a": {"anyOf": [{"$ref": "#/$defs/a"}] * 300}},
              "properties": {"x": {"$ref": "#/$defs/a"}}}
    started = time.monotonic()
    try:
        render_tool(UpstreamTool("hostile", "t", "d", schema, None), "t")
    except ValueError:
        pass
    print(round(time.monotonic() - started, 2))
    """
)


def test_a_small_hostile_schema_cannot_stall_module_generation() -> None:
    """`tools generate` runs on the gateway's event loop (at start and on every tools/list_changed the
    upstream sends): a schema that takes minutes to render freezes the whole gateway."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", BLOWUP],
            cwd=Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            timeout=15,
            check=True,
        )
        seconds = float(done.stdout)
    except subprocess.TimeoutExpired:
        seconds = float("inf")
    assert seconds < 5, f"rendering one 7 KB tool schema took {seconds} s (>15 s: killed)"


INJECT = 'x"""\nimport os\nos.makedirs("/tmp/pwned", exist_ok=True)\nprint("PWNED")\n"""\\'


def _hostile_tools() -> list[UpstreamTool]:
    def make(name: str, description: str = "d", **schema: Any) -> UpstreamTool:
        return UpstreamTool("hostile", name, description, {"type": "object", **schema}, None)

    return [
        make("doc", INJECT + "\u2028\u2029\x85\r\x0c\x00\x1b[2J\ud800 end \\"),
        make(
            "params",
            properties={
                "q": {
                    "description": INJECT,
                    "default": INJECT,
                    "enum": ['"); print("PWNED"); ("', "'''", INJECT],
                },
                "r": {"const": '\\"\'\'\'"""'},
            },
        ),
        make("code_param", properties={'a=print("PWNED")': {"type": "string"}}),
        make("unicode_param", properties={"\uff41": {"type": "string"}}),
        make("../../escape"),
        make("a/b"),
        make(".."),
        make("__init__"),
        make("x\ny"),
        make("\uff45scape"),
        make("Doc"),
    ]


@pytest.mark.anyio
async def test_hostile_tool_names_and_descriptions_stay_data(tmp_path: Path) -> None:
    class Lister:
        def servers(self) -> list[str]:
            return ["hostile"]

        async def list_tools(self, server: str) -> list[UpstreamTool]:
            return _hostile_tools()

    out = tmp_path / "gen"
    report = await generate(Lister(), out)
    made = report.tools["hostile"]
    assert len(made) == 2 and {t.lower() for t in made} == {"doc", "params"}, report  # Doc or doc: one
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert all(f.startswith("gen") for f in files), files
    for path in (out / "hostile").glob("*.py"):
        tree = ast.parse(path.read_text())
        if path.name != "__init__.py":
            kinds = [type(node) for node in tree.body]
            assert kinds == [ast.Expr, ast.ImportFrom, ast.ImportFrom, ast.Assign, ast.FunctionDef], path
            assert not [n for n in ast.walk(tree.body[-1]) if isinstance(n, ast.Call) and
                        getattr(n.func, "id", "") != "call_tool" and
                        getattr(n.func, "id", "") != "isinstance" and
                        getattr(n.func, "id", "") != "list"], path  # fmt: skip
    probe = (
        "import sys, types\n"
        "stub = types.ModuleType('sgw_tools')\nstub.call_tool = lambda s, t, a: a\nsys.modules['sgw_tools'] = stub\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "import gen.hostile as h\nhelp(getattr(h, 'doc', None) or h.Doc)\nhelp(h.params)\nprint(h.params(q='\"); print(\"PWNED\"); (\"'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, check=True
    )
    assert "PWNED" not in done.stdout.splitlines() and not Path("/tmp/pwned").exists(), done.stdout[-2000:]


# -- the policy's path constraint ---------------------------------------------------------------------


def _path_engine() -> PolicyEngine:
    policy = yaml.safe_load(default_policy_path().read_text())
    policy["profiles"]["coder"] = {
        "extends": "default",
        "code_mode": {
            "allow": [
                {
                    "server": "files",
                    "tools": ["read"],
                    "arguments": {"path": {"prefix": "/public/", "required": True}},
                }
            ]
        },
    }
    return PolicyEngine(load_policy_text(yaml.safe_dump(policy)))


ESCAPES = [
    "/public", "/public/", "/public//", "/public/../etc/passwd", "/public/./../etc", "/public/a/../../etc",
    "/publicx/a", "/PUBLIC/a", "public/a", "//public/a", "/public//a", "/public/a/", "/public/.",
    "/public/..", "/public/...", "/public/.. ", "/public/ ..", "/public/. /x", "/public/a%2f..%2f..%2fetc",
    "/public/%2e%2e/etc", "/public/a\\..\\..\\etc", "/public/\u2025/etc", "/public/\uff0e\uff0e/etc",
    "/public\uff0fa", "/public/a\u0000", "/public/a\n/../../etc", "/public/a\u2028", "/public/\u200b../etc",
    "/public/a\ud800", "/public/\u202e", "/public/\ue000", "\u2215public/a", "/public/" + "a" * 5000,
]  # fmt: skip


@pytest.mark.parametrize("path", ESCAPES)
def test_a_path_constraint_cannot_be_escaped(path: str) -> None:
    engine = _path_engine()
    for value in (path, [path], {"path": path}):
        arguments = {"path": value}
        decision = engine.decide_upstream(CODER, "files", "read", arguments, len(json.dumps(arguments)))
        assert isinstance(decision, Denied), (path, value)


def test_a_path_constraint_lets_canonical_paths_below_it_through() -> None:
    engine = _path_engine()
    for path in ("/public/a", "/public/a/b.txt", "/public/.hidden", "/public/caf\u00e9", "/public/a..b"):
        arguments = {"path": path}
        decision = engine.decide_upstream(CODER, "files", "read", arguments, len(json.dumps(arguments)))
        assert not isinstance(decision, Denied), path


# -- the sandbox agent's door, live -------------------------------------------------------------------


def _start(agent: LiveAgent, code: str, python: str, *, tools: bool, deadline_s: float = 30) -> int:
    run_id, agent.next_id = agent.next_id, agent.next_id + 1
    agent.send(
        {
            "op": "run",
            "id": run_id,
            "argv": [python, "-c", code],
            "env": ["PATH=/usr/bin:/bin"],
            "deadline_s": deadline_s,
            "max_output": 1 << 20,
            "tools": tools,
        }
    )
    return run_id


def _frames_until_exit(agent: LiveAgent, run_id: int, timeout: float = 30) -> list[tuple[int, int, bytes]]:
    frames = []
    deadline = time.monotonic() + timeout
    while True:
        frame = agent.frame(max(0.1, deadline - time.monotonic()))
        frames.append(frame)
        if frame[0] == EXIT and frame[1] == run_id:
            return frames


#: Left behind by a run: for 8 s, calls through every door it finds (its own, those in /proc/net/unix).
LEFT_BEHIND = r"""
import os, subprocess, sys
script = '''
import json, os, re, socket, time
time.sleep(0.5)
deadline = time.time() + 8
while time.time() < deadline:
    names = set(re.findall(r"@(sgw-tools-[0-9a-f]{32})", open("/proc/net/unix").read()))
    for name in names:
        try:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(2)
            s.connect("\\0" + name)
            s.sendall(b'{"id":1,"server":"calc","tool":"add","arguments":{"stolen":true}}\\n')
            s.recv(100)
            s.close()
        except OSError:
            pass
    time.sleep(0.2)
'''
subprocess.Popen([sys.executable, "-c", script], start_new_session=True, stdin=subprocess.DEVNULL,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True)
print("left", flush=True)
"""


def test_a_process_left_behind_cannot_call_through_a_later_runs_door(
    live: LiveAgent,  # noqa: F811
    interpreter: str,  # noqa: F811
) -> None:
    """A run's door is an abstract socket: any process of the sandbox finds its name in /proc/net/unix
    and may connect. Only the run's own processes should be served."""
    first = _start(live, LEFT_BEHIND, interpreter, tools=False)
    _frames_until_exit(live, first)
    later = _start(live, "import time; time.sleep(4); print('done')", interpreter, tools=True)
    frames = _frames_until_exit(live, later)
    stolen = [p for k, rid, p in frames if k in (TOOL, TOOL_PART) and rid == later]
    for payload in stolen:  # answer, so that the process left behind is not stuck
        live.send({"op": "tool_result", "id": later, "conn": int(payload.split(b" ")[0]), "line": "{}"})
    assert b"".join(p for k, rid, p in frames if k == OUT and rid == later) == b"done\n"
    assert stolen == [], (
        f"calls from a process of an earlier run reached the gateway as this run's: {stolen[:2]}"
    )


ACCEPT_FLOOD = r"""
import os, socket, threading, time
name = os.environ["SGW_TOOLS_SOCKET"]
stop = time.monotonic() + 6
def hammer():
    while time.monotonic() < stop:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect("\0" + name)
        except OSError:
            pass
        s.close()
threads = [threading.Thread(target=hammer) for _ in range(16)]
[t.start() for t in threads]
print("flooding", flush=True)
[t.join() for t in threads]
"""


def test_a_connection_flood_does_not_stop_the_agent_serving_the_gateway(
    live: LiveAgent,  # noqa: F811
    interpreter: str,  # noqa: F811
) -> None:
    """The agent accepts in a loop until no connection waits: code connecting as fast as it can must
    not keep it from reading the gateway's requests (past 10 s the gateway counts the channel broken)."""
    flood = _start(live, ACCEPT_FLOOD, interpreter, tools=True)
    while live.frame()[0] != OUT:
        pass
    worst = 0.0
    for _ in range(8):
        started = time.monotonic()
        other = _start(live, "print('pong')", interpreter, tools=False)
        frames = _frames_until_exit(live, other, timeout=20)
        assert b"pong" in b"".join(p for k, rid, p in frames if k == OUT and rid == other)
        worst = max(worst, time.monotonic() - started)
    _frames_until_exit(live, flood)
    assert worst < 2.0, f"a command took {worst:.1f} s to run while code flooded the door"


HOARDER = r"""
import json, os, socket, threading, time
name = os.environ["SGW_TOOLS_SOCKET"]
conns = []
for i in range(16):
    s = socket.socket(socket.AF_UNIX)
    s.connect("\0" + name)
    s.setblocking(False)
    conns.append(s)
call = json.dumps({"id": 1, "server": "s", "tool": "t", "arguments": {}}).encode() + b"\n"
for s in conns[:8]:
    s.send(call)  # MAX_IN_FLIGHT calls the gateway (this test) never answers
time.sleep(0.5)
junk = (call * 20000)[: 1 << 20]
partial = b'{"id":1,"pad":"' + b"x" * ((1 << 20) - 20)
sent = 0
stop = time.monotonic() + 4
while time.monotonic() < stop:
    for s in conns[8:]:
        try:
            sent += s.send(junk)
        except BlockingIOError:
            pass
    for s in conns[:8]:
        try:
            sent += s.send(partial)
        except BlockingIOError:
            pass
    time.sleep(0.01)
print("sent", sent, flush=True)
time.sleep(3)
"""


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_calls_the_gateway_does_not_take_yet_cost_the_agent_bounded_memory(
    live: LiveAgent,  # noqa: F811
    interpreter: str,  # noqa: F811
) -> None:
    """16 connections: 8 calls wait for the gateway, then every connection pushes lines and partial
    lines as fast as the agent takes them. The agent reads no more while MAX_IN_FLIGHT calls wait."""
    before = _rss_kib(live.proc.pid)
    run_id = _start(live, HOARDER, interpreter, tools=True)
    peak, sent = before, b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            kind, rid, payload = live.frame(timeout=0.2)
        except TimeoutError:
            kind, rid, payload = 0, 0, b""
        peak = max(peak, _rss_kib(live.proc.pid))
        if kind == OUT and rid == run_id:
            sent += payload
        if kind == EXIT and rid == run_id:
            break
    grown_mib = (peak - before) / 1024
    assert sent.startswith(b"sent"), sent
    assert grown_mib < 40, f"the agent grew by {grown_mib:.0f} MiB ({sent.decode().strip()} bytes pushed)"
