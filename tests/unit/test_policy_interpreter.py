"""A profile's `interpreter` key (run_python's bounds): parsed strictly, bounded, and every loosening
is WEAKER in `policy diff`."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from policy import PolicyError, load_policy, load_policy_text
from policy.diff import diff_policies
from policy.interpreter_model import InterpreterLimits


def with_interpreter(profile: str, **fields: Any) -> str:
    doc = load_policy().model_dump(mode="json")
    doc["profiles"][profile]["interpreter"] = {**doc["profiles"][profile]["interpreter"], **fields}
    return yaml.safe_dump(doc)


def test_the_shipped_profiles_bound_the_interpreter_and_say_who_may_use_it() -> None:
    policy = load_policy()
    assert {name for name, p in policy.profiles.items() if "run_python" in p.tools} == {
        "default",
        "data-science",
        "tenant-admin",
    }
    bounds = policy.profiles["default"].interpreter
    assert (bounds.idle_timeout_s, bounds.interrupt_grace_s) == (900, 2)
    assert (bounds.max_images, bounds.max_image_bytes, bounds.max_table_rows) == (8, 4 * 1024**2, 50)


def test_sizes_take_units_and_the_caps_go_to_the_interpreter() -> None:
    policy = load_policy_text(with_interpreter("default", max_image_bytes="1m", max_value_chars=100))
    caps = policy.profiles["default"].interpreter.caps()
    assert caps == {"value": 100, "text": 256 * 1024, "images": 8, "image_bytes": 1024**2, "rows": 50}


@pytest.mark.parametrize(
    "fields",
    [
        {"idle_timeout_s": 0},
        {"idle_timeout_s": 86401},
        {"interrupt_grace_s": 0},
        {"interrupt_grace_s": 61},
        {"max_images": 65},
        {"max_images": -1},
        {"max_image_bytes": "9m"},
        {"max_text_chars": 2 * 1024 * 1024},
        {"max_value_chars": 0},
        {"max_table_rows": 0},
        {"keep_forever": True},
    ],
)
def test_values_out_of_bounds_and_unknown_keys_fail_the_load(fields: dict[str, Any]) -> None:
    with pytest.raises(PolicyError):
        load_policy_text(with_interpreter("default", **fields))


@pytest.mark.parametrize(
    ("field", "value", "verdict"),
    [
        ("idle_timeout_s", 3600, "weaker"),
        ("idle_timeout_s", 60, "stronger"),
        ("interrupt_grace_s", 30, "weaker"),
        ("max_images", 32, "weaker"),
        ("max_image_bytes", "8m", "weaker"),
        ("max_text_chars", 1024, "stronger"),
        ("max_table_rows", 1000, "weaker"),
    ],
)
def test_every_loosening_is_weaker_in_the_diff(field: str, value: Any, verdict: str) -> None:
    changes = diff_policies(load_policy(), load_policy_text(with_interpreter("strict", **{field: value})))
    assert {c.field: c.verdict for c in changes if c.profile == "strict"} == {f"interpreter.{field}": verdict}


@pytest.mark.parametrize("field", sorted(InterpreterLimits.model_fields))
def test_raising_any_bound_is_weaker(field: str) -> None:
    bounds = load_policy().profiles["strict"].interpreter
    raised = getattr(bounds, field) * 2
    changes = diff_policies(load_policy(), load_policy_text(with_interpreter("strict", **{field: raised})))
    assert [(c.field, c.verdict) for c in changes] == [(f"interpreter.{field}", "weaker")]
