"""A real MCP client over streamable HTTP against `sandbox-gateway serve` on the real engine."""

from __future__ import annotations

import json

import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from gateway.auth.tokens import TokenStore
from tests.e2e.conftest import ACCEPT, INIT, Gateway, mcp_client
from tests.support import audit_events, eventually, matching

pytestmark = pytest.mark.anyio


async def test_tools_are_listed_with_output_schemas(gateway: Gateway) -> None:
    async with mcp_client(gateway.url, gateway.tokens["alice"]) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert {"execute_bash", "execute_python"} <= set(tools)
    schema = tools["execute_bash"].output_schema or {}
    assert {"exit_code", "stdout", "stderr", "duration_ms", "timed_out", "truncated"} <= set(
        schema["properties"]
    )


async def test_execute_bash_and_python_return_structured_results(gateway: Gateway) -> None:
    async with mcp_client(gateway.url, gateway.tokens["alice"]) as client:
        bash = await client.call_tool("execute_bash", {"command": "echo out; echo err >&2; exit 3"})
        python = await client.call_tool("execute_python", {"code": "import json; print(json.dumps([1, 2]))"})
    assert not bash.is_error
    assert bash.structured_content is not None
    assert {
        k: bash.structured_content[k] for k in ("exit_code", "stdout", "stderr", "timed_out", "truncated")
    } == {"exit_code": 3, "stdout": "out\n", "stderr": "err\n", "timed_out": False, "truncated": False}
    assert python.structured_content is not None and python.structured_content["stdout"] == "[1, 2]\n"


async def test_two_principals_cannot_see_each_others_files(gateway: Gateway) -> None:
    async with mcp_client(gateway.url, gateway.tokens["alice"]) as alice:
        await alice.call_tool("execute_bash", {"command": "echo alice-secret > /workspace/secret.txt"})
        again = await alice.call_tool("execute_bash", {"command": "cat /workspace/secret.txt"})
        alice_uid = await alice.call_tool("execute_bash", {"command": "id -u"})
    async with mcp_client(gateway.url, gateway.tokens["bob"]) as bob:
        peek = await bob.call_tool("execute_bash", {"command": "cat /workspace/secret.txt"})
        listing = await bob.call_tool(
            "execute_python", {"code": "import os; print(os.listdir('/workspace'), os.getuid())"}
        )
    assert again.structured_content and again.structured_content["stdout"] == "alice-secret\n"
    assert peek.structured_content and "alice-secret" not in peek.structured_content["stdout"]
    assert peek.structured_content["exit_code"] == 1
    assert listing.structured_content and alice_uid.structured_content
    empty, bob_uid = listing.structured_content["stdout"].split()
    assert empty == "[]", "bob's workspace is his own, and empty"
    # Each runs as a host uid of its own, from the sandbox range.
    assert int(bob_uid) != int(alice_uid.structured_content["stdout"])
    assert {int(bob_uid), int(alice_uid.structured_content["stdout"])} <= set(range(2000000000, 2001000000))


@pytest.mark.parametrize(
    ("arguments", "needle"),
    [
        pytest.param({"command": ""}, "invalid-argument", id="empty-command"),
        pytest.param({"command": 123}, "valid string", id="non-string-command"),
        pytest.param({"command": ["ls"]}, "valid string", id="list-command"),
        pytest.param({}, "command", id="missing-command"),
        pytest.param({"command": "true", "timeout_s": "soon"}, "timeout_s", id="non-numeric-timeout"),
        pytest.param({"command": "true", "timeout_s": 3600}, "timeout-above-max", id="timeout-above-max"),
        pytest.param({"command": "x" * 300_000}, "input-too-large", id="oversized-command"),
    ],
)
async def test_bad_arguments_get_a_clear_tool_error(
    gateway: Gateway, arguments: dict[str, object], needle: str
) -> None:
    async with mcp_client(gateway.url, gateway.tokens["alice"]) as client:
        result = await client.call_tool("execute_bash", arguments)
        after = await client.call_tool("execute_bash", {"command": "echo still-serving"})
    assert result.is_error
    text = result.content[0].text  # type: ignore[union-attr]
    assert needle in text
    assert "Traceback" not in text and "/work" not in text
    assert after.structured_content and after.structured_content["stdout"] == "still-serving\n"


async def test_unknown_tool_is_an_error(gateway: Gateway) -> None:
    async with mcp_client(gateway.url, gateway.tokens["alice"]) as client:
        result = await client.call_tool("rm_rf_everything", {"path": "/"})
    assert result.is_error


async def test_runaway_commands_answer_and_the_sandbox_keeps_working(gateway: Gateway) -> None:
    async with mcp_client(gateway.url, gateway.tokens["alice"]) as client:
        yes = await client.call_tool("execute_bash", {"command": "yes", "timeout_s": 2})
        sleep = await client.call_tool("execute_bash", {"command": "sleep 999", "timeout_s": 2})
        suicide = await client.call_tool("execute_bash", {"command": "kill -9 $$"})
        after = await client.call_tool("execute_bash", {"command": "echo ok"})
    assert (
        yes.structured_content and yes.structured_content["timed_out"] and yes.structured_content["truncated"]
    )
    assert sleep.structured_content and sleep.structured_content["timed_out"]
    assert suicide.structured_content and suicide.structured_content["exit_code"] == 137
    assert after.structured_content and after.structured_content["stdout"] == "ok\n"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({"Authorization": "Bearer sgw_not-a-real-token"}, id="wrong"),
        pytest.param({"Authorization": "Basic YWxpY2U6cHc="}, id="wrong-scheme"),
        pytest.param({"Authorization": "Bearer"}, id="empty"),
    ],
)
def test_requests_without_a_valid_token_get_401(gateway: Gateway, headers: dict[str, str]) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    response = httpx.post(
        gateway.url, json=body, headers={**headers, "Accept": "application/json, text/event-stream"}
    )
    assert response.status_code == 401
    assert "www-authenticate" in response.headers


def test_a_5mb_body_gets_413(gateway: Gateway) -> None:
    payload = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "execute_bash", "arguments": {"command": "x" * 5_000_000}},
        }
    )
    response = httpx.post(
        gateway.url,
        content=payload,
        headers={
            "Authorization": f"Bearer {gateway.tokens['alice']}",
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
        },
    )
    assert response.status_code == 413
    assert httpx.get(f"{gateway.base}/health").status_code == 200


def test_a_foreign_host_header_is_refused(gateway: Gateway) -> None:
    response = httpx.post(
        gateway.url,
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={
            "Authorization": f"Bearer {gateway.tokens['alice']}",
            "Host": "evil.example",
            "Accept": "application/json, text/event-stream",
        },
    )
    assert response.status_code in (403, 421)


def test_health_and_ready(gateway: Gateway) -> None:
    assert httpx.get(f"{gateway.base}/health").json()["status"] == "ok"
    ready = httpx.get(f"{gateway.base}/ready")
    assert ready.status_code == 200
    checks = ready.json()
    assert {k: checks[k] for k in ("audit", "engine", "image", "ready")} == dict.fromkeys(
        ("audit", "engine", "image", "ready"), True
    )
    assert checks["docker_ops"]["saturated"] is False and checks["docker_ops"]["workers"] == 16
    assert checks["executions"] == {"running": 0}


async def test_the_audit_log_records_principal_tool_decision_and_outcome(gateway: Gateway) -> None:
    before = len(audit_events(gateway.audit_log, "exec.finish", principal="bob"))
    async with mcp_client(gateway.url, gateway.tokens["bob"]) as client:
        await client.call_tool("execute_bash", {"command": "echo audited"})
    # exec.finish (and docker.exec before it) are written off the call's path: moments later.
    eventually(lambda: len(audit_events(gateway.audit_log, "exec.finish", principal="bob")) > before)
    events = audit_events(gateway.audit_log)
    finish = matching(events, "exec.finish", principal="bob")[-1]
    decision = matching(events, "policy.decision", request_id=finish["request_id"])
    assert decision and decision[0]["decision"]["result"] == "allow"
    assert finish["tool"] == "execute_bash" and finish["outcome"]["exit_code"] == 0
    assert "duration_ms" in finish["outcome"]
    assert matching(events, "docker.exec", principal="bob")
    assert gateway.tokens["bob"] not in gateway.audit_log.read_text()


async def test_a_client_asking_for_progress_gets_the_output_so_far(gateway: Gateway) -> None:
    notes: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        notes.append((progress, total, message))

    command = "for i in 1 2 3; do echo step $i; sleep 1.3; done"
    async with mcp_client(gateway.url, gateway.tokens["alice"]) as client:
        result = await client.call_tool(
            "execute_bash", {"command": command, "timeout_s": 10}, progress_callback=on_progress
        )
        assert not result.is_error and result.structured_content["stdout"] == "step 1\nstep 2\nstep 3\n"
        quiet: list[object] = []

        async def none_expected(progress: float, total: float | None, message: str | None) -> None:
            quiet.append(message)

        await client.call_tool("execute_bash", {"command": "echo at once"}, progress_callback=none_expected)
    assert len(notes) >= 2, notes
    assert notes[0][2] is not None and notes[0][2].startswith("step 1")
    assert [n[0] for n in notes] == sorted(n[0] for n in notes) and notes[0][0] == len("step 1\n")
    assert quiet == [], "a call that ends before the first interval sends no progress"


async def test_a_call_is_answered_as_plain_json_unless_it_asks_for_progress(gateway: Gateway) -> None:
    kinds: list[str] = []

    async def record(response: httpx.Response) -> None:
        if response.request.method == "POST":
            kinds.append(response.headers.get("content-type", "").split(";")[0])

    notes: list[str | None] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        notes.append(message)

    http = create_mcp_http_client(headers={"Authorization": f"Bearer {gateway.tokens['alice']}"})
    http.event_hooks = {"request": [], "response": [record]}
    async with http, Client(streamable_http_client(gateway.url, http_client=http)) as client:
        plain = await client.call_tool("execute_bash", {"command": "echo plain"})
        plain_kind = kinds[-1]
        command = "echo first; sleep 1.6; echo second"
        streamed = await client.call_tool(
            "execute_bash", {"command": command, "timeout_s": 10}, progress_callback=on_progress
        )
        streamed_kind = kinds[-1]
    assert not plain.is_error and plain.structured_content["stdout"] == "plain\n"
    assert plain_kind == "application/json", "no progress token: one JSON response, no stream"
    assert not streamed.is_error and streamed.structured_content["stdout"] == "first\nsecond\n"
    assert streamed_kind == "text/event-stream", "a progress token gets a stream for its notifications"
    assert notes and notes[0] is not None and notes[0].startswith("first")


async def test_admin_policy_is_for_admins_and_explains_only_their_own_tenant(gateway: Gateway) -> None:
    # Credentials added to the running gateway's tokens file (re-read on change): an operator of the
    # default tenant, and a principal of another tenant.
    store = TokenStore(gateway.log.parent / "tokens.jsonl")
    admin = store.create("ops", profile="tenant-admin", scopes=("sandbox:exec", "sandbox:admin"))
    store.create("carol", tenant="other")
    headers = {**ACCEPT, "Authorization": f"Bearer {admin}"}
    eventually(
        lambda: httpx.post(gateway.url, json=INIT, headers=headers).is_success,
        timeout_s=10,
        message="the gateway did not take the new token",
    )
    async with mcp_client(gateway.url, admin) as client:
        overview = await client.call_tool("admin_policy", {})
        alice = await client.call_tool("admin_policy", {"principal": "alice", "tool": "execute_bash"})
        carol = await client.call_tool("admin_policy", {"principal": "carol", "tool": "execute_bash"})
    async with mcp_client(gateway.url, gateway.tokens["alice"]) as client:
        refused = await client.call_tool("admin_policy", {})
    assert overview.structured_content is not None
    assert {p["name"] for p in overview.structured_content["profiles"]} >= {
        "default",
        "strict",
        "tenant-admin",
    }
    assert alice.structured_content is not None
    decision = alice.structured_content["decision"]
    assert decision["allowed"] and (decision["tenant"], decision["profile"]) == ("default", "default")
    assert decision["policy_digest"] == overview.structured_content["policy_digest"]
    assert carol.is_error and "invalid-argument" in carol.content[0].text  # type: ignore[union-attr]
    assert refused.is_error and "insufficient-scope" in refused.content[0].text  # type: ignore[union-attr]
    decided = audit_events(gateway.audit_log, "policy.decision", tool="admin_policy")
    assert {e["actor"]["principal"] for e in decided} == {"ops"}
