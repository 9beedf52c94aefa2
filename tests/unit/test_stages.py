"""The per-stage breakdown of a call: how the marks add up, and what is timed where."""

from __future__ import annotations

import inspect

import anyio

from gateway.stages import _CURRENT, STAGES, Stages, record_tool, timed


def test_the_breakdown_splits_the_calls_time_and_adds_up() -> None:
    stages = Stages(received=1_000_000)
    stages.add("auth", 100_000)
    stages.add("rate", 50_000)
    stages.tool_started = 1_400_000  # 400 µs after receipt, 150 of them auth and rate
    stages.add("policy", 40_000)
    stages.add("audit", 300_000)
    stages.add("sandbox", 4_000_000)
    stages.tool_returned = 6_000_000  # 4.6 ms in the tool: 4.34 in the stages above
    breakdown = stages.breakdown(end=6_250_000)
    assert list(breakdown) == list(STAGES)
    assert breakdown == {
        "http_in": 250,
        "auth": 100,
        "rate": 50,
        "policy": 40,
        "audit": 300,
        "broker": 260,
        "sandbox": 4000,
        "encode": 250,
        "gateway": 1250,
    }
    assert sum(v for k, v in breakdown.items() if k not in ("gateway", "sandbox")) == breakdown["gateway"]


def test_a_call_that_never_reached_its_tool_is_all_framing() -> None:
    stages = Stages(received=0)
    stages.add("auth", 10_000)
    breakdown = stages.breakdown(end=90_000)
    assert breakdown["broker"] == breakdown["encode"] == breakdown["sandbox"] == 0
    assert breakdown["http_in"] == 80 and breakdown["gateway"] == 90


def test_time_outside_a_request_is_counted_nowhere_and_inside_one_in_its_stage() -> None:
    with timed("audit"):
        pass  # no request: nothing to count into, and nothing fails
    stages = Stages(received=0)
    token = _CURRENT.set(stages)
    try:
        with timed("audit"):
            sum(range(10_000))
        with timed("audit"):
            pass
    finally:
        _CURRENT.reset(token)
    assert stages.spent["audit"] > 0 and stages.spent["policy"] == 0


def test_a_recorded_tool_keeps_its_signature_and_kind_and_marks_its_start_and_return() -> None:
    async def tool(command: str, timeout_s: float | None = None) -> str:
        return command

    def plain(path: str) -> str:
        return path

    wrapped, wrapped_plain = record_tool(tool), record_tool(plain)
    assert inspect.signature(wrapped) == inspect.signature(tool)
    assert inspect.iscoroutinefunction(wrapped) and not inspect.iscoroutinefunction(wrapped_plain)
    stages = Stages(received=0)
    token = _CURRENT.set(stages)
    try:
        assert anyio.run(wrapped, "echo") == "echo"
    finally:
        _CURRENT.reset(token)
    assert 0 < stages.tool_started <= stages.tool_returned
    assert wrapped_plain("a") == "a", "outside a request it only runs the tool"
