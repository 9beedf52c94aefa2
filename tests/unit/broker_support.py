"""Helpers for the engine-free tests of the broker, the service and the tools: policies made from the
shipped one, audit events read back, a wall clock the test moves, and a bounded wait."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
import yaml

from audit import MemorySink
from gateway.backend.commands import bash_argv
from policy import Action, Decision, Policy, Principal, default_policy_path, load_policy_text
from policy.engine import PolicyEngine

__all__ = [
    "GATEWAY",
    "Clock",
    "bash",
    "decide",
    "events",
    "make_policy",
    "removal_reasons",
    "until",
]

GATEWAY = "unit-gw"


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and key in merged else value
    return merged


def make_policy(exec_path: str = "agent", /, **profiles: dict[str, Any]) -> Policy:
    """The shipped policy (policy/profiles/default.yaml) with `exec_path` in every profile and each
    keyword's settings merged into that profile, before `extends:` is resolved (so changes to
    `default` reach the profiles that extend it)."""
    return _policy(exec_path, json.dumps(profiles, sort_keys=True))


@functools.cache
def _policy(exec_path: str, profiles_json: str) -> Policy:
    """Policies are immutable: each distinct one is loaded once per test run."""
    profiles: dict[str, dict[str, Any]] = json.loads(profiles_json)
    raw = yaml.safe_load(default_policy_path().read_text(encoding="utf-8"))
    raw["profiles"]["default"] = _merge(raw["profiles"]["default"], {"sandbox": {"exec_path": exec_path}})
    for name, settings in profiles.items():
        raw["profiles"][name] = _merge(raw["profiles"].get(name, {}), settings)
    return load_policy_text(yaml.safe_dump(raw), source="unit-test.yaml")


def bash(code: str) -> list[str]:
    """The argv the service makes for `execute_bash` (its timeout comes with the decision)."""
    return bash_argv(code)


def decide(engine: PolicyEngine, principal: Principal, tool: str = "execute_bash") -> Decision:
    decision = engine.evaluate(principal, Action(tool=tool))
    assert decision.allowed, decision.message
    return decision


def events(sink: MemorySink, kind: str | None = None) -> list[dict[str, Any]]:
    parsed = [json.loads(line) for line in sink.lines]
    return [e for e in parsed if kind is None or e["event"] == kind]


def removal_reasons(sink: MemorySink) -> dict[str, str]:
    """container id -> the reason of its `sandbox.remove` event."""
    return {e["resource"]["container_id"]: e["detail"]["reason"] for e in events(sink, "sandbox.remove")}


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition") -> None:
    """Poll `predicate` until it holds; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await anyio.sleep(0.002)


class Clock:
    """The wall clock (`time.time`) moved forward by the test; everything else keeps real time."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = 0.0
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + self.offset)

    def advance(self, seconds: float) -> None:
        self.offset += seconds
