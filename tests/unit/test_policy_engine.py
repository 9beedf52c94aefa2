"""The engine's allow/deny matrix for the shipped default policy."""

import pytest

from policy import Action, Allowed, Denied, Principal, load_policy
from policy.engine import PolicyEngine

ENGINE = PolicyEngine(load_policy())
ALICE = Principal(id="alice")


@pytest.mark.parametrize(
    ("action", "allowed", "reason"),
    [
        pytest.param(Action("execute_bash", 10), True, "allowed", id="bash-allowed"),
        pytest.param(Action("execute_python", 10), True, "allowed", id="python-allowed"),
        pytest.param(
            Action("admin_list_sandboxes", 10), False, "tool-not-allowed", id="unlisted-tool-denied"
        ),
        pytest.param(Action("execute_bash", 10, timeout_s=5), True, "allowed", id="shorter-timeout-allowed"),
        pytest.param(Action("execute_bash", 10, timeout_s=30), True, "allowed", id="timeout-at-max-allowed"),
        pytest.param(
            Action("execute_bash", 10, timeout_s=31), False, "timeout-above-max", id="longer-timeout-denied"
        ),
        pytest.param(
            Action("execute_bash", 10, timeout_s=0), False, "timeout-invalid", id="zero-timeout-denied"
        ),
        pytest.param(
            Action("execute_bash", 10, timeout_s=-1), False, "timeout-invalid", id="negative-timeout-denied"
        ),
        pytest.param(
            Action("execute_bash", 10, timeout_s=float("nan")), False, "timeout-invalid", id="nan-timeout"
        ),
        pytest.param(Action("execute_bash", 256 * 1024 + 1), False, "input-too-large", id="oversized-input"),
        pytest.param(
            Action("execute_bash", 10, image="alpine:latest"),
            False,
            "image-not-allowed",
            id="foreign-image-denied",
        ),
        pytest.param(
            Action("execute_bash", 10, image="mcp-code-executor:latest"),
            True,
            "allowed",
            id="listed-image-allowed",
        ),
    ],
)
def test_default_policy_decides(action: Action, allowed: bool, reason: str) -> None:
    decision = ENGINE.evaluate(ALICE, action)
    assert decision.allowed is allowed
    assert decision.reasons == (reason,)
    assert decision.policy_digest == ENGINE.digest
    assert decision.rule_ids, "every decision names the rule that decided"


def test_allowed_decision_carries_spec_limits_and_default_timeout() -> None:
    decision = ENGINE.evaluate(ALICE, Action("execute_bash", 1))
    assert isinstance(decision, Allowed)
    assert decision.timeout_s == 30
    assert decision.image == "mcp-code-executor:latest"
    assert decision.spec.read_only_rootfs and decision.spec.network == "none"


def test_denied_decision_carries_no_spec() -> None:
    decision = ENGINE.evaluate(ALICE, Action("execute_bash", 1, timeout_s=99))
    assert isinstance(decision, Denied)
    assert not any(hasattr(decision, name) for name in ("spec", "limits", "image", "timeout_s"))
    assert "99" in decision.message


def test_unknown_profile_is_denied() -> None:
    decision = ENGINE.evaluate(Principal(id="bob", profile="nope"), Action("execute_bash", 1))
    assert not decision.allowed
    assert decision.reasons == ("unknown-profile",)


def test_digest_is_stable_and_changes_with_content() -> None:
    again = load_policy()
    assert again.digest() == ENGINE.digest
    text = load_policy().model_copy()
    assert text.digest() == ENGINE.digest
    changed = ENGINE.policy.model_copy(deep=True)
    profile = changed.profiles["default"]
    changed = changed.model_copy(
        update={"profiles": {"default": profile.model_copy(update={"tools": ("execute_bash",)})}}
    )
    assert changed.digest() != ENGINE.digest
