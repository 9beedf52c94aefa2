"""The MCP tools through a real MCP client session held in memory (the SDK's in-process connection,
JSON-RPC framed), on the in-memory backend. The caller is put on each request the way the HTTP
front door does it: the authenticated Principal in the request's scope."""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer

from audit import MemorySink
from gateway.auth.tokens import TokenStore
from gateway.calls.service import ExecutionService
from gateway.http.mcp_server import AuditedMCPServer
from gateway.http.middleware.authentication import PRINCIPAL_SCOPE_KEY
from gateway.http.tools import register_tools
from gateway.sandboxes.broker import Broker
from policy import Principal
from policy.engine import PolicyEngine
from tests.unit.broker_support import events, make_policy
from tests.unit.fake_backend import FakeBackend, Reply

pytestmark = pytest.mark.anyio
EXEC_FILES = frozenset({"sandbox:exec", "sandbox:files"})
ALICE = Principal("alice", tenant="acme", scopes=EXEC_FILES)

Connect = Callable[[Principal | None], AbstractAsyncContextManager[Client]]


@dataclasses.dataclass
class _Request:
    """What the front door leaves on an authenticated request: the principal in the ASGI scope."""

    scope: dict[str, Any]
    client: Any
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Address:
    host: str


def _server(service: ExecutionService, caller: list[Principal | None]) -> MCPServer[Any]:
    mcp: MCPServer[Any] = AuditedMCPServer("sandbox-gateway", service=service)
    register_tools(mcp, service)

    async def authenticated(ctx: Any, call_next: Any) -> Any:
        scope = {PRINCIPAL_SCOPE_KEY: caller[0]} if caller[0] is not None else {}
        return await call_next(dataclasses.replace(ctx, request=_Request(scope, _Address("192.0.2.7"))))

    mcp.middleware.append(authenticated)
    return mcp


@pytest.fixture
def service(broker: Broker) -> ExecutionService:
    return ExecutionService(PolicyEngine(make_policy()), broker, broker.audit)


@pytest.fixture
def connect(service: ExecutionService) -> Connect:
    caller: list[Principal | None] = [None]
    mcp = _server(service, caller)

    @asynccontextmanager
    async def session(principal: Principal | None) -> AsyncIterator[Client]:
        caller[0] = principal
        async with Client(mcp, mode="legacy") as client:
            yield client

    return session


def text_of(result: Any) -> str:
    return str(result.content[0].text)


def error_of(result: Any) -> str:
    """A tool error's text as the gateway wrote it (`code: message`), without the SDK's prefix."""
    assert result.is_error, result
    return re.sub(r"^Error executing tool [a-z_]+: ", "", text_of(result))


async def test_the_tools_are_listed_with_their_output_schemas(connect: Connect) -> None:
    async with connect(ALICE) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert {"execute_bash", "execute_python", "write_file", "read_file", "reset_sandbox"} <= set(tools)
    schema = tools["execute_bash"].output_schema or {}
    assert {
        "exit_code",
        "stdout",
        "stderr",
        "duration_ms",
        "timed_out",
        "truncated",
        "sandbox_replaced",
    } <= set(schema["properties"])
    assert tools["execute_bash"].input_schema["required"] == ["command"]


async def test_execute_bash_and_python_return_structured_results(
    connect: Connect, fake: FakeBackend, sink: MemorySink
) -> None:
    def handler(command: Any) -> Reply:
        if command.kind == "python":
            return Reply(stdout=b"[1, 2]\n")
        return Reply(exit_code=3, stdout=b"out\n", stderr=b"err\n")

    fake.handler = handler
    async with connect(ALICE) as client:
        bash = await client.call_tool("execute_bash", {"command": "echo out; echo err >&2; exit 3"})
        python = await client.call_tool("execute_python", {"code": "print([1, 2])", "timeout_s": 5})
    assert not bash.is_error and bash.structured_content is not None
    assert {
        k: bash.structured_content[k] for k in ("exit_code", "stdout", "stderr", "timed_out", "truncated")
    } == {
        "exit_code": 3,
        "stdout": "out\n",
        "stderr": "err\n",
        "timed_out": False,
        "truncated": False,
    }
    assert python.structured_content is not None and python.structured_content["stdout"] == "[1, 2]\n"
    assert fake.ran("python")[0].code == "print([1, 2])" and fake.ran("python")[0].timeout_s == 5
    finish = events(sink, "exec.finish")[0]
    assert finish["actor"]["principal"] == "alice" and finish["actor"]["source_ip"] == "192.0.2.7"


async def test_a_call_without_a_principal_is_refused_and_recorded(
    connect: Connect, fake: FakeBackend, sink: MemorySink
) -> None:
    async with connect(None) as client:
        result = await client.call_tool("execute_bash", {"command": "true"})
    assert error_of(result).startswith("unauthenticated: ")
    assert fake.calls == []
    (rejected,) = events(sink, "tool.rejected")
    assert rejected["outcome"]["error"] == "unauthenticated" and rejected["tool"] == "execute_bash"


@pytest.mark.parametrize(
    ("tool", "arguments", "needs"),
    [
        ("write_file", {"path": "f", "content": "x"}, "sandbox:files"),
        ("admin_list_sandboxes", {}, "sandbox:admin"),
        ("admin_policy", {"principal": "ops", "tool": "execute_bash"}, "sandbox:admin"),
    ],
)
async def test_a_tool_needs_its_scope(
    connect: Connect, fake: FakeBackend, sink: MemorySink, *, tool: str, arguments: dict[str, Any], needs: str
) -> None:
    # tenant-admin may call every tool by policy; the credential's scopes still decide.
    caller = Principal("ops", tenant="acme", profile="tenant-admin", scopes=frozenset({"sandbox:exec"}))
    async with connect(caller) as client:
        result = await client.call_tool(tool, arguments)
    assert error_of(result).startswith("insufficient-scope: ") and needs in error_of(result)
    assert fake.calls == []
    (rejected,) = events(sink, "tool.rejected")
    assert rejected["outcome"]["error"] == "insufficient-scope" and rejected["detail"]["scope"] == needs


@pytest.mark.parametrize(
    ("principal", "arguments", "code"),
    [
        (Principal("s", profile="strict", scopes=EXEC_FILES), {"command": "true"}, "tool-not-allowed"),
        (ALICE, {"command": "true", "timeout_s": 3600}, "timeout-above-max"),
        (ALICE, {"command": "x" * 300_000}, "input-too-large"),
        (ALICE, {"command": "   "}, "invalid-argument"),
    ],
)
async def test_a_refused_call_is_a_tool_error_with_its_code(
    connect: Connect, fake: FakeBackend, principal: Principal, arguments: dict[str, Any], code: str
) -> None:
    async with connect(principal) as client:
        result = await client.call_tool("execute_bash", arguments)
        after = await client.call_tool("execute_python", {"code": "print('still serving')"})
    assert error_of(result).startswith(f"{code}: ")
    assert fake.ran("bash") == []
    if principal is ALICE:
        assert after.structured_content is not None and after.structured_content["exit_code"] == 0


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        pytest.param({"command": 123}, "command", id="number"),
        pytest.param({"command": ["ls"]}, "command", id="list"),
        pytest.param({}, "command", id="missing"),
        pytest.param({"command": "true", "timeout_s": "soon"}, "timeout_s", id="timeout"),
    ],
)
async def test_arguments_failing_the_schema_are_recorded_by_name_never_by_value(
    connect: Connect, fake: FakeBackend, sink: MemorySink, arguments: dict[str, Any], field: str
) -> None:
    async with connect(ALICE) as client:
        result = await client.call_tool("execute_bash", arguments)
    assert result.is_error and field in text_of(result)
    assert "Traceback" not in text_of(result)
    assert fake.calls == []
    (rejected,) = events(sink, "tool.rejected")
    assert rejected["outcome"]["error"] == "invalid-argument"
    assert field in {entry["field"] for entry in rejected["detail"]["invalid"]}
    assert "soon" not in str(sink.lines) and "123" not in str(rejected["detail"])


async def test_an_unknown_tool_is_recorded(connect: Connect, sink: MemorySink) -> None:
    async with connect(ALICE) as client:
        result = await client.call_tool("execute_ruby", {"code": "puts 1"})
    assert result.is_error
    (rejected,) = events(sink, "tool.rejected")
    assert rejected["outcome"]["error"] == "unknown-tool" and rejected["tool"] == "execute_ruby"


async def test_engine_failures_and_unexpected_errors_reach_the_client_without_internals(
    connect: Connect, fake: FakeBackend
) -> None:
    from gateway.errors import EngineError

    async with connect(ALICE) as client:
        fake.fail("create", EngineError("cannot reach the Docker engine; is the socket proxy running?"))
        engine_down = await client.call_tool("execute_bash", {"command": "true"})
        fake.fail("image_identity", RuntimeError("/srv/secret/path exploded"))
        unexpected = await client.call_tool("execute_bash", {"command": "true"})
        fine = await client.call_tool("execute_bash", {"command": "echo fine"})
    assert error_of(engine_down).startswith("engine-unavailable: ") and "socket proxy" in error_of(
        engine_down
    )
    assert error_of(unexpected).startswith("internal-error: ")
    assert "/srv/secret" not in text_of(unexpected) and "Traceback" not in text_of(unexpected)
    assert fine.structured_content is not None and fine.structured_content["stdout"] == "echo fine\n"


async def test_files_round_trip_through_the_tools(connect: Connect) -> None:
    async with connect(ALICE) as client:
        written = await client.call_tool(
            "write_file", {"path": "data/x.bin", "content": "AAH/", "encoding": "base64"}
        )
        read = await client.call_tool("read_file", {"path": "/workspace/data/x.bin", "encoding": "base64"})
        listing = await client.call_tool("list_files", {"path": "data"})
        outside = await client.call_tool("read_file", {"path": "/etc/shadow"})
    assert written.structured_content == {"path": "/workspace/data/x.bin", "size": 3}
    assert read.structured_content is not None
    assert base64.b64decode(read.structured_content["content"]) == b"\x00\x01\xff"
    assert listing.structured_content == {
        "path": "/workspace/data",
        "entries": [{"name": "x.bin", "type": "file", "size": 3}],
    }
    assert error_of(outside).startswith("path-outside-workspace: ")


async def test_reset_info_and_a_replaced_sandbox_as_the_client_sees_them(
    connect: Connect, broker: Broker, fake: FakeBackend
) -> None:
    async with connect(ALICE) as client:
        assert (await client.call_tool("reset_sandbox", {})).structured_content == {"reset": False}
        await client.call_tool("execute_bash", {"command": "true"})
        info = await client.call_tool("sandbox_info", {})
        sandbox = broker.sandbox_of(ALICE)
        assert sandbox is not None
        fake.vanish(sandbox.container_id)
        replaced = await client.call_tool("execute_bash", {"command": "true"})
        reset = await client.call_tool("reset_sandbox", {})
    assert info.structured_content is not None
    assert info.structured_content["profile"] == "default" and info.structured_content["tenant"] == "acme"
    assert info.structured_content["sandbox"]["container_id"] == sandbox.container_id[:12]
    assert replaced.structured_content is not None and replaced.structured_content["sandbox_replaced"] is True
    assert reset.structured_content == {"reset": True}
    assert broker.sandbox_of(ALICE) is None


async def test_admin_tools_work_within_the_callers_tenant(connect: Connect, broker: Broker) -> None:
    admin = Principal(
        "ops", tenant="acme", profile="tenant-admin", scopes=frozenset({"sandbox:exec", "sandbox:admin"})
    )
    async with connect(ALICE) as client:
        await client.call_tool("execute_bash", {"command": "true"})
    async with connect(Principal("alice", tenant="globex", scopes=EXEC_FILES)) as client:
        await client.call_tool("execute_bash", {"command": "true"})
    async with connect(admin) as client:
        listed = await client.call_tool("admin_list_sandboxes", {})
        removed = await client.call_tool("admin_remove_sandbox", {"principal": "alice"})
    assert listed.structured_content is not None
    assert [s["principal"] for s in listed.structured_content["sandboxes"]] == ["alice"]
    assert removed.structured_content == {"reset": True}
    assert broker.sandbox_of(ALICE) is None
    assert broker.sandbox_of(Principal("alice", tenant="globex")) is not None


async def test_admin_policy_shows_the_policy_and_explains_principals_of_the_callers_tenant(
    connect: Connect, service: ExecutionService, sink: MemorySink, tmp_path: Path
) -> None:
    store = TokenStore(tmp_path / "tokens.jsonl")
    store.create("dana", profile="data-science", tenant="acme")
    store.create("bob", profile="default", tenant="globex")
    service.principals = store
    admin = Principal(
        "ops", tenant="acme", profile="tenant-admin", scopes=frozenset({"sandbox:exec", "sandbox:admin"})
    )
    async with connect(admin) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        overview = await client.call_tool("admin_policy", {})
        dana = await client.call_tool("admin_policy", {"principal": "dana", "tool": "execute_python"})
        other_tenant = await client.call_tool("admin_policy", {"principal": "bob", "tool": "execute_bash"})
        half = await client.call_tool("admin_policy", {"principal": "dana"})
    assert {"tenant", "policy_digest", "profiles", "decision"} <= set(
        (tools["admin_policy"].output_schema or {})["properties"]
    )
    assert overview.structured_content is not None and overview.structured_content["decision"] is None
    assert overview.structured_content["policy_digest"] == service.engine.digest
    assert {p["name"] for p in overview.structured_content["profiles"]} == set(service.engine.policy.profiles)
    assert dana.structured_content is not None
    explained = dana.structured_content["decision"]
    assert explained["allowed"] and (explained["tenant"], explained["profile"]) == ("acme", "data-science")
    assert explained["effective"]["limits"]["max_timeout_s"] == 600
    assert error_of(other_tenant).startswith("invalid-argument: ") and "globex" not in error_of(other_tenant)
    assert error_of(half).startswith("invalid-argument: ")
    assert [e["outcome"]["error"] for e in events(sink, "tool.rejected")] == ["invalid-argument"] * 2
