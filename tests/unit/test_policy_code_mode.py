"""Code mode's policy: which upstream tools code in a sandbox may call, with which arguments.

The schema refuses what it cannot mean, the guardrail refuses code mode on the `exec` path, and
`decide_upstream` allows a call only when a rule names its server and tool and every argument
constraint holds; the bypass corpus holds the `prefix` constraint against path tricks.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from typing import Any

import pytest
import yaml

from policy import (
    ARGUMENT_NOT_ALLOWED,
    ARGUMENT_TOO_LARGE,
    CODE_MODE_OFF,
    UPSTREAM_NOT_ALLOWED,
    Denied,
    Policy,
    PolicyEngine,
    PolicyLoadError,
    Principal,
    Profile,
    UpstreamAllowed,
    argument_size,
    load_policy,
    load_policy_text,
)
from policy.errors import GuardrailViolation

NOTES: dict[str, Any] = {
    "server": "notes",
    "tools": ["search_notes", "read_note"],
    "arguments": {
        "path": {"prefix": "/public/"},
        "mode": {"one_of": ["read", "list"]},
        "query": {"max_length": 200},
    },
}
CODE_MODE: dict[str, Any] = {"allow": [NOTES, {"server": "wiki", "tools": ["*"]}]}
ALICE = Principal("alice")


def document(code_mode: Any = CODE_MODE, **sandbox: Any) -> dict[str, Any]:
    profile: dict[str, Any] = {
        "tools": ["execute_python"],
        "sandbox": {"images": ["mcp-code-executor:latest"], **sandbox},
    }
    if code_mode is not None:
        profile["code_mode"] = copy.deepcopy(code_mode)
    return {"version": 1, "profiles": {"default": profile}}


def load(code_mode: Any = CODE_MODE, **sandbox: Any) -> Policy:
    return load_policy_text(yaml.safe_dump(document(code_mode, **sandbox)))


def engine(code_mode: Any = CODE_MODE) -> PolicyEngine:
    return PolicyEngine(load(code_mode))


def decide(
    server: str = "notes", tool: str = "read_note", arguments: Any = None, mode: Any = CODE_MODE
) -> UpstreamAllowed | Denied:
    arguments = {} if arguments is None else arguments
    size = argument_size(arguments) if isinstance(arguments, dict) else 2
    return engine(mode).decide_upstream(ALICE, server, tool, arguments, size)


def with_rule(rule: dict[str, Any], **budgets: Any) -> dict[str, Any]:
    return {"allow": [rule], **budgets}


def refused_code(decision: UpstreamAllowed | Denied) -> str:
    assert isinstance(decision, Denied), decision
    return decision.reasons[0]


# --- the schema ---------------------------------------------------------------------------------


def test_defaults_and_sizes() -> None:
    mode = load(with_rule({"server": "notes", "tools": ["read_note"]})).profiles["default"].code_mode
    assert mode is not None
    assert (mode.calls_per_execution, mode.calls_per_minute, mode.call_timeout_s) == (100, 600, 30.0)
    assert (mode.max_argument_bytes, mode.max_result_bytes, mode.refuse_secrets) == (65536, 2**20, True)
    sized = load(with_rule({"server": "n", "tools": ["t"]}, max_result_bytes="4m", max_argument_bytes="1k"))
    assert sized.profiles["default"].code_mode is not None
    assert sized.profiles["default"].code_mode.max_result_bytes == 4 * 2**20


def test_code_mode_is_off_unless_a_profile_turns_it_on() -> None:
    shipped = PolicyEngine(load_policy())
    for name in shipped.policy.profiles:
        assert shipped.policy.profiles[name].code_mode is None
        decision = shipped.decide_upstream(Principal("p", profile=name), "notes", "read_note", {}, 2)
        assert isinstance(decision, Denied) and decision.reasons == (CODE_MODE_OFF,)
        assert decision.rule_ids == (f"profiles.{name}.code_mode",)
    assert refused_code(decide(mode=None)) == CODE_MODE_OFF


def test_a_policy_without_code_mode_keeps_its_digest() -> None:
    policy = load_policy()
    dump = policy.model_dump(mode="json")
    for profile in dump["profiles"].values():
        del profile["code_mode"], profile["egress"], profile["sandbox"]["host_labels"]  # unset: left out
    old = hashlib.sha256(json.dumps(dump, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert policy.digest() == old
    assert load().digest() != load(None).digest()


RULE = {"server": "notes", "tools": ["read_note"]}


@pytest.mark.parametrize(
    ("code_mode", "key", "rule"),
    [
        pytest.param({**CODE_MODE, "budget": 1}, "code_mode.budget", "unknown key", id="unknown-key"),
        pytest.param(with_rule({**RULE, "tool": "x"}), "allow[0].tool", "unknown key", id="rule-key"),
        pytest.param(
            with_rule({**RULE, "arguments": {"path": {"prefix": "/a/", "regex": ".*"}}}),
            "allow[0].arguments.path.regex",
            "unknown key",
            id="constraint-key",
        ),
        pytest.param({}, "code_mode.allow", "Field required", id="no-allow"),
        pytest.param({"allow": []}, "code_mode.allow", "at least 1", id="empty-allow"),
        pytest.param(with_rule({"server": "notes"}), "allow[0].tools", "Field required", id="rule-no-tools"),
        pytest.param(with_rule({**RULE, "tools": []}), "allow[0].tools", "at least 1", id="rule-empty-tools"),
        pytest.param(with_rule({**RULE, "server": ""}), "allow[0].server", "not a name", id="empty-server"),
        pytest.param(
            with_rule({**RULE, "server": "no/tes"}), "allow[0].server", "not a name", id="server-slash"
        ),
        pytest.param(
            with_rule({**RULE, "server": "nötes"}), "allow[0].server", "not a name", id="server-unicode"
        ),
        pytest.param(with_rule({**RULE, "server": 7}), "allow[0].server", "string", id="server-number"),
        pytest.param(
            with_rule({**RULE, "server": "notes\n"}), "allow[0].server", "not a name", id="server-newline"
        ),
        pytest.param(
            with_rule({**RULE, "tools": ["read\n"]}), "allow[0].tools", "not a name", id="tool-newline"
        ),
        pytest.param(
            with_rule({**RULE, "tools": ["read note"]}), "allow[0].tools", "not a name", id="tool-space"
        ),
        pytest.param(with_rule({**RULE, "tools": [""]}), "allow[0].tools", "not a name", id="tool-empty"),
        pytest.param(
            with_rule({**RULE, "tools": ["*", "read"]}), "allow[0].tools", "stands alone", id="star-mixed"
        ),
        pytest.param(with_rule({**RULE, "tools": ["a", "a"]}), "allow[0].tools", "twice", id="tool-twice"),
        pytest.param({"allow": [RULE, RULE]}, "code_mode", "one rule per tool", id="two-rules-one-tool"),
        pytest.param(
            {"allow": [RULE, {"server": "notes", "tools": ["*"]}]},
            "code_mode",
            "only rule",
            id="star-and-more",
        ),
        pytest.param(
            with_rule({**RULE, "arguments": {"bad name": {"max_length": 1}}}),
            "allow[0].arguments.bad name",
            "not a name",
            id="argument-name",
        ),
        pytest.param(with_rule({**RULE, "arguments": {"p": {}}}), "arguments.p", "at least one", id="empty"),
        *(
            pytest.param(
                with_rule({**RULE, "arguments": {"p": {"prefix": prefix}}}),
                "arguments.p.prefix",
                why,
                id=name,
            )
            for name, prefix, why in [
                ("prefix-no-slash", "/public", "end with '/'"),
                ("prefix-relative", "public/", "absolute"),
                ("prefix-dotdot", "/a/../b/", "segment"),
                ("prefix-dot", "/a/./", "segment"),
                ("prefix-double", "//", "empty segment"),
                ("prefix-inner-double", "/a//b/", "segment"),
                ("prefix-percent", "/a%2e/", "'%'"),
                ("prefix-backslash", "/a\\b/", "backslash"),
                ("prefix-control", "/a\x00/", "control"),
                ("prefix-fold", "/a\uff0e\uff0e/", "NFKC"),
            ]
        ),
        pytest.param(
            with_rule({**RULE, "arguments": {"p": {"one_of": []}}}), "one_of", "at least 1", id="one-of-empty"
        ),
        pytest.param(
            with_rule({**RULE, "arguments": {"p": {"one_of": [[1]]}}}),
            "one_of",
            "JSON scalars",
            id="one-of-list",
        ),
        pytest.param(
            with_rule({**RULE, "arguments": {"p": {"one_of": [{"a": 1}]}}}),
            "one_of",
            "scalars",
            id="one-of-dict",
        ),
        pytest.param(
            with_rule({**RULE, "arguments": {"p": {"one_of": [math.nan]}}}),
            "one_of",
            "scalars",
            id="one-of-nan",
        ),
        pytest.param(
            with_rule({**RULE, "arguments": {"p": {"one_of": ["a", "a"]}}}),
            "one_of",
            "twice",
            id="one-of-twice",
        ),
        pytest.param(
            with_rule({**RULE, "arguments": {"p": {"max_length": -1}}}),
            "max_length",
            "greater",
            id="length<0",
        ),
        pytest.param(
            with_rule({**RULE, "arguments": {"p": {"max_length": "10"}}}),
            "max_length",
            "integer",
            id="length-str",
        ),
        pytest.param(
            with_rule({**RULE, "arguments": {"p": {"required": "yes"}}}),
            "required",
            "boolean",
            id="required-str",
        ),
        *(
            pytest.param(with_rule(RULE, **{field: value}), f"code_mode.{field}", why, id=f"{field}={value}")
            for field, value, why in [
                ("calls_per_execution", 0, "greater than 0"),
                ("calls_per_minute", -1, "greater than 0"),
                ("max_argument_bytes", 0, "greater than 0"),
                ("max_argument_bytes", "5m", "less than or equal"),
                ("max_result_bytes", "5m", "less than or equal"),
                ("call_timeout_s", 0, "greater than 0"),
                ("call_timeout_s", 301, "less than or equal"),
                ("refuse_secrets", "maybe", "boolean"),
                ("refuse_secrets", "off", "valid boolean"),
                ("refuse_secrets", 0, "valid boolean"),
                ("calls_per_execution", True, "valid integer"),
                ("calls_per_minute", "600", "valid integer"),
                ("call_timeout_s", True, "valid number"),
            ]
        ),
    ],
)
def test_the_schema_refuses_what_it_cannot_mean(code_mode: dict[str, Any], key: str, rule: str) -> None:
    with pytest.raises(PolicyLoadError) as caught:
        load(code_mode)
    assert caught.value.key.startswith("profiles.default.code_mode"), caught.value
    assert key in caught.value.key and rule in str(caught.value), caught.value


def test_a_duplicate_key_in_code_mode_fails_the_load() -> None:
    text = yaml.safe_dump(document()).replace(
        "    code_mode:\n", "    code_mode:\n      calls_per_execution: 1\n      calls_per_execution: 1000\n"
    )
    with pytest.raises(PolicyLoadError, match="duplicate key 'calls_per_execution'"):
        load_policy_text(text)


# --- the guardrail ------------------------------------------------------------------------------


def test_code_mode_needs_the_agent_exec_path() -> None:
    with pytest.raises(GuardrailViolation) as caught:
        load(exec_path="exec")
    assert caught.value.key == "profiles.default.code_mode"
    assert "code-mode-needs-agent" in str(caught.value)
    assert "code mode needs exec_path: agent" in str(caught.value)
    assert load(None, exec_path="exec").profiles["default"].code_mode is None


def test_the_guardrail_sees_what_a_profile_inherits() -> None:
    doc = document()
    doc["profiles"]["child"] = {"extends": "default", "sandbox": {"exec_path": "exec"}}
    with pytest.raises(GuardrailViolation, match=r"profiles\.child\.code_mode: forbidden by guardrail"):
        load_policy_text(yaml.safe_dump(doc))
    doc["profiles"]["child"]["code_mode"] = None  # turned off in the child: loads
    assert load_policy_text(yaml.safe_dump(doc)).profiles["child"].code_mode is None


def test_the_model_refuses_code_mode_on_exec_even_without_the_loader() -> None:
    body = document(exec_path="exec")["profiles"]["default"]
    with pytest.raises(ValueError, match="code mode needs exec_path: agent"):
        Profile.model_validate(body)


# --- decisions ----------------------------------------------------------------------------------


def test_an_allowed_call_carries_the_rule_and_the_budgets() -> None:
    mode = {**CODE_MODE, "calls_per_execution": 7, "call_timeout_s": 12, "refuse_secrets": False}
    decision = decide(arguments={"path": "/public/a.md", "mode": "read", "query": "q"}, mode=mode)
    assert isinstance(decision, UpstreamAllowed) and decision.allowed
    assert (decision.server, decision.tool, decision.profile) == ("notes", "read_note", "default")
    assert decision.rule_id == "profiles.default.code_mode.allow[0]" and decision.rule_ids == (
        decision.rule_id,
    )
    assert (decision.calls_per_execution, decision.calls_per_minute) == (7, 600)
    assert (decision.max_result_bytes, decision.call_timeout_s, decision.refuse_secrets) == (
        2**20,
        12.0,
        False,
    )
    assert decision.policy_digest == load(mode).digest() and decision.reasons == ("allowed",)


def test_star_allows_every_tool_of_its_server_only() -> None:
    for tool in ("anything", "delete_page", "x.y-z"):
        decision = decide("wiki", tool)
        assert isinstance(decision, UpstreamAllowed) and decision.rule_id.endswith("allow[1]")
    assert refused_code(decide("notes", "delete_note")) == UPSTREAM_NOT_ALLOWED
    assert refused_code(decide("wiki2", "anything")) == UPSTREAM_NOT_ALLOWED


@pytest.mark.parametrize(
    ("server", "tool"),
    [
        ("notes", "write_note"),
        ("Notes", "read_note"),
        ("notes", "READ_NOTE"),
        ("notes", "read_note "),
        ("files", "read_note"),
        ("", ""),
        ("notes", "*"),
        (None, "read_note"),
        ("notes", 1),
        ("wiki", "*"),
        ("wiki", ""),
        ("wiki", "page\n"),
        ("wiki", "../admin"),
        ("wiki", "a b"),
        ("wiki", "a" * 129),
        ("wiki\n", "page"),
    ],
)
def test_a_call_outside_the_allow_list_is_refused(server: Any, tool: Any) -> None:
    decision = decide(server, tool)
    assert isinstance(decision, Denied) and decision.reasons == (UPSTREAM_NOT_ALLOWED,)
    assert decision.rule_ids == ("profiles.default.code_mode.allow",)


def test_a_refusal_never_echoes_much_of_what_the_sandbox_sent() -> None:
    long = "A" * 10_000
    for decision in (
        decide(long, long),
        decide(arguments={"path": "/public/" + long + "/../x"}),
        decide(arguments={"mode": long}),
        decide(arguments={"path": "/public/x\n" + long}),
    ):
        assert isinstance(decision, Denied)
        assert "A" * 81 not in decision.message and "\n" not in decision.message, decision.message


def test_arguments_larger_than_the_limit_are_refused() -> None:
    policy = engine(with_rule(RULE, max_argument_bytes=100))
    assert isinstance(policy.decide_upstream(ALICE, "notes", "read_note", {}, 100), UpstreamAllowed)
    for size in (101, 10**9, -1, True, 1.5):
        decision = policy.decide_upstream(ALICE, "notes", "read_note", {}, size)  # type: ignore[arg-type]
        assert isinstance(decision, Denied) and decision.reasons == (ARGUMENT_TOO_LARGE,), size
        assert decision.rule_ids == ("profiles.default.code_mode.max_argument_bytes",)


def test_argument_size_is_the_compact_json() -> None:
    assert argument_size({"a": "b"}) == len('{"a":"b"}')
    assert argument_size({"é": 1}) == len('{"\\u00e9":1}')


def test_arguments_that_are_not_an_object_are_refused() -> None:
    for arguments in (["/public/x"], "path=/public/x", None):
        decision = engine().decide_upstream(ALICE, "notes", "read_note", arguments, 2)  # type: ignore[arg-type]
        assert isinstance(decision, Denied) and decision.reasons == (ARGUMENT_NOT_ALLOWED,)
        assert decision.rule_ids == ("profiles.default.code_mode.allow[0].arguments",)


def test_absent_arguments_pass_unless_required_and_others_are_not_policed() -> None:
    assert isinstance(decide(arguments={}), UpstreamAllowed), "the upstream's default applies"
    assert isinstance(decide(arguments={"other": "/etc/passwd", "n": [1]}), UpstreamAllowed)
    required = with_rule({**RULE, "arguments": {"path": {"prefix": "/public/", "required": True}}})
    decision = decide(arguments={}, mode=required)
    assert isinstance(decision, Denied) and decision.reasons == (ARGUMENT_NOT_ALLOWED,)
    assert "required" in decision.message
    assert decision.rule_ids == ("profiles.default.code_mode.allow[0].arguments.path",)
    assert isinstance(decide(arguments={"path": "/public/x"}, mode=required), UpstreamAllowed)


def test_a_profile_the_policy_lacks_is_refused() -> None:
    decision = engine().decide_upstream(Principal("p", profile="nope"), "notes", "read_note", {}, 2)
    assert isinstance(decision, Denied) and decision.reasons == ("unknown-profile",)


def test_the_policys_mappings_choose_the_profile() -> None:
    doc = document(None)
    doc["profiles"]["coder"] = document()["profiles"]["default"]
    doc["tenants"] = {"acme": "coder"}
    policy = PolicyEngine(load_policy_text(yaml.safe_dump(doc)))
    assert isinstance(policy.decide_upstream(Principal("p", "acme"), "wiki", "t", {}, 2), UpstreamAllowed)
    denied = policy.decide_upstream(Principal("p", "other"), "wiki", "t", {}, 2)
    assert isinstance(denied, Denied) and denied.reasons == (CODE_MODE_OFF,)


# --- the prefix constraint: a bypass corpus ------------------------------------------------------

#: Values `prefix: /public/` must refuse, each a way to name something outside `/public/`, or to
#: make an upstream that decodes, folds or strips characters find one.
BYPASSES = {
    "dotdot": "/public/../etc/passwd",
    "dotdot-deep": "/public/a/../../etc/passwd",
    "dotdot-last": "/public/x/..",
    "dot": "/public/./x",
    "dot-last": "/public/x/.",
    "double-slash": "/public//x",
    "leading-double-slash": "//public/x",
    "the-directory": "/public",
    "the-directory-slash": "/public/",
    "trailing-slash": "/public/x/",
    "sibling": "/publicx/y",
    "upper-case": "/PUBLIC/x",
    "relative": "public/x",
    "leading-space": " /public/x",
    "outside-then-in": "/private/../public/x",
    "nul": "/public/x\x00",
    "nul-first": "\x00/public/x",
    "newline": "/public/x\n",
    "carriage-return": "/public/x\r/../y",
    "tab": "/public/\tx",
    "escape": "/public/\x1b[2J",
    "delete": "/public/x\x7f",
    "percent-dots": "/public/%2e%2e/etc/passwd",
    "percent-slash": "/public/x%2F..%2F..%2Fetc",
    "percent-literal": "/public/100%",
    "backslash": "/public/..\\..\\etc\\passwd",
    "backslash-root": "\\public\\x",
    "two-dot-leader": "/public/\u2025/etc/passwd",
    "one-dot-leader": "/public/\u2024\u2024/etc",
    "fullwidth-dots": "/public/\uff0e\uff0e/etc/passwd",
    "fullwidth-slash": "/public\uff0f..\uff0fetc",
    "nbsp": "/public/\u00a0",
    "zero-width": "/public/x\u200b",
    "rtl-override": "/public/\u202etxt.exe",
    "line-separator": "/public/x\u2028",
    "lone-surrogate": "/public/\ud800",
    "private-use": "/public/\ue000",
    "dots-only": "/public/...",
    "dotdot-space": "/public/.. /etc",
    "dot-space-dot": "/public/. ./etc",
    "too-long": "/public/" + "a" * 5000,
    "empty": "",
    "root": "/",
}
#: Values it must let through.
FINE = {
    "file": "/public/x",
    "deep": "/public/notes/2024/a.md",
    "dot-file": "/public/.hidden",
    "dots-in-name": "/public/..x/y..",
    "space": "/public/my notes/a b.md",
    "accented": "/public/caf\u00e9.md",
    "long": "/public/" + "a" * 4000,
}


@pytest.mark.parametrize("value", BYPASSES.values(), ids=BYPASSES.keys())
def test_the_prefix_constraint_refuses_every_bypass(value: str) -> None:
    decision = decide(arguments={"path": value})
    assert isinstance(decision, Denied) and decision.reasons == (ARGUMENT_NOT_ALLOWED,), value
    assert decision.rule_ids == ("profiles.default.code_mode.allow[0].arguments.path",)
    assert "'path'" in decision.message


@pytest.mark.parametrize("value", FINE.values(), ids=FINE.keys())
def test_the_prefix_constraint_allows_paths_below_it(value: str) -> None:
    assert isinstance(decide(arguments={"path": value}), UpstreamAllowed)


@pytest.mark.parametrize("value", [["/public/x"], {"p": "/public/x"}, 1, 1.5, None, True], ids=repr)
def test_the_prefix_constraint_refuses_what_is_not_a_string(value: Any) -> None:
    decision = decide(arguments={"path": value})
    assert isinstance(decision, Denied) and "must be a string" in decision.message


def test_a_root_prefix_still_wants_a_canonical_path_below_it() -> None:
    mode = with_rule({**RULE, "arguments": {"path": {"prefix": "/"}}})
    assert isinstance(decide(arguments={"path": "/etc/x"}, mode=mode), UpstreamAllowed)
    for value in ("/", "//x", "/a/../b", "x"):
        assert refused_code(decide(arguments={"path": value}, mode=mode)) == ARGUMENT_NOT_ALLOWED


# --- one_of and max_length ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("one_of", "allowed", "refused"),
    [
        pytest.param([1], [1], ["1", True, 1.0, [1], None], id="int"),
        pytest.param(["read"], ["read"], ["READ", "read ", "rea", ["read"], {"read": 1}], id="str"),
        pytest.param([True], [True], [1, "true", 1.0], id="true"),
        pytest.param([False], [False], [0, "", None, 0.0], id="false"),
        pytest.param([None], [None], ["null", 0, False, ""], id="null"),
        pytest.param([1.5, "x"], [1.5, "x"], ["1.5", 2], id="mixed"),
        pytest.param([0], [0], [False, 0.0, "0"], id="zero"),
    ],
)
def test_one_of_compares_json_values_with_their_type(
    one_of: list[Any], allowed: list[Any], refused: list[Any]
) -> None:
    mode = with_rule({**RULE, "arguments": {"v": {"one_of": one_of}}})
    for value in allowed:
        assert isinstance(decide(arguments={"v": value}, mode=mode), UpstreamAllowed), value
    for value in refused:
        assert refused_code(decide(arguments={"v": value}, mode=mode)) == ARGUMENT_NOT_ALLOWED, value


def test_max_length_counts_characters_of_strings_only() -> None:
    mode = with_rule({**RULE, "arguments": {"q": {"max_length": 5}}})
    for fine in ("", "12345", "\u00e9\u00e9\u00e9\u00e9\u00e9"):
        assert isinstance(decide(arguments={"q": fine}, mode=mode), UpstreamAllowed), fine
    wrong: list[Any] = ["123456", 12345, ["a"], None, {"a": "b"}]
    for value in wrong:
        assert refused_code(decide(arguments={"q": value}, mode=mode)) == ARGUMENT_NOT_ALLOWED, value


def test_constraints_of_one_argument_all_hold() -> None:
    mode = with_rule({**RULE, "arguments": {"path": {"prefix": "/public/", "max_length": 12}}})
    assert isinstance(decide(arguments={"path": "/public/abcd"}, mode=mode), UpstreamAllowed)
    assert refused_code(decide(arguments={"path": "/public/abcde"}, mode=mode)) == ARGUMENT_NOT_ALLOWED
    assert refused_code(decide(arguments={"path": "/pub/a"}, mode=mode)) == ARGUMENT_NOT_ALLOWED
