"""The gateway's handling of one execution's upstream calls (gateway/calls/code_mode.py), with the real
policy engine and audit log and a fake upstream: parsing, every refusal, budgets, checks on the
result, and what is recorded."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from audit import AuditLog, MemorySink
from gateway.calls.code_mode import CodeModeCalls, ExecutionTools
from gateway.calls.tool_call_line import parse_call
from gateway.errors import UpstreamTimeout
from gateway.ratelimit import RateLimiter
from gateway.upstream import UpstreamResult
from policy import Action, Allowed, Principal
from policy.engine import PolicyEngine
from policy.loader import default_policy_path, load_policy_text

pytestmark = pytest.mark.anyio

CODER = Principal("alice", "acme", "coder", "token", frozenset({"sandbox:exec"}))
PLAIN = Principal("bob", "acme", "default", "token", frozenset({"sandbox:exec"}))


def _engine(**code_mode: Any) -> PolicyEngine:
    policy = yaml.safe_load(default_policy_path().read_text())
    policy["profiles"]["coder"] = {
        "extends": "default",
        "code_mode": {
            "allow": [
                {"server": "notes", "tools": ["search", "leak"], "arguments": {"q": {"max_length": 10}}}
            ],
            **code_mode,
        },
    }
    return PolicyEngine(load_policy_text(yaml.safe_dump(policy)))


class FakeUpstreams:
    """Answers from a table; records what was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, Any], float]] = []
        self.answers: dict[str, UpstreamResult | Exception] = {}

    async def call(
        self, server: str, tool: str, arguments: dict[str, Any], *, timeout_s: float
    ) -> UpstreamResult:
        self.sent.append((server, tool, arguments, timeout_s))
        answer = self.answers.get(tool, _result(structured={"hits": 1}))
        if isinstance(answer, Exception):
            raise answer
        return answer


def _result(*, structured: Any = None, text: str = "", is_error: bool = False) -> UpstreamResult:
    size = len(json.dumps({"structuredContent": structured, "text": text}))
    return UpstreamResult(is_error=is_error, content=[], structured=structured, text=text, size=size)


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


@pytest.fixture
def upstream() -> FakeUpstreams:
    return FakeUpstreams()


def _calls_for(sink: MemorySink, upstream: FakeUpstreams, **code_mode: Any) -> Iterator[CodeModeCalls]:
    engine = _engine(**code_mode)
    yield CodeModeCalls(lambda: engine, upstream, AuditLog([sink]), RateLimiter("memory://"))  # type: ignore[arg-type]


@pytest.fixture
def bridge(sink: MemorySink, upstream: FakeUpstreams) -> Iterator[CodeModeCalls]:
    yield from _calls_for(sink, upstream, calls_per_execution=3, calls_per_minute=1000)


def _execution(bridge: CodeModeCalls, principal: Principal = CODER, timeout_s: float = 30) -> ExecutionTools:
    decision = bridge.engine().evaluate(principal, Action(tool="execute_python"))
    assert isinstance(decision, Allowed)
    tools = bridge.for_execution(principal, decision)
    assert tools is not None
    tools.deadline = time.monotonic() + timeout_s
    return tools


def _line(call_id: object = 1, server: str = "notes", tool: str = "search", **arguments: Any) -> bytes:
    return json.dumps({"id": call_id, "server": server, "tool": tool, "arguments": arguments}).encode()


def _events(sink: MemorySink, name: str) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, sink.lines) if e["event"] == name]


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b"[1, 2]",
        b'{"id": 1, "tool": "search", "arguments": {}}',
        b'{"id": 1, "server": "notes", "tool": 7, "arguments": {}}',
        b'{"id": 1, "server": "notes", "tool": "search", "arguments": [1]}',
        b'{"id": 1, "server": "", "tool": "search"}',
        b"[" * 60_000,
        _line(a=json.loads("[" * 65 + "]" * 65)),
        b'{"id": 1, "server": "notes", "tool": "search", "arguments": {"q": NaN}}',
        b'{"id": 1, "server": "notes", "tool": "search", "arguments": {"q": 1e999}}',
        b'{"id": 1, "server": "notes", "tool": "search", "arguments": {"q": "\\ud800"}}',
    ],
    ids=[
        "garbage",
        "array",
        "no-server",
        "tool-not-str",
        "args-not-object",
        "empty-server",
        "deep",
        "nested-65",
        "nan",
        "infinite",
        "lone-surrogate",
    ],
)
async def test_a_malformed_call_is_refused_plainly(
    bridge: CodeModeCalls, upstream: FakeUpstreams, line: bytes
) -> None:
    answer = json.loads(await _execution(bridge)(line))
    assert answer["id"] is None and answer["error"]["code"] == "invalid-request"
    assert upstream.sent == []


async def test_a_line_longer_than_the_profile_allows_is_refused_unread(
    bridge: CodeModeCalls, upstream: FakeUpstreams
) -> None:
    answer = json.loads(await _execution(bridge)(b"x" * ((1 << 20) + 1)))
    assert answer["error"]["code"] == "argument-too-large" and upstream.sent == []


def test_the_call_id_is_echoed_only_when_it_is_an_integer() -> None:
    assert parse_call(_line(call_id=7)).id == 7
    assert parse_call(_line(call_id=True)).id is None
    assert parse_call(_line(call_id="x")).id is None


async def test_an_allowed_call_goes_upstream_and_its_result_comes_back(
    bridge: CodeModeCalls, upstream: FakeUpstreams, sink: MemorySink
) -> None:
    tools = _execution(bridge)
    answer = json.loads(await tools(_line(q="gateway")))
    assert answer == {"id": 1, "result": {"hits": 1}}
    ((server, tool, arguments, timeout_s),) = upstream.sent
    assert (server, tool, arguments) == ("notes", "search", {"q": "gateway"}) and 0 < timeout_s <= 30
    (start,) = _events(sink, "upstream.start")
    (done,) = _events(sink, "upstream.call")
    assert (
        start["upstream"]["arguments"] == done["upstream"]["arguments"]
        and "hmac_sha256" in start["upstream"]["arguments"]
    )
    assert done["outcome"]["status"] == "ok" and done["upstream"]["rule_id"].endswith("allow[0]")
    assert tools.summary() == {"upstream_calls": 1, "upstream_refused": {}}


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (_line(tool="delete"), "upstream-not-allowed"),
        (_line(server="other"), "upstream-not-allowed"),
        (_line(q="x" * 11), "argument-not-allowed"),
    ],
)
async def test_a_call_the_policy_refuses_never_goes_upstream(
    bridge: CodeModeCalls, upstream: FakeUpstreams, sink: MemorySink, line: bytes, code: str
) -> None:
    tools = _execution(bridge)
    for _ in range(3):
        answer = json.loads(await tools(line))
        assert answer["error"]["code"] == code
    assert upstream.sent == []
    refused = _events(sink, "upstream.call")
    assert len(refused) == 1, "the first refusal of a kind is recorded, the rest counted"
    assert refused[0]["outcome"] == {"status": "rejected", "error": code}
    assert tools.summary()["upstream_refused"] == {code: 3}


async def test_a_profile_without_code_mode_gets_no_handler(bridge: CodeModeCalls) -> None:
    decision = bridge.engine().evaluate(PLAIN, Action(tool="execute_python"))
    assert isinstance(decision, Allowed) and bridge.for_execution(PLAIN, decision) is None


async def test_the_per_execution_budget(bridge: CodeModeCalls, upstream: FakeUpstreams) -> None:
    tools = _execution(bridge)
    codes = [json.loads(await tools(_line(call_id=i))).get("error", {}).get("code") for i in range(5)]
    assert codes == [None, None, None, "upstream-budget-exhausted", "upstream-budget-exhausted"]
    assert len(upstream.sent) == 3
    fresh = _execution(bridge)
    assert "result" in json.loads(await fresh(_line())), "the next execution has its own budget"


async def test_the_per_minute_rate_is_the_principals(sink: MemorySink, upstream: FakeUpstreams) -> None:
    bridge = next(_calls_for(sink, upstream, calls_per_minute=2))
    first, second = _execution(bridge), _execution(bridge)
    assert "result" in json.loads(await first(_line()))
    assert "result" in json.loads(await second(_line()))
    answer = json.loads(await first(_line()))
    assert answer["error"]["code"] == "rate-limited" and "retry in" in answer["error"]["message"]


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        (_result(text="x" * 2_000_000), "result-too-large"),
        (_result(text="key: AKIA" + "ABCDEFGHIJKLMNOP"), "secret-in-result"),
        (
            _result(
                structured={
                    "deep": [{"k": "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----"}]
                }
            ),
            "secret-in-result",
        ),
        (_result(text="no such note", is_error=True), "upstream-tool-error"),
        (UpstreamTimeout("upstream notes did not answer in 1.0 s"), "upstream-timeout"),
    ],
    ids=["too-large", "aws-key", "nested-private-key", "tool-error", "timeout"],
)
async def test_what_comes_back_is_checked(
    bridge: CodeModeCalls, upstream: FakeUpstreams, sink: MemorySink, answer: Any, code: str
) -> None:
    upstream.answers["search"] = answer
    reply = json.loads(await _execution(bridge)(_line()))
    assert reply["error"]["code"] == code
    assert "AKIA" not in json.dumps(reply) and "PRIVATE KEY" not in json.dumps(reply)
    (done,) = _events(sink, "upstream.call")
    assert done["outcome"]["error"] == code
    assert "AKIA" not in "\n".join(sink.lines)


async def test_a_call_that_cannot_be_recorded_is_not_made(
    bridge: CodeModeCalls, upstream: FakeUpstreams, sink: MemorySink
) -> None:
    tools = _execution(bridge)
    sink.fail = True
    answer = json.loads(await tools(_line()))
    assert answer["error"]["code"] == "audit-unavailable"
    assert upstream.sent == []


async def test_a_call_after_the_executions_time_is_refused(
    bridge: CodeModeCalls, upstream: FakeUpstreams
) -> None:
    tools = _execution(bridge, timeout_s=0)
    assert json.loads(await tools(_line()))["error"]["code"] == "upstream-timeout"
    assert upstream.sent == []


async def test_the_timeout_sent_upstream_is_what_the_execution_has_left(
    bridge: CodeModeCalls, upstream: FakeUpstreams
) -> None:
    await _execution(bridge, timeout_s=2)(_line())
    assert 0 < upstream.sent[0][3] <= 2
