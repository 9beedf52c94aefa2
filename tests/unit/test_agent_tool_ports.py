"""Code mode in a live sandbox agent (under a dedicated uid, as test_sandbox_agent runs it): a run's
private door to the gateway's tools, its bounds, and the in-sandbox library `sgw_tools`.

The test plays the gateway: it reads the agent's TOOL frames and answers with `tool_result`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.agent.protocol import ERR, EXIT, OUT, TOOL, TOOL_PART
from gateway.agent.tool_ports import MAX_IN_FLIGHT
from tests.support.live_agent import LiveAgent, interpreter, launcher, live  # noqa: F401 - fixtures


def _start(agent: LiveAgent, code: str, python: str, pylib: Path, *, tools: bool = True) -> int:
    """Start `code` under the agent's python, with the in-sandbox library on its path; its run id."""
    run_id, agent.next_id = agent.next_id, agent.next_id + 1
    agent.send(
        {
            "op": "run",
            "id": run_id,
            "argv": [python, "-c", code],
            "env": ["PATH=/usr/bin:/bin", f"PYTHONPATH={pylib}"],
            "deadline_s": 30,
            "max_output": 1 << 20,
            "tools": tools,
        }
    )
    return run_id


def _collect(agent: LiveAgent, until: set[int], timeout: float = 20) -> list[tuple[int, int, bytes]]:
    """Frames up to the first of a kind in `until` (included)."""
    frames = []
    while True:
        frame = agent.frame(timeout)
        frames.append(frame)
        if frame[0] in until:
            return frames


def _answer(agent: LiveAgent, run_id: int, conn: int, body: dict[str, Any]) -> None:
    agent.send({"op": "tool_result", "id": run_id, "conn": conn, "line": json.dumps(body)})


def _out(frames: list[tuple[int, int, bytes]]) -> str:
    return b"".join(p for k, _, p in frames if k == OUT).decode()


@pytest.fixture
def pylib(launcher: Path) -> Path:  # noqa: F811 - the imported fixture
    return launcher.parent / "pylib"


CALLER = """
from sgw_tools import call_tool, ToolError
print("value:", call_tool("notes", "search", {"q": "x" * SIZE}), flush=True)
try:
    call_tool("notes", "forbidden", {})
except ToolError as exc:
    print("refused:", exc.code, exc.message, flush=True)
"""


def test_a_run_calls_a_tool_through_the_agent_and_gets_the_answer(
    live: LiveAgent,  # noqa: F811
    interpreter: str,  # noqa: F811
    pylib: Path,
) -> None:
    run_id = _start(live, CALLER.replace("SIZE", "1"), interpreter, pylib)
    frames = _collect(live, {TOOL})
    kind, rid, payload = frames[-1]
    conn, _, line = payload.partition(b" ")
    assert (kind, rid, conn) == (TOOL, run_id, b"1")
    assert json.loads(line) == {"id": 1, "server": "notes", "tool": "search", "arguments": {"q": "x"}}
    _answer(live, run_id, 1, {"id": 1, "result": {"hits": 3}})
    frames = _collect(live, {TOOL})
    assert json.loads(frames[-1][2].partition(b" ")[2])["tool"] == "forbidden"
    _answer(
        live, run_id, 1, {"id": 2, "error": {"code": "upstream-not-allowed", "message": "not on the list"}}
    )
    frames += _collect(live, {EXIT})
    assert _out(frames) == "value: {'hits': 3}\nrefused: upstream-not-allowed not on the list\n"
    assert json.loads(frames[-1][2])["exit_code"] == 0


def test_a_call_larger_than_a_frame_arrives_whole(live: LiveAgent, interpreter: str, pylib: Path) -> None:  # noqa: F811
    run_id = _start(live, CALLER.replace("SIZE", "300000"), interpreter, pylib)
    frames = _collect(live, {TOOL})
    parts = [p for k, _, p in frames if k in (TOOL_PART, TOOL)]
    assert len(parts) >= 5 and all(k == TOOL_PART for k, _, _ in frames[-len(parts) : -1])
    request = json.loads(b"".join(parts).partition(b" ")[2])
    assert request["arguments"]["q"] == "x" * 300_000
    _answer(live, run_id, 1, {"id": 1, "result": "ok"})
    _answer(live, run_id, 1, {"id": 2, "result": "late"})
    frames = _collect(live, {EXIT}, timeout=30)
    assert "value: ok" in _out(frames)


def test_a_run_without_tools_has_no_door(live: LiveAgent, interpreter: str, pylib: Path) -> None:  # noqa: F811
    code = (
        "import os\nfrom sgw_tools import call_tool, ToolError\nprint(os.environ.get('SGW_TOOLS_SOCKET'))\n"
    )
    code += "try:\n    call_tool('a', 'b')\nexcept ToolError as exc:\n    print(exc.code)\n"
    _start(live, code, interpreter, pylib, tools=False)
    frames = _collect(live, {EXIT})
    assert _out(frames) == "None\ncode-mode-unavailable\n"


def test_the_door_closes_when_its_run_ends(live: LiveAgent, interpreter: str, pylib: Path) -> None:  # noqa: F811
    _start(live, "import os; print(os.environ['SGW_TOOLS_SOCKET'])", interpreter, pylib)
    name = _out(_collect(live, {EXIT})).strip()
    assert name.startswith("sgw-tools-") and len(name) == len("sgw-tools-") + 32
    probe = "import socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n"
    probe += f"    s.connect('\\0{name}')\n    print('open')\n"
    probe += "except OSError as exc:\n    print('closed', exc.errno)\n"
    _start(live, probe, interpreter, pylib)
    assert _out(_collect(live, {EXIT})).startswith("closed")


FLOOD = """
import json, os, socket, sys, time
name = os.environ["SGW_TOOLS_SOCKET"]
conns = []
for i in range(20):
    s = socket.socket(socket.AF_UNIX)
    s.connect("\\0" + name)
    try:  # beyond its limit the agent closes a connection at once, maybe before this call is sent
        s.sendall(json.dumps({"id": i, "server": "s", "tool": "t", "arguments": {}}).encode() + b"\\n")
    except OSError:
        pass
    conns.append(s)
big = socket.socket(socket.AF_UNIX)
big.connect("\\0" + name)
print("sent", flush=True)
time.sleep(60)
"""


def test_calls_in_flight_and_connections_are_bounded(live: LiveAgent, interpreter: str, pylib: Path) -> None:  # noqa: F811
    """Twenty connections each send a call: 16 connections are kept (the rest closed at once), and
    only MAX_IN_FLIGHT calls reach the gateway until it answers some."""
    run_id = _start(live, FLOOD, interpreter, pylib)
    seen = [p for k, _, p in _collect_tools(live, MAX_IN_FLIGHT, timeout=20)]
    quiet_until = time.monotonic() + 1.0
    while (left := quiet_until - time.monotonic()) > 0:  # no other call while MAX_IN_FLIGHT wait
        try:
            assert live.frame(timeout=left)[0] != TOOL
        except TimeoutError:
            break
    first_conn = int(seen[0].partition(b" ")[0])
    _answer(live, run_id, first_conn, {"id": 0, "result": None})
    (ninth,) = [p for k, _, p in _collect_tools(live, 1, timeout=10)]
    conns = {int(p.partition(b" ")[0]) for p in [*seen, ninth]}
    assert len(conns) == MAX_IN_FLIGHT + 1 and max(conns) <= 16, "the 17th connection on was closed"
    live.send({"op": "kill", "id": run_id})
    _collect(live, {EXIT})


def _collect_tools(agent: LiveAgent, count: int, timeout: float) -> list[tuple[int, int, bytes]]:
    """The next `count` TOOL frames (other frames skipped)."""
    found: list[tuple[int, int, bytes]] = []
    while len(found) < count:
        frame = agent.frame(timeout)
        if frame[0] == TOOL:
            found.append(frame)
    return found


def test_an_oversized_call_is_refused_and_its_connection_closed(
    live: LiveAgent,  # noqa: F811
    interpreter: str,  # noqa: F811
    pylib: Path,
) -> None:
    code = (
        "import os, socket\ns = socket.socket(socket.AF_UNIX)\n"
        "s.connect('\\0' + os.environ['SGW_TOOLS_SOCKET'])\n"
        "try:\n    s.sendall(b'x' * (3 << 20))\nexcept OSError:\n    pass\n"
        "print(s.makefile('rb').readline().decode().strip())\n"
    )
    _start(live, code, interpreter, pylib)
    frames = _collect(live, {EXIT}, timeout=30)
    assert not [f for f in frames if f[0] in (TOOL, TOOL_PART)], "nothing of it reached the gateway"
    shown = _out(frames) + b"".join(p for k, _, p in frames if k == ERR).decode()
    assert '"code":"request-too-large"' in shown
