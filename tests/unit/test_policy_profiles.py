"""Profiles: inheritance, principal and tenant mapping, pinned images, lifecycle and rates."""

import pytest

from policy import Action, Allowed, PolicyLoadError, Principal, load_policy, load_policy_text
from policy.diff import diff_policies
from policy.engine import PolicyEngine
from policy.errors import GuardrailViolation

DIGEST = "sha256:" + "ab" * 32

BASE = """
version: 1
principals: {carol: small}
tenants: {acme: small}
profiles:
  base:
    tools: [execute_bash, execute_python]
    sandbox:
      images: [img:1, "img:2@DIGEST"]
      memory: 512m
      memory_swap: 512m
      tmpfs: [{path: /tmp, size: 64m}, {path: /workspace, size: 128m}]
    exec: {max_timeout_s: 30, default_timeout_s: 20}
  small:
    extends: base
    tools: [execute_python]
    sandbox: {memory: 128m, memory_swap: 128m}
    exec: {max_timeout_s: 5, default_timeout_s: 5}
  smaller:
    extends: small
    sandbox: {tmpfs: [{path: /tmp, size: 1m}]}
""".replace("DIGEST", DIGEST)


def test_a_child_inherits_and_overrides_its_parent() -> None:
    policy = load_policy_text(BASE)
    small, smaller = policy.profiles["small"], policy.profiles["smaller"]
    assert small.sandbox.memory == 128 * 1024**2
    assert small.sandbox.images == policy.profiles["base"].sandbox.images
    assert small.exec.max_timeout_s == 5
    assert small.tools == ("execute_python",)
    assert smaller.sandbox.memory == 128 * 1024**2, "grandchildren inherit through the chain"
    assert [m.path for m in smaller.sandbox.tmpfs] == ["/tmp"], "lists replace, they do not merge"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        pytest.param(
            "version: 1\nprofiles:\n  a: {extends: b, tools: [execute_bash]}\n"
            "  b: {extends: a, tools: [execute_bash]}\n",
            "inheritance cycle",
            id="cycle",
        ),
        pytest.param(
            "version: 1\nprofiles:\n  a: {extends: nope, tools: [execute_bash]}\n",
            "profiles.a.extends: names no profile",
            id="unknown-parent",
        ),
        pytest.param(BASE + "principals: {}\n", "duplicate key", id="duplicate-section"),
        pytest.param(
            BASE.replace("carol: small", "carol: huge"),
            "principals.carol maps to profile 'huge'",
            id="mapping-to-unknown-profile",
        ),
    ],
)
def test_bad_inheritance_and_mappings_fail_to_load(text: str, match: str) -> None:
    with pytest.raises(PolicyLoadError, match=match):
        load_policy_text(text)


def test_a_child_cannot_switch_on_what_guardrails_forbid() -> None:
    text = BASE + "  evil:\n    extends: base\n    sandbox: {privileged: true}\n"
    with pytest.raises(GuardrailViolation, match=r"profiles\.evil\.sandbox\.privileged"):
        load_policy_text(text)


@pytest.mark.parametrize(
    ("principal", "profile"),
    [
        pytest.param(Principal("carol", "default", "base"), "small", id="principal-mapping-wins-over-token"),
        pytest.param(Principal("dave", "acme", "base"), "small", id="tenant-mapping-wins-over-token"),
        pytest.param(Principal("erin", "other", "base"), "base", id="token-profile-otherwise"),
    ],
)
def test_the_governing_profile(principal: Principal, profile: str) -> None:
    decision = PolicyEngine(load_policy_text(BASE)).evaluate(principal, Action("execute_python", 1))
    assert decision.profile == profile


def test_a_mapped_principal_gets_its_profiles_denials() -> None:
    engine = PolicyEngine(load_policy_text(BASE))
    assert engine.evaluate(Principal("erin", profile="base"), Action("execute_bash", 1)).allowed
    denied = engine.evaluate(Principal("carol", profile="base"), Action("execute_bash", 1))
    assert denied.reasons == ("tool-not-allowed",)
    assert denied.rule_ids == ("profiles.small.tools",)


def test_pinned_images_carry_their_digest_into_the_decision() -> None:
    engine = PolicyEngine(load_policy_text(BASE))
    principal = Principal("erin", profile="base")
    pinned = engine.evaluate(principal, Action("execute_bash", 1, image="img:2"))
    unpinned = engine.evaluate(principal, Action("execute_bash", 1, image="img:1"))
    assert isinstance(pinned, Allowed) and pinned.image_digest == DIGEST
    assert isinstance(unpinned, Allowed) and unpinned.image_digest is None
    assert not engine.evaluate(principal, Action("execute_bash", 1, image="img:3")).allowed


@pytest.mark.parametrize(
    "entry",
    ["img@sha256:short", "img@md5:" + "a" * 32, "has space:1", "@sha256:" + "a" * 64],
    ids=["short-digest", "wrong-algorithm", "space", "no-name"],
)
def test_malformed_image_references_fail_to_load(entry: str) -> None:
    with pytest.raises(PolicyLoadError, match=r"sandbox\.images"):
        load_policy_text(BASE.replace("img:1", f'"{entry}"'))


@pytest.mark.parametrize("rate", ["lots", "10 per fortnight", "-1/minute"], ids=["word", "unit", "negative"])
def test_malformed_rates_fail_to_load(rate: str) -> None:
    text = BASE + f"    rate_limits: {{requests: '{rate}'}}\n"
    with pytest.raises(PolicyLoadError, match=r"rate_limits\.requests"):
        load_policy_text(text)


def test_shipped_profiles_strict_is_nowhere_weaker_than_default() -> None:
    policy = load_policy()
    assert set(policy.profiles) == {"default", "strict", "data-science", "tenant-admin"}
    assert policy.profiles["strict"].sandbox.runtime == "runsc"
    default_only = policy.model_copy(update={"profiles": {"p": policy.profiles["default"]}})
    strict_only = policy.model_copy(update={"profiles": {"p": policy.profiles["strict"]}})
    verdicts = {c.field: c.verdict for c in diff_policies(default_only, strict_only)}
    assert "weaker" not in verdicts.values(), verdicts
    assert verdicts["sandbox.runtime"] == "stronger"


def test_data_science_gets_more_memory_and_time_but_still_no_network() -> None:
    policy = load_policy()
    ds, default = policy.profiles["data-science"], policy.profiles["default"]
    assert ds.sandbox.memory > default.sandbox.memory
    assert ds.exec.max_timeout_s > default.exec.max_timeout_s
    assert ds.sandbox.network == "none" and ds.sandbox.read_only_rootfs


def test_spec_digest_ignores_exec_limits_but_not_sandbox_changes() -> None:
    policy = load_policy_text(BASE)
    assert policy.profiles["base"].sandbox.digest() != policy.profiles["small"].sandbox.digest()
    relaxed = BASE.replace(
        "exec: {max_timeout_s: 5, default_timeout_s: 5}", "exec: {max_timeout_s: 9, default_timeout_s: 9}"
    )
    assert (
        load_policy_text(relaxed).profiles["small"].sandbox.digest()
        == policy.profiles["small"].sandbox.digest()
    )
