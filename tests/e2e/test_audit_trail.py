"""The audit trail has no holes and cannot be washed out: refusals are recorded with their code,
and floods of bad tokens or rate-limited requests are folded per source and window."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from audit.chain import verify_lines
from audit.schema import EVENTS, AuditEvent
from gateway.auth.tokens import TokenStore
from gateway.backend.docker_engine import DockerBackend
from tests.e2e.conftest import ACCEPT, INIT, Gateway, mcp_client, start_gateway, stop_gateway
from tests.e2e.test_policy_over_mcp import write_policy
from tests.support import eventually, matching, settled_events

pytestmark = pytest.mark.anyio

#: A value that must never reach the log when an argument carrying it is refused.
MARKER = "do-not-log-" + uuid.uuid4().hex


def events(gateway: Gateway) -> list[dict[str, Any]]:
    """Every line of the gateway's audit log, once every execution's `exec.finish` is written (it is
    written off the call's path), each checked against the schema."""
    parsed = settled_events(gateway.audit_log)
    for event in parsed:
        AuditEvent.model_validate(event)
        assert event["event"] in EVENTS, f"{event['event']} is not documented in audit/schema.py"
    return parsed


def chain_holds(gateway: Gateway) -> bool:
    lines = gateway.audit_log.read_text().splitlines()
    return verify_lines([(str(n), line) for n, line in enumerate(lines, 1)], expect_genesis=True).ok


def post(gateway: Gateway, token: str | None, client: httpx.Client) -> int:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post(gateway.url, json=INIT, headers={**ACCEPT, **auth}, timeout=10).status_code


@pytest.fixture(scope="module")
def trail(tmp_path_factory: pytest.TempPathFactory, backend: DockerBackend) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("trail")
    gateway = start_gateway(tmp, principals={"alice": "default"})
    gateway.tokens["exec-only"] = TokenStore(tmp / "tokens.jsonl").create("carol", scopes=("sandbox:exec",))
    yield gateway
    stop_gateway(gateway)
    assert backend.list({"sandbox-gateway.gateway": gateway.gateway_id}) == []
    assert chain_holds(gateway)


async def call(
    gateway: Gateway, who: str, tool: str, arguments: dict[str, Any]
) -> tuple[str, list[dict[str, Any]]]:
    """Call a tool that must fail; its error text and the events it added."""
    before = len(events(gateway))
    async with mcp_client(gateway.url, gateway.tokens[who]) as client:
        result = await client.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    return result.content[0].text, events(gateway)[before:]  # type: ignore[union-attr]


# -- refusals inside a tool call --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "arguments", "setup"),
    [
        pytest.param("read_file", {"path": "../etc/passwd"}, None, id="read-traversal"),
        pytest.param("read_file", {"path": "/etc/passwd"}, None, id="read-absolute"),
        pytest.param("write_file", {"path": "/etc/cron.d/x", "content": "x"}, None, id="write-absolute"),
        pytest.param("write_file", {"path": "a/../../../tmp/x", "content": "x"}, None, id="write-traversal"),
        pytest.param("list_files", {"path": "/"}, None, id="list-root"),
        pytest.param(
            "read_file", {"path": "out/passwd"}, "ln -sfn /etc /workspace/out", id="read-symlink-out"
        ),
    ],
)
async def test_a_refused_path_is_recorded_with_its_code(
    trail: Gateway, tool: str, arguments: dict[str, Any], setup: str | None
) -> None:
    if setup:
        async with mcp_client(trail.url, trail.tokens["alice"]) as client:
            assert not (await client.call_tool("execute_bash", {"command": setup})).is_error
    text, added = await call(trail, "alice", tool, arguments)
    assert "path-outside-workspace" in text
    (finish,) = matching(added, "file.finish", principal="alice")
    assert finish["outcome"] == {"status": "rejected", "error": "path-outside-workspace"}
    assert finish["detail"]["path"] == arguments["path"] and finish["tool"] == tool
    (decision,) = matching(added, "policy.decision", principal="alice")
    assert decision["request_id"] == finish["request_id"], "one call, one request id"


@pytest.mark.parametrize(
    ("tool", "arguments", "scope"),
    [
        pytest.param("read_file", {"path": "a"}, "sandbox:files", id="read_file"),
        pytest.param("write_file", {"path": "a", "content": MARKER}, "sandbox:files", id="write_file"),
        pytest.param("list_files", {}, "sandbox:files", id="list_files"),
        pytest.param("admin_list_sandboxes", {}, "sandbox:admin", id="admin_list_sandboxes"),
        pytest.param(
            "admin_remove_sandbox", {"principal": "alice"}, "sandbox:admin", id="admin_remove_sandbox"
        ),
    ],
)
async def test_a_call_without_the_needed_scope_is_recorded(
    trail: Gateway, tool: str, arguments: dict[str, Any], scope: str
) -> None:
    text, added = await call(trail, "exec-only", tool, arguments)
    assert "insufficient-scope" in text
    (rejected,) = added
    assert rejected["event"] == "tool.rejected" and rejected["tool"] == tool
    assert rejected["outcome"] == {"status": "rejected", "error": "insufficient-scope"}
    assert rejected["actor"]["principal"] == "carol" and rejected["actor"]["source_ip"] == "127.0.0.1"
    assert rejected["detail"] == {"scope": scope}
    assert MARKER not in trail.audit_log.read_text()


@pytest.mark.parametrize(
    ("tool", "arguments", "fields"),
    [
        pytest.param("execute_bash", {"command": 5}, ["command"], id="wrong-type"),
        pytest.param("execute_bash", {}, ["command"], id="missing"),
        pytest.param(
            "execute_bash", {"command": MARKER, "timeout_s": "soon"}, ["timeout_s"], id="not-a-number"
        ),
        pytest.param(
            "write_file", {"path": "a", "content": {"secret": MARKER}}, ["content"], id="dict-for-string"
        ),
        pytest.param(
            "read_file", {"path": ["a"], "max_bytes": MARKER}, ["max_bytes", "path"], id="two-fields"
        ),
    ],
)
async def test_arguments_that_fail_the_schema_are_recorded_by_name_never_by_value(
    trail: Gateway, tool: str, arguments: dict[str, Any], fields: list[str]
) -> None:
    text, added = await call(trail, "alice", tool, arguments)
    assert "validation error" in text
    (rejected,) = added
    assert rejected["event"] == "tool.rejected" and rejected["tool"] == tool
    assert rejected["outcome"] == {"status": "rejected", "error": "invalid-argument"}
    assert rejected["actor"]["principal"] == "alice"
    assert sorted(item["field"] for item in rejected["detail"]["invalid"]) == fields
    assert all(item["error"] for item in rejected["detail"]["invalid"])
    assert MARKER not in trail.audit_log.read_text()


@pytest.mark.parametrize(
    ("tool", "arguments", "message"),
    [
        pytest.param("execute_bash", {"command": "   "}, "command is empty", id="empty-command"),
        pytest.param("execute_python", {"code": "print(1)\x00"}, "code contains a NUL byte", id="nul-byte"),
        pytest.param(
            "read_file",
            {"path": "a", "encoding": "latin-1"},
            "encoding must be 'utf-8' or 'base64'",
            id="encoding",
        ),
        pytest.param(
            "read_file",
            {"path": "a", "max_bytes": -1},
            "max_bytes must be a non-negative integer",
            id="negative",
        ),
        pytest.param(
            "write_file",
            {"path": "a", "content": MARKER + "!", "encoding": "base64"},
            "content is not valid base64",
            id="bad-base64",
        ),
        pytest.param(
            "write_file", {"path": "a\x00b", "content": "x"}, "path contains a NUL byte", id="nul-path"
        ),
    ],
)
async def test_arguments_the_gateway_refuses_are_recorded_with_its_message(
    trail: Gateway, tool: str, arguments: dict[str, Any], message: str
) -> None:
    text, added = await call(trail, "alice", tool, arguments)
    assert f"invalid-argument: {message}" in text
    (rejected,) = added
    assert rejected["event"] == "tool.rejected" and rejected["tool"] == tool
    assert rejected["outcome"] == {"status": "rejected", "error": "invalid-argument"}
    assert rejected["detail"] == {"message": message}
    assert rejected["actor"]["principal"] == "alice" and len(rejected["request_id"]) == 32
    assert MARKER not in trail.audit_log.read_text()


async def test_an_unknown_tool_is_recorded(trail: Gateway) -> None:
    text, added = await call(trail, "alice", "mount_host_root", {"path": MARKER})
    assert "Unknown tool" in text
    (rejected,) = added
    assert rejected["event"] == "tool.rejected" and rejected["tool"] == "mount_host_root"
    assert rejected["outcome"] == {"status": "rejected", "error": "unknown-tool"}
    assert MARKER not in trail.audit_log.read_text()


# -- floods at the front door -----------------------------------------------------------------------


def test_a_thousand_bad_tokens_write_one_line_and_a_summary_at_the_stop(tmp_path: Path) -> None:
    gateway = start_gateway(tmp_path, "--address-rate", "100000/minute")
    try:
        with httpx.Client() as client:
            statuses = {post(gateway, f"sgw_{uuid.uuid4().hex}", client) for _ in range(1000)}
            assert statuses == {401}
            assert len(matching(events(gateway), "auth.failed")) == 1, "only the first is a line of its own"
            assert post(gateway, None, client) == 401
            assert len(matching(events(gateway), "auth.failed", reason="missing")) == 1, (
                "another reason: at once"
            )
            assert post(gateway, gateway.tokens["alice"], client) == 200
    finally:
        stop_gateway(gateway)
    found = events(gateway)
    first, missing = matching(found, "auth.failed")
    assert first["detail"] == {"reason": "unknown-token", "path": "/mcp"}
    assert first["actor"] == {"source_ip": "127.0.0.1"} and missing["detail"]["reason"] == "missing"
    (summary,) = matching(found, "audit.repeated")
    assert summary["actor"] == {"source_ip": "127.0.0.1"}
    detail = summary["detail"]
    assert (detail["of"], detail["count"], detail["suppressed"], detail["window_s"]) == (
        "auth.failed",
        1001,
        999,
        60.0,
    )
    assert {c["reason"]: c["count"] for c in detail["counts"]} == {"unknown-token": 1000, "missing": 1}
    assert detail["first_ts"] <= first["ts"] <= detail["last_ts"] <= summary["ts"]
    assert found.index(summary) < found.index(matching(found, "gateway.stop")[0]), "written before the stop"
    assert chain_holds(gateway)


@pytest.mark.parametrize("limit", ["address", "requests"])
def test_requests_over_a_rate_limit_write_one_line_and_a_summary(tmp_path: Path, limit: str) -> None:
    if limit == "address":  # the address budget is spent by requests that do not authenticate
        gateway = start_gateway(tmp_path, "--address-rate", "5/minute")
        key: dict[str, Any] = {"source_ip": "127.0.0.1"}
        token = "sgw_wrong"
        allowed = 401
    else:
        policy = write_policy(tmp_path / "policy.yaml", {"profiles.default.rate_limits.requests": "5/minute"})
        gateway = start_gateway(tmp_path, "--policy", str(policy))
        key = {"principal": "alice", "tenant": "default"}
        token, allowed = gateway.tokens["alice"], 200
    try:
        with httpx.Client() as client:
            statuses = [post(gateway, token, client) for _ in range(300)]
            assert statuses == [allowed] * 5 + [429] * 295
            (hit,) = matching(events(gateway), "ratelimit.hit")
    finally:
        stop_gateway(gateway)
    assert hit["limits"]["limit"] == limit and hit["actor"]["source_ip"] == "127.0.0.1"
    (summary,) = matching(events(gateway), "audit.repeated", of="ratelimit.hit")
    assert summary["actor"] == key and summary["limits"] == {"limit": limit}
    assert (summary["detail"]["of"], summary["detail"]["count"], summary["detail"]["suppressed"]) == (
        "ratelimit.hit",
        295,
        294,
    )
    assert chain_holds(gateway)


def test_a_window_that_ends_is_summarised_while_the_gateway_runs(tmp_path: Path) -> None:
    gateway = start_gateway(tmp_path, "--audit-repeat-window", "1", "--address-rate", "100000/minute")
    try:
        with httpx.Client() as client:
            assert {post(gateway, "sgw_wrong", client) for _ in range(50)} == {401}

        def summarised() -> list[dict[str, Any]]:
            found = events(gateway)
            summaries = matching(found, "audit.repeated", of="auth.failed")
            accounted = len(matching(found, "auth.failed")) + sum(
                s["detail"]["suppressed"] for s in summaries
            )
            assert summaries and accounted == 50, f"no summary while running; {accounted} of 50 accounted for"
            return found

        found = eventually(summarised, timeout_s=30, interval_s=0.2)
        summaries = matching(found, "audit.repeated", of="auth.failed")
        assert not matching(found, "gateway.stop"), "the summary came at the window's end, not at a stop"
        assert all(s["detail"]["window_s"] == 1.0 for s in summaries)
    finally:
        stop_gateway(gateway)
    assert chain_holds(gateway)


def test_a_full_table_of_sources_says_so_and_still_counts_every_request(tmp_path: Path) -> None:
    gateway = start_gateway(tmp_path, "--audit-repeat-sources", "2")
    sources = [f"127.0.0.{n}" for n in range(2, 7)]
    try:
        for source in sources:
            transport = httpx.HTTPTransport(local_address=source)
            with httpx.Client(transport=transport) as client:
                assert [post(gateway, "sgw_wrong", client) for _ in range(3)] == [401] * 3
        found = events(gateway)
        assert [e["actor"]["source_ip"] for e in matching(found, "auth.failed")] == sources[:2]
        (overflow,) = matching(found, "audit.overflow")
        assert overflow["detail"] == {"of": "auth.failed", "capacity": 2, "window_s": 60.0}
    finally:
        stop_gateway(gateway)
    summaries = matching(events(gateway), "audit.repeated")
    tracked = {s["actor"]["source_ip"]: s["detail"]["count"] for s in summaries if "actor" in s}
    assert tracked == {sources[0]: 3, sources[1]: 3}
    (spill,) = [s for s in summaries if "actor" not in s]
    assert spill["detail"]["overflow"] is True and spill["detail"]["count"] == 9
    assert spill["detail"]["suppressed"] == 9, "no line of their own: the table did not grow"
    assert chain_holds(gateway)
