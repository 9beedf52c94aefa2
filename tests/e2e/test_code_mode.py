"""Code mode end to end: code in a sandbox imports generated tool modules and calls two real upstream
MCP servers (one over streamable HTTP with a bearer token, one over stdio) through the gateway,
under the policy, with every call audited; the sandbox still has no network.

One gateway for the module: `coder` (profile with code mode), `plain` (the default profile, without).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from tests.e2e.code_mode_calls import code_mode_gateway, code_mode_policy, run_python, upstream_calls
from tests.e2e.conftest import mcp_client
from tests.support import audit_events, settled_events
from tests.support.gateway_process import Gateway
from tests.support.upstreams import RunningUpstreams, running_upstreams

if TYPE_CHECKING:
    from gateway.backend.docker_engine import DockerBackend

pytestmark = pytest.mark.anyio

CODE_MODE = {
    "allow": [
        {
            "server": "notes",
            "tools": ["search_notes", "read_note", "slow", "leak_secret"],
            "arguments": {"query": {"max_length": 40}},
        },
        {"server": "calc", "tools": ["*"]},
    ],
    "calls_per_execution": 20,
    "call_timeout_s": 20,
}


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, backend: DockerBackend
) -> Iterator[tuple[Gateway, RunningUpstreams, Path]]:
    work = tmp_path_factory.mktemp("code-mode")
    principals = {"coder": "coder", "plain": "default"}
    with running_upstreams(work / "upstreams") as upstreams:
        policy = code_mode_policy("coder", CODE_MODE)
        with code_mode_gateway(work, policy, upstreams.file, principals, backend) as (gateway, tools):
            yield gateway, upstreams, tools


@pytest.fixture(scope="module")
def gateway(setup: tuple[Gateway, RunningUpstreams, Path]) -> Gateway:
    return setup[0]


def _finished_withupstream_calls(gateway: Gateway) -> list[dict[str, Any]]:
    return [e["upstream"] for e in settled_events(gateway.audit_log, "exec.finish") if e.get("upstream")]


def test_the_gateway_writes_a_module_per_tool_at_start(setup: tuple[Gateway, RunningUpstreams, Path]) -> None:
    gateway, _, tools = setup
    for module in ("notes/search_notes.py", "notes/read_note.py", "calc/stats.py", "calc/add.py"):
        assert (tools / module).is_file(), module
    index = json.loads((tools / "index.json").read_text())
    assert "notes" in json.dumps(index) and "calc" in json.dumps(index)
    generated = audit_events(gateway.audit_log, "tools.generate")
    assert generated and generated[0]["detail"]["trigger"] == "start"
    assert generated[0]["detail"]["unavailable"] == []


async def test_the_agent_discovers_the_tools_through_list_tools(gateway: Gateway) -> None:
    async with mcp_client(gateway.url, gateway.tokens["coder"]) as client:
        listing = await client.call_tool("list_tools", {})
    assert listing.structured_content is not None
    paths = {e["path"]: e["summary"] for e in listing.structured_content["entries"]}
    assert "/tools/notes/search_notes.py" in paths and "/tools/INDEX.md" in paths
    assert paths["/tools/calc/stats.py"], "each module's summary is the tool's description"


CHAIN = """
from tools.notes import search_notes, read_note
from tools.calc import stats, add

hits = search_notes(query="gateway")
lengths = []
for hit in hits:
    note = read_note(id=hit["id"])
    lengths.append(len(note["body"]))
total = 0
for n in lengths:
    total = add(a=total, b=n)
summary = stats(values=lengths)
print(f"{len(hits)} notes, {int(total)} characters, longest {int(summary['max'])}")
"""


async def test_code_chains_two_servers_tools_and_prints_a_summary(gateway: Gateway) -> None:
    result = await run_python(gateway, "coder", CHAIN)
    assert result["exit_code"] == 0, result
    assert result["stdout"] == "2 notes, 60 characters, longest 31\n", result
    made = upstream_calls(gateway, status="ok", principal="coder")
    assert [(e["server"], e["tool"]) for e in made] == [
        ("notes", "search_notes"),
        ("notes", "read_note"),
        ("notes", "read_note"),
        ("calc", "add"),
        ("calc", "add"),
        ("calc", "stats"),
    ]
    exec_start = next(
        e for e in audit_events(gateway.audit_log, "exec.start") if e["actor"]["principal"] == "coder"
    )
    for event in made:
        assert event["request_id"] == exec_start["request_id"], "each call belongs to its execution"
        assert "hmac_sha256" in event["arguments"] and "gateway" not in json.dumps(event["arguments"])
        assert event["result_bytes"] > 0 and event["duration_ms"] >= 0 and event["rule_id"]
    assert _finished_withupstream_calls(gateway)[-1] == {"calls": 6, "refused": {}}


async def test_a_call_the_policy_refuses_raises_in_the_code_and_is_audited(gateway: Gateway) -> None:
    code = (
        "from sgw_tools import call_tool, ToolError\n"
        "for server, tool, args in [('notes', 'fail', {}), ('notes', 'search_notes', {'query': 'x' * 100}),"
        " ('notes', 'leak_secret', {})]:\n"
        "    try:\n"
        "        call_tool(server, tool, args)\n"
        "        print(tool, 'made')\n"
        "    except ToolError as exc:\n"
        "        print(tool, exc.code)\n"
    )
    result = await run_python(gateway, "coder", code)
    assert result["stdout"] == (
        "fail upstream-not-allowed\nsearch_notes argument-not-allowed\nleak_secret secret-in-result\n"
    ), result
    denied = {e["error"]: e for e in upstream_calls(gateway, status="rejected")}
    assert denied["upstream-not-allowed"]["tool"] == "fail"
    assert denied["argument-not-allowed"]["server"] == "notes"
    leaked = upstream_calls(gateway, error="secret-in-result")
    assert leaked and leaked[0]["result_bytes"] > 0, "the call was made; its result was refused"
    assert "AKIA" not in Path(gateway.audit_log).read_text(), "the secret is in no audit event"


async def test_calls_past_the_per_execution_budget_are_refused(gateway: Gateway) -> None:
    code = (
        "from tools.calc import add\nfrom sgw_tools import ToolError\nmade = refused = 0\n"
        "for i in range(25):\n"
        "    try:\n        add(a=i, b=1)\n        made += 1\n"
        "    except ToolError as exc:\n        assert exc.code == 'upstream-budget-exhausted', exc\n"
        "        refused += 1\n"
        "print(made, refused)\n"
    )
    result = await run_python(gateway, "coder", code)
    assert result["stdout"] == "20 5\n", result
    assert _finished_withupstream_calls(gateway)[-1] == {
        "calls": 20,
        "refused": {"upstream-budget-exhausted": 5},
    }
    budget = upstream_calls(gateway, error="upstream-budget-exhausted")
    assert len(budget) == 1, "the first refusal of a kind is recorded, the rest counted"


async def test_the_sandbox_still_has_no_network(
    setup: tuple[Gateway, RunningUpstreams, Path],
) -> None:
    gateway, upstreams, _ = setup
    notes = urlsplit(upstreams.notes.url)
    code = (
        "import socket\nfrom tools.calc import add\n"
        f"print('tool', add(a=1, b=2))\n"
        "try:\n"
        f"    socket.create_connection(({notes.hostname!r}, {notes.port}), timeout=3)\n"
        "    print('connected')\n"
        "except OSError as exc:\n"
        "    print('no network', exc.errno)\n"
        "print(sorted(n for n in __import__('os').listdir('/sys/class/net')))\n"
    )
    result = await run_python(gateway, "coder", code)
    lines = result["stdout"].splitlines()
    assert lines[0] == "tool 3.0" and lines[1].startswith("no network"), result
    assert lines[2] == "['lo']", "only loopback: the tools come through the agent, not a network"


async def test_a_profile_without_code_mode_has_no_tool_channel(gateway: Gateway) -> None:
    code = "from tools.calc import add\nfrom sgw_tools import ToolError\ntry:\n    add(a=1, b=2)\n"
    code += "except ToolError as exc:\n    print(exc.code)\n"
    result = await run_python(gateway, "plain", code)
    assert result["stdout"] == "code-mode-unavailable\n", result
    assert not upstream_calls(gateway, principal="plain")


async def test_an_upstream_call_is_cut_when_the_execution_times_out(gateway: Gateway) -> None:
    code = "from tools.notes import slow\nprint('start', flush=True)\nslow(seconds=15)\nprint('never')\n"
    result = await run_python(gateway, "coder", code, timeout_s=2)
    assert result["timed_out"] is True and "never" not in result["stdout"], result
    cut = upstream_calls(gateway, tool="slow")
    assert cut and cut[-1]["status"] == "error" and cut[-1]["error"] == "execution-ended", cut


async def test_the_upstreams_credentials_never_enter_the_sandbox(
    setup: tuple[Gateway, RunningUpstreams, Path],
) -> None:
    """The notes server's bearer token is read by the gateway only: not in the code's environment,
    not in any file the sandbox can read, not in the generated modules."""
    gateway, upstreams, tools = setup
    secret = upstreams.notes.token_file.read_text().strip()
    code = (
        "import os, subprocess\nfrom tools.notes import read_note\nread_note(id='n1')\n"
        "print(sorted(os.environ))\n"
        f"where = ['/tools', '/workspace', '/tmp', '/opt', '/etc']\n"
        f"found = subprocess.run(['grep', '-rlsF', {secret!r}, *where], capture_output=True, text=True)\n"
        "print('found:', found.stdout.split())\n"
    )
    result = await run_python(gateway, "coder", code)
    assert result["exit_code"] == 0, result
    assert secret not in result["stdout"] and result["stdout"].splitlines()[-1] == "found: []", result
    names = result["stdout"].splitlines()[0]
    assert "SGW_TOOLS_SOCKET" in names and "TOKEN" not in names and "NOTES" not in names
    assert all(secret not in p.read_text() for p in tools.rglob("*") if p.is_file())
