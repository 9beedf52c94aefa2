"""`policy diff`, `policy explain --upstream` and the policy views on code mode: every widening is
WEAKER, its reverse stronger, and an operator sees each profile's code mode."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.calls.explain import explain_upstream, profile_limits
from gateway.cli import main
from policy import PolicyEngine, Principal, load_policy
from policy.diff import diff_policies, render_diff
from tests.unit.test_policy_code_mode import CODE_MODE, document, load

Edit = Callable[[dict[str, Any]], None]


def edited(edit: Edit) -> dict[str, Any]:
    mode = copy.deepcopy(CODE_MODE)
    edit(mode)
    return mode


def set_in(path: str, value: Any) -> Edit:
    """An edit setting `path` (dots; digits index lists) of the code_mode mapping; None deletes."""

    def edit(mode: dict[str, Any]) -> None:
        *parents, last = [int(part) if part.isdigit() else part for part in path.split(".")]
        node: Any = mode
        for part in parents:
            node = node[part]
        if value is None:
            del node[last]
        else:
            node[last] = value

    return edit


NOTES = "code_mode.allow[notes/read_note]"
PATH = f"{NOTES}.arguments.path"
#: (edit, field, verdict): each change of the old CODE_MODE and what `policy diff` must call it.
CHANGES = {
    "tool-added": (
        set_in("allow.0.tools", ["search_notes", "read_note", "write_note"]),
        "code_mode.allow[notes/write_note]",
        "weaker",
    ),
    "tool-removed": (set_in("allow.0.tools", ["search_notes"]), NOTES, "stronger"),
    "server-added": (
        lambda m: m["allow"].append({"server": "mail", "tools": ["send"]}),
        "code_mode.allow[mail/send]",
        "weaker",
    ),
    "server-removed": (lambda m: m["allow"].pop(1), "code_mode.allow[wiki/*]", "stronger"),
    "star-added": (set_in("allow.0.tools", ["*"]), "code_mode.allow[notes/*]", "weaker"),
    "star-removed": (set_in("allow.1.tools", ["read_page"]), "code_mode.allow[wiki/*]", "stronger"),
    "constraint-removed": (set_in("allow.0.arguments.path", None), PATH, "weaker"),
    "constraint-added": (
        set_in("allow.0.arguments.limit", {"max_length": 3}),
        f"{NOTES}.arguments.limit",
        "stronger",
    ),
    "prefix-wider": (set_in("allow.0.arguments.path.prefix", "/"), f"{PATH}.prefix", "weaker"),
    "prefix-elsewhere": (set_in("allow.0.arguments.path.prefix", "/private/"), f"{PATH}.prefix", "weaker"),
    "prefix-narrower": (
        set_in("allow.0.arguments.path.prefix", "/public/docs/"),
        f"{PATH}.prefix",
        "stronger",
    ),
    "prefix-dropped": (set_in("allow.0.arguments.path", {"max_length": 100}), f"{PATH}.prefix", "weaker"),
    "required-false-changes-nothing": (set_in("allow.0.arguments.path.required", False), None, None),
    "one-of-value-added": (
        set_in("allow.0.arguments.mode.one_of", ["read", "list", "write"]),
        f"{NOTES}.arguments.mode.one_of",
        "weaker",
    ),
    "one-of-value-removed": (
        set_in("allow.0.arguments.mode.one_of", ["read"]),
        f"{NOTES}.arguments.mode.one_of",
        "stronger",
    ),
    "one-of-type-changed": (
        set_in("allow.0.arguments.mode.one_of", ["read", 1]),
        f"{NOTES}.arguments.mode.one_of",
        "weaker",
    ),
    "max-length-higher": (
        set_in("allow.0.arguments.query.max_length", 10_000),
        f"{NOTES}.arguments.query.max_length",
        "weaker",
    ),
    "max-length-lower": (
        set_in("allow.0.arguments.query.max_length", 20),
        f"{NOTES}.arguments.query.max_length",
        "stronger",
    ),
    "max-length-dropped": (
        set_in("allow.0.arguments.query", {"required": True}),
        f"{NOTES}.arguments.query.max_length",
        "weaker",
    ),
    "calls-per-execution": (set_in("calls_per_execution", 1000), "code_mode.calls_per_execution", "weaker"),
    "calls-per-minute": (set_in("calls_per_minute", 6000), "code_mode.calls_per_minute", "weaker"),
    "argument-bytes": (set_in("max_argument_bytes", "1m"), "code_mode.max_argument_bytes", "weaker"),
    "result-bytes": (set_in("max_result_bytes", "4m"), "code_mode.max_result_bytes", "weaker"),
    "result-bytes-lower": (set_in("max_result_bytes", "64k"), "code_mode.max_result_bytes", "stronger"),
    "timeout": (set_in("call_timeout_s", 300), "code_mode.call_timeout_s", "weaker"),
    "timeout-lower": (set_in("call_timeout_s", 5), "code_mode.call_timeout_s", "stronger"),
    "secrets-off": (set_in("refuse_secrets", False), "code_mode.refuse_secrets", "weaker"),
}


#: Changes that widen whichever way they are made: a prefix moved elsewhere, a value swapped.
BOTH_WAYS_WEAKER = {"prefix-elsewhere", "one-of-type-changed"}
REVERSE = {"weaker": "stronger", "stronger": "weaker", None: None}


@pytest.mark.parametrize(
    ("edit", "field", "verdict", "back"),
    [
        pytest.param(
            edit, field, verdict, "weaker" if name in BOTH_WAYS_WEAKER else REVERSE[verdict], id=name
        )
        for name, (edit, field, verdict) in CHANGES.items()
    ],
)
def test_each_code_mode_change_gets_its_verdict(
    edit: Edit, field: str | None, verdict: str | None, back: str | None
) -> None:
    old, new = load(), load(edited(edit))
    found = {c.field: c.verdict for c in diff_policies(old, new)}
    if field is None:
        assert found == {}, "nothing that was not there before"
        return
    assert found.get(field) == verdict, found
    undone = {c.field: c.verdict for c in diff_policies(new, old)}
    assert undone.get(field) == back, undone


def test_required_dropped_is_weaker() -> None:
    required = edited(set_in("allow.0.arguments.path.required", True))
    found = {c.field: c.verdict for c in diff_policies(load(required), load())}
    assert found == {
        f"{PATH}.required": "weaker",
        "code_mode.allow[notes/search_notes].arguments.path.required": "weaker",
    }


def test_turning_code_mode_on_is_weaker_and_lists_what_it_allows() -> None:
    changes = diff_policies(load(None), load())
    found = {c.field: (c.new, c.verdict) for c in changes}
    assert found["code_mode"] == ("on", "weaker")
    assert found["code_mode.allow[notes/read_note]"][1] == "weaker"
    assert "prefix /public/" in found["code_mode.allow[notes/read_note]"][0]
    assert found["code_mode.allow[wiki/*]"][1] == "weaker"
    assert {c.verdict for c in diff_policies(load(), load(None))} == {"stronger"}


def test_star_is_marked_so_it_cannot_be_missed() -> None:
    report = render_diff(diff_policies(load(None), load()))
    assert "!! WEAKER   code_mode.allow[wiki/*]: None -> added: EVERY tool of the server ('*')" in report


def test_a_tool_once_allowed_by_star_is_compared_by_its_constraints() -> None:
    star = {"allow": [{"server": "notes", "tools": ["*"], "arguments": {"path": {"prefix": "/public/"}}}]}
    named = {"allow": [{"server": "notes", "tools": ["read_note"]}]}
    found = {c.field: c.verdict for c in diff_policies(load(star), load(named))}
    assert found == {
        "code_mode.allow[notes/*]": "stronger",
        "code_mode.allow[notes/read_note].arguments.path": "weaker",
    }


def test_moving_a_tool_between_rules_alone_changes_nothing() -> None:
    split = copy.deepcopy(CODE_MODE)
    split["allow"][0]["tools"] = ["read_note"]
    split["allow"].append({**copy.deepcopy(CODE_MODE["allow"][0]), "tools": ["search_notes"]})
    assert diff_policies(load(), load(split)) == []
    assert diff_policies(load(), load()) == []


# --- what an operator sees ----------------------------------------------------------------------


def test_profile_limits_show_code_mode_on_and_off() -> None:
    shipped = profile_limits(PolicyEngine(load_policy()))
    assert all(limits.code_mode is None for limits in shipped)
    (limits,) = profile_limits(PolicyEngine(load()))
    assert limits.code_mode is not None
    assert limits.code_mode.allow == [
        'notes/search_notes (mode: one_of ["read", "list"]; path: prefix /public/; query: max_length 200)',
        'notes/read_note (mode: one_of ["read", "list"]; path: prefix /public/; query: max_length 200)',
        "wiki/*",
    ]
    assert (limits.code_mode.calls_per_execution, limits.code_mode.refuse_secrets) == (100, True)


def test_the_console_shows_code_mode_per_profile() -> None:
    from frontend.format import policy_view

    profiles = [limits.model_dump(mode="json") for limits in profile_limits(PolicyEngine(load()))]
    view = policy_view({"tenant": "t", "profiles": [*profiles, {"name": "other", "code_mode": None}]})
    assert "| code mode | on: notes/search_notes (mode: one_of" in view and "wiki/*" in view
    assert view.split("| code mode |")[1].split("\n")[0].rstrip().endswith("| off |")


def test_explain_upstream_gives_the_decision_and_budgets() -> None:
    engine = PolicyEngine(load())
    allowed = explain_upstream(engine, Principal("alice"), "notes", "read_note", {"path": "/public/a"})
    assert allowed.allowed and allowed.effective is not None and allowed.effective.max_result_bytes == 2**20
    assert allowed.rule_ids == ["profiles.default.code_mode.allow[0]"]
    denied = explain_upstream(engine, Principal("alice"), "notes", "read_note", {"path": "/etc/passwd"})
    assert not denied.allowed and denied.reasons == ["argument-not-allowed"] and denied.effective is None


def test_policy_explain_upstream_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(document()))
    argv = ["policy", "explain", "--policy", str(policy), "--principal", "alice", "--upstream"]
    assert main([*argv, "wiki/edit_page"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["allowed"] and report["effective"]["call_timeout_s"] == 30
    assert main([*argv, "notes/read_note", "--args", '{"path": "/public/../x"}']) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["reasons"] == ["argument-not-allowed"] and "effective" not in report
    assert main(["policy", "explain", "--principal", "alice", "--upstream", "notes/read_note"]) == 1
    assert json.loads(capsys.readouterr().out)["reasons"] == ["code-mode-off"]
    assert main([*argv, "notes"]) != 0
    assert "SERVER/TOOL" in capsys.readouterr().err
