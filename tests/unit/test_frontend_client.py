"""The web console's client adapter without a browser or a gateway: tokens, errors, streamed output,
and the handlers with a fake client."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx2
import pytest
from mcp import MCPError

from frontend.client import (
    GatewayClient,
    OutputStream,
    Problem,
    normalize_token,
    problem_from_exception,
    problem_from_tool_error,
)
from frontend.config import check_gateway_url
from frontend.handlers import Handlers

TOKEN = "sgw_" + "a" * 43


@pytest.mark.parametrize(
    ("raw", "token"),
    [(TOKEN, TOKEN), (f"  {TOKEN}\n", TOKEN), (f"Bearer {TOKEN}", TOKEN), (f"bearer  {TOKEN}", TOKEN)],
)
def test_a_pasted_token_is_cleaned(raw: str, token: str) -> None:
    assert normalize_token(raw) == token


@pytest.mark.parametrize("raw", [None, "", "   ", "Bearer ", "two words", "sgw_\x00", "x" * 9000])
def test_what_cannot_be_a_token_is_refused(raw: str | None) -> None:
    with pytest.raises(ValueError, match=r"token"):
        normalize_token(raw)


def test_the_client_never_shows_its_token() -> None:
    client = GatewayClient("http://127.0.0.1:8000/mcp", TOKEN)
    assert TOKEN not in repr(client) and TOKEN not in str(client)
    assert "hidden" in repr(client)


@pytest.mark.parametrize(
    ("text", "code", "message"),
    [
        (
            "Error executing tool read_file: path-outside-workspace: "
            "only paths under /workspace are reachable",
            "path-outside-workspace",
            "only paths under /workspace are reachable",
        ),
        ("policy-denied: the profile forbids it", "policy-denied", "the profile forbids it"),
        ("something odd", "tool-error", "something odd"),
    ],
)
def test_a_tool_error_keeps_the_gateways_code(text: str, code: str, message: str) -> None:
    problem = problem_from_tool_error(text)
    assert (problem.kind, problem.code, problem.message) == ("refused", code, message)


def test_a_rate_limit_refusal_carries_its_retry_time() -> None:
    text = "Error executing tool execute_bash: rate-limited: request rate 60/minute reached; retry in 12 s"
    problem = problem_from_tool_error(text)
    assert problem.kind == "rate-limited" and problem.retry_after_s == 12.0


def _group(*leaves: Exception) -> ExceptionGroup[Exception]:
    return ExceptionGroup("unhandled errors in a TaskGroup", [ExceptionGroup("inner", list(leaves))])


def test_401_is_a_rejected_token() -> None:
    problem = problem_from_exception(_group(MCPError(-32603, "Server returned an error response")), 401)
    assert (problem.kind, problem.code) == ("unauthorized", "token-rejected") and "401" in problem.message


def test_429_is_a_rate_limit_with_the_retry_after_header() -> None:
    problem = problem_from_exception(_group(MCPError(-32600, "too many")), 429, 7.0)
    assert (problem.kind, problem.retry_after_s) == ("rate-limited", 7.0)
    assert "retry in 7 s" in problem.message


def test_a_refused_connection_is_an_unreachable_gateway() -> None:
    problem = problem_from_exception(_group(httpx2.ConnectError("All connection attempts failed")))
    assert (problem.kind, problem.code) == ("unreachable", "gateway-unreachable")


def test_a_slow_gateway_is_a_timeout() -> None:
    assert problem_from_exception(httpx2.ReadTimeout("slow")).code == "gateway-timeout"


def test_other_failures_say_what_happened() -> None:
    assert problem_from_exception(_group(MCPError(-32603, "boom")), 500).code == "http-500"
    assert problem_from_exception(RuntimeError("x")).code == "client-error"


@pytest.mark.anyio
async def test_an_unreachable_gateway_is_reported_not_raised_raw() -> None:
    with pytest.raises(Problem) as caught:
        await GatewayClient("http://127.0.0.1:1/mcp", TOKEN, timeout_s=5).call("sandbox_info")
    assert caught.value.kind == "unreachable"


def test_output_is_streamed_as_the_new_text_of_each_progress_note() -> None:
    stream = OutputStream()
    assert stream.feed(7, "line 0\n") == "line 0\n"
    assert stream.feed(14, "line 0\nline 1\n") == "line 1\n"
    assert stream.feed(14, "line 0\nline 1\n") == "", "a repeated note adds nothing"
    assert stream.feed(21, "line 2\n"[-7:]) == "line 2\n"
    assert stream.text == "line 0\nline 1\nline 2\n"


def test_output_past_the_tail_says_what_was_skipped() -> None:
    stream = OutputStream()
    chunk = stream.feed(5000, "end\n")
    assert chunk.startswith("[... 4996 bytes not shown ...]") and chunk.endswith("end\n")


@pytest.mark.parametrize(
    "url", ["ftp://h/mcp", "http:///mcp", "http://user:pw@h/mcp", "http://h/mcp?token=x", "http://h/mcp#f"]
)
def test_only_a_plain_gateway_url_is_accepted(url: str) -> None:
    with pytest.raises(ValueError, match="MCP_SERVER_URL"):
        check_gateway_url(url)


def test_a_gateway_url_is_accepted() -> None:
    assert check_gateway_url(" https://gateway.internal:8443/mcp ") == "https://gateway.internal:8443/mcp"


class FakeClient(GatewayClient):
    """Answers from a table (tool -> result or Problem); records the calls; streams given chunks."""

    def __init__(self, url: str, token: str, answers: dict[str, Any], calls: list[tuple[str, Any]],
                 chunks: list[str]) -> None:  # fmt: skip
        super().__init__(url, token)
        self.answers, self.calls, self.chunks = answers, calls, chunks

    async def call(
        self,
        tool: str,
        arguments: dict[str, Any] | None = None,
        on_output: Callable[[str], Awaitable[None]] | None = None,
    ) -> dict[str, Any]:
        self.calls.append((tool, arguments))
        for chunk in self.chunks:
            if on_output is not None:
                await on_output(chunk)
        answer = self.answers[tool]
        if isinstance(answer, Problem):
            raise answer
        return dict(answer)


def _handlers(
    answers: dict[str, Any], chunks: list[str] | None = None
) -> tuple[Handlers, list[tuple[str, Any]]]:
    calls: list[tuple[str, Any]] = []

    def factory(url: str, token: str) -> GatewayClient:
        return FakeClient(url, token, answers, calls, chunks or [])

    return Handlers("http://127.0.0.1:8000/mcp", client_factory=factory), calls


INFO = {
    "principal": "alice", "tenant": "default", "profile": "default", "tools": ["execute_bash"],
    "image": "mcp-code-executor:latest", "network": "none", "cpus": 1.0, "memory_bytes": 512 * 2**20,
    "pids_limit": 128, "writable_paths": {"/workspace": 2**30}, "default_timeout_s": 30.0,
    "max_timeout_s": 120.0, "max_output_bytes": 2**20, "max_input_bytes": 2**20, "max_concurrent": 2,
    "max_concurrent_per_tenant": 8, "requests_rate": "60/minute", "tenant_requests_rate": "600/minute",
    "sandbox_creations_rate": "10/minute", "idle_ttl_s": 900.0, "max_age_s": 14400.0,
    "sandbox": {"container_id": "abc123", "created_at": 0.0, "idle_expires_in_s": 125.0,
                "max_age_expires_in_s": 14000.0, "up_to_date": True},
}  # fmt: skip


@pytest.mark.anyio
async def test_sign_in_keeps_a_token_the_gateway_accepts() -> None:
    handlers, calls = _handlers({"sandbox_info": INFO})
    result = await handlers.sign_in(f"Bearer {TOKEN}")
    assert result.token == TOKEN and "Signed in as **alice**" in result.who
    assert "Time left before idle expiry | 2 min 5 s" in result.facts
    assert calls == [("sandbox_info", None)]


@pytest.mark.anyio
async def test_sign_in_forgets_a_rejected_token() -> None:
    rejected = Problem("unauthorized", "token-rejected", "the gateway rejected this token (401)")
    handlers, _ = _handlers({"sandbox_info": rejected})
    result = await handlers.sign_in(TOKEN)
    assert result.token is None and "token-rejected" in result.who


@pytest.mark.anyio
async def test_calls_before_sign_in_ask_for_it() -> None:
    handlers, calls = _handlers({})
    assert "signed-out" in await handlers.reset(None)
    assert calls == []


@pytest.mark.anyio
async def test_a_run_streams_then_shows_the_result_and_its_flags() -> None:
    result = {"exit_code": 137, "stdout": "a\nb\n", "stderr": "Killed\n", "duration_ms": 1234.0,
              "timed_out": False, "truncated": True, "oom_killed": True,
              "sandbox_replaced": True}  # fmt: skip
    handlers, calls = _handlers({"execute_python": result}, chunks=["a\n", "b\n"])
    updates = [u async for u in handlers.run(TOKEN, "python", "print('a')", 10)]
    assert calls == [("execute_python", {"code": "print('a')", "timeout_s": 10.0})]
    assert any(u.output == "a\nb\n" and u.status.startswith("Running") for u in updates)
    final = updates[-1]
    assert (final.output, final.stderr) == ("a\nb\n", "Killed\n")
    for part in ("exit code 137", "1234 ms", "output truncated", "out of memory", "sandbox replaced"):
        assert part in final.status


@pytest.mark.anyio
async def test_a_refused_run_shows_the_code_and_retry_time() -> None:
    limited = Problem("rate-limited", "rate-limited", "request rate 60/minute reached; retry in 12 s", 12.0)
    handlers, _ = _handlers({"execute_bash": limited})
    updates = [u async for u in handlers.run(TOKEN, "bash", "echo hi", None)]
    assert "`rate-limited`" in updates[-1].status and "Retry in 12 s" in updates[-1].status


@pytest.mark.anyio
async def test_admin_listing_shows_age_and_idle_time() -> None:
    import time

    now = time.time()
    listing = {"tenant": "default", "sandboxes": [
        {"principal": "bob", "profile": "default", "container_id": "c" * 64, "created_at": now - 130,
         "last_used": now - 5, "policy_digest": "d"}]}  # fmt: skip
    handlers, _ = _handlers({"admin_list_sandboxes": listing})
    table, choices, status = await handlers.admin_list(TOKEN)
    assert choices == ["bob"] and status == ""
    assert "| bob | default | 2 min 10 s | 5 s | cccccccccccc |" in table


@pytest.mark.anyio
async def test_file_names_cannot_break_the_table() -> None:
    listing = {"path": "/workspace", "entries": [{"name": "a|b<script>", "type": "file", "size": 3}]}
    handlers, _ = _handlers({"list_files": listing})
    table, choices, _ = await handlers.list_files(TOKEN, "/workspace")
    assert "a\\|b&lt;script&gt;" in table and "<script>" not in table
    assert choices == ["/workspace/a|b<script>"]


def test_the_ui_subcommand_loads_no_gradio_until_it_runs() -> None:
    import subprocess
    import sys

    probe = (
        "import sys; from gateway.cli import _parser; "
        "args = _parser().parse_args(['ui', '--port', '7999']); "
        "assert args.port == 7999 and args.host == '127.0.0.1'; "
        "assert 'gradio' not in sys.modules, 'gradio was imported'"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=60)


def test_a_bad_gateway_url_stops_the_console_before_it_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    from frontend.cli import main

    monkeypatch.setenv("MCP_SERVER_URL", "file:///etc/passwd")
    assert main([]) == 2


def test_the_policy_view_lays_profiles_side_by_side_and_explains_a_decision() -> None:
    from frontend.format import policy_view

    profile = {
        "name": "default",
        "tools": ["execute_bash"],
        "exec": {"default_timeout_s": 30, "max_concurrent": 4},
        "sandbox": {"runtime": "runc", "network": "none"},
        "lifecycle": {"idle_ttl_s": 900},
        "rate_limits": {"requests": "120/minute"},
    }
    denied = {
        "allowed": False,
        "principal": "bob|<b>",
        "profile": "default",
        "reasons": ["tool-not-allowed"],
        "rule_ids": ["profiles.default.tools"],
        "message": "not in the profile",
    }
    view = policy_view({"tenant": "acme", "policy_digest": "sha256:" + "a" * 64, "profiles": [profile]})
    assert (
        "| default |" in view and "| calls at once | 4 |" in view and "| request rate | 120/minute |" in view
    )
    assert "Explain" not in view
    explained = policy_view({"tenant": "acme", "profiles": [profile], "decision": denied})
    assert "**denied**" in explained and "tool-not-allowed" in explained and "not in the profile" in explained
    assert "<b>" not in explained and "bob\\|&lt;b&gt;" in explained, "names are escaped for the table"
