"""`policy diff`: every weakening is marked, every tightening too, and nothing else is reported."""

from typing import Any

import pytest
import yaml

from policy import load_policy, load_policy_text
from policy.diff import diff_policies, render_diff


def changed(path: str, value: Any) -> Any:
    doc = load_policy().model_dump(mode="json")
    node = doc
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    return load_policy_text(yaml.safe_dump(doc))


@pytest.mark.parametrize(
    ("path", "value", "field", "verdict"),
    [
        pytest.param(
            "profiles.default.sandbox.memory_swap", 2**31, "sandbox.memory_swap", "weaker", id="more-swap"
        ),
        pytest.param("profiles.default.sandbox.cpus", 0.5, "sandbox.cpus", "stronger", id="fewer-cpus"),
        pytest.param(
            "profiles.default.sandbox.pids_limit", 4096, "sandbox.pids_limit", "weaker", id="more-pids"
        ),
        pytest.param(
            "profiles.default.sandbox.read_only_rootfs",
            False,
            "sandbox.read_only_rootfs",
            "weaker",
            id="writable-root",
        ),
        pytest.param(
            "profiles.default.sandbox.no_new_privileges",
            False,
            "sandbox.no_new_privileges",
            "weaker",
            id="new-privileges",
        ),
        pytest.param("profiles.default.sandbox.init", False, "sandbox.init", "weaker", id="no-init"),
        pytest.param(
            "profiles.default.sandbox.cap_add", ["CHOWN"], "sandbox.cap_add[CHOWN]", "weaker", id="cap-add"
        ),
        pytest.param("profiles.default.sandbox.runtime", "runsc", "sandbox.runtime", "stronger", id="gvisor"),
        pytest.param("profiles.strict.sandbox.runtime", "runc", "sandbox.runtime", "weaker", id="no-gvisor"),
        pytest.param(
            "profiles.default.sandbox.seccomp", "default", "sandbox.seccomp", "changed", id="seccomp"
        ),
        pytest.param(
            "profiles.default.sandbox.images",
            ["mcp-code-executor:latest", "other:1"],
            "sandbox.images[other:1]",
            "weaker",
            id="image-added",
        ),
        pytest.param(
            "profiles.default.tools", ["execute_python"], "tools[execute_bash]", "stronger", id="tool-removed"
        ),
        pytest.param(
            "profiles.strict.tools",
            ["execute_python", "execute_bash"],
            "tools[execute_bash]",
            "weaker",
            id="tool-added",
        ),
        pytest.param(
            "profiles.default.exec.max_timeout_s", 300, "exec.max_timeout_s", "weaker", id="longer-timeout"
        ),
        pytest.param(
            "profiles.default.exec.max_output_bytes",
            1024,
            "exec.max_output_bytes",
            "stronger",
            id="smaller-output",
        ),
        pytest.param(
            "profiles.default.exec.max_concurrent", 16, "exec.max_concurrent", "weaker", id="more-concurrent"
        ),
        pytest.param(
            "profiles.default.exec.max_concurrent_per_tenant",
            256,
            "exec.max_concurrent_per_tenant",
            "weaker",
            id="higher-tenant-cap",
        ),
        pytest.param(
            "profiles.default.exec.max_concurrent_per_tenant",
            8,
            "exec.max_concurrent_per_tenant",
            "stronger",
            id="lower-tenant-cap",
        ),
        pytest.param(
            "profiles.default.rate_limits.tenant_requests",
            "1000/second",
            "rate_limits.tenant_requests",
            "weaker",
            id="faster-tenant-rate",
        ),
        pytest.param(
            "profiles.default.lifecycle.max_age_s", 10**6, "lifecycle.max_age_s", "weaker", id="older"
        ),
        pytest.param(
            "profiles.default.rate_limits.requests",
            "10/second",
            "rate_limits.requests",
            "weaker",
            id="faster-rate",
        ),
        pytest.param(
            "profiles.default.rate_limits.sandbox_creations",
            "1/hour",
            "rate_limits.sandbox_creations",
            "stronger",
            id="slower-creations",
        ),
        pytest.param(
            "profiles.default.sandbox.ulimits",
            {"nofile": 1024, "nproc": 4096, "fsize": 1073741824},
            "sandbox.ulimits.core",
            "weaker",
            id="ulimit-removed",
        ),
        pytest.param(
            "profiles.default.sandbox.tmpfs",
            [
                {"path": "/tmp", "size": 67108864, "noexec": False},
                {"path": "/workspace", "size": 268435456, "mode": 493},
            ],
            "sandbox.tmpfs[/tmp].noexec",
            "weaker",
            id="tmp-exec",
        ),
        pytest.param(
            "profiles.default.sandbox.tmpfs",
            [
                {"path": "/tmp", "size": 67108864, "noexec": True},
                {"path": "/workspace", "size": 268435456, "mode": 493},
                {"path": "/data", "size": 1},
            ],
            "sandbox.tmpfs[/data]",
            "weaker",
            id="writable-path-added",
        ),
        pytest.param("principals", {"alice": "data-science"}, "principals.alice", "changed", id="mapping"),
    ],
)
def test_each_change_gets_its_verdict(path: str, value: Any, field: str, verdict: str) -> None:
    changes = diff_policies(load_policy(), changed(path, value))
    found = {c.field: c.verdict for c in changes}
    assert found.get(field) == verdict, changes


def test_identical_policies_have_no_changes() -> None:
    assert diff_policies(load_policy(), load_policy()) == []
    assert render_diff([]) == "no security-relevant change\n"


def test_profile_added_is_weaker_and_removed_is_stronger() -> None:
    policy = load_policy()
    fewer = policy.model_copy(update={"profiles": {"default": policy.profiles["default"]}})
    verdicts = {(c.profile, c.verdict) for c in diff_policies(fewer, policy)}
    assert ("strict", "weaker") in verdicts and ("data-science", "weaker") in verdicts
    assert {c.verdict for c in diff_policies(policy, fewer)} == {"stronger"}


def test_the_report_marks_weakenings_so_they_cannot_be_missed() -> None:
    report = render_diff(
        diff_policies(load_policy(), changed("profiles.default.sandbox.read_only_rootfs", False))
    )
    assert "!! WEAKER   sandbox.read_only_rootfs: True -> False" in report
    assert report.rstrip().endswith("1 weaker, 0 changed, 0 stronger")
