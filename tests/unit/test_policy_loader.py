"""Loading policy files: guardrails and schema errors name the file, the key and the rule."""

import copy
import textwrap
from pathlib import Path

import pytest

from policy import PolicyLoadError, load_policy, load_policy_text
from policy.errors import GuardrailViolation

BASE = """
version: 1
profiles:
  big:
    tools: [execute_bash]
    sandbox:
      images: [mcp-code-executor:latest]
{extra}
"""


def policy_with(extra: str) -> str:
    return BASE.format(extra=textwrap.indent(textwrap.dedent(extra).strip("\n"), "      "))


@pytest.mark.parametrize(
    ("extra", "key", "rule"),
    [
        pytest.param("privileged: true", "profiles.big.sandbox.privileged", "no-privileged", id="privileged"),
        pytest.param("network: host", "profiles.big.sandbox.network", "no-host-network", id="host-network"),
        pytest.param(
            "network_mode: container:abc",
            "profiles.big.sandbox.network_mode",
            "no-host-network",
            id="container-network",
        ),
        pytest.param("pid: host", "profiles.big.sandbox.pid", "no-host-pid", id="host-pid"),
        pytest.param("ipc_mode: host", "profiles.big.sandbox.ipc_mode", "no-host-ipc", id="host-ipc"),
        pytest.param("uts: host", "profiles.big.sandbox.uts", "no-host-uts", id="host-uts"),
        pytest.param(
            "userns_mode: host", "profiles.big.sandbox.userns_mode", "no-host-userns", id="host-userns"
        ),
        pytest.param(
            "volumes: ['/etc:/etc']", "profiles.big.sandbox.volumes", "no-host-mounts", id="host-mount"
        ),
        pytest.param("binds: ['/:/host']", "profiles.big.sandbox.binds", "no-host-mounts", id="binds"),
        pytest.param("devices: ['/dev/kvm']", "profiles.big.sandbox.devices", "no-devices", id="devices"),
        pytest.param(
            "workdir: /var/run/docker.sock",
            "profiles.big.sandbox.workdir",
            "no-docker-socket",
            id="docker-socket-anywhere",
        ),
        pytest.param(
            "seccomp: unconfined",
            "profiles.big.sandbox.seccomp",
            "no-unconfined-seccomp",
            id="seccomp-unconfined",
        ),
        pytest.param(
            "apparmor: unconfined",
            "profiles.big.sandbox.apparmor",
            "no-unconfined-apparmor",
            id="apparmor-unconfined",
        ),
        pytest.param(
            "security_opt: ['seccomp:unconfined']",
            "profiles.big.sandbox.security_opt[0]",
            "no-unconfined-seccomp",
            id="security-opt-seccomp",
        ),
        pytest.param("user: '0:0'", "profiles.big.sandbox.user", "no-root", id="uid-0"),
        pytest.param("user: root", "profiles.big.sandbox.user", "no-root", id="root-name"),
        pytest.param("user: '1000:0'", "profiles.big.sandbox.user", "no-root", id="gid-0"),
        pytest.param("user: '00:00'", "profiles.big.sandbox.user", "no-root", id="uid-0-leading-zeros"),
        pytest.param("user: '+0:1000'", "profiles.big.sandbox.user", "no-root", id="uid-0-signed"),
        pytest.param("user: '1000:-0'", "profiles.big.sandbox.user", "no-root", id="gid-minus-0"),
        pytest.param(
            "cap_add: [SYS_ADMIN]",
            "profiles.big.sandbox.cap_add[0]",
            "cap-add-allow-list",
            id="cap-sys-admin",
        ),
        pytest.param(
            "cap_add: [CHOWN, CAP_NET_RAW]",
            "profiles.big.sandbox.cap_add[1]",
            "cap-add-allow-list",
            id="cap-net-raw-second",
        ),
        pytest.param("cap_drop: []", "profiles.big.sandbox.cap_drop", "cap-drop-all", id="cap-drop-override"),
    ],
)
def test_guardrail_refuses_with_file_key_and_rule(extra: str, key: str, rule: str) -> None:
    with pytest.raises(GuardrailViolation) as info:
        load_policy_text(policy_with(extra), source="team.yaml")
    message = str(info.value)
    assert message.startswith(f"team.yaml: {key}: forbidden by guardrail {rule}")


def test_guardrail_at_profile_level_is_named_too() -> None:
    text = "version: 1\nprofiles:\n  big:\n    privileged: true\n    tools: [execute_bash]\n"
    with pytest.raises(
        GuardrailViolation,
        match=r"default.yaml: profiles.big.privileged: forbidden by guardrail no-privileged",
    ):
        load_policy_text(text, source="default.yaml")


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        pytest.param(
            "read_only_rootf: false", "profiles.big.sandbox.read_only_rootf", id="typo-is-unknown-key"
        ),
        pytest.param("memory: lots", "profiles.big.sandbox.memory", id="bad-size"),
        pytest.param("memory: 512m\nmemory_swap: 256m", "profiles.big.sandbox", id="swap-below-memory"),
        pytest.param("pids_limit: 0", "profiles.big.sandbox.pids_limit", id="zero-pids"),
        pytest.param("network: bridge", "profiles.big.sandbox.network", id="network-not-none"),
        pytest.param("user: '1000:1000'", "profiles.big.sandbox", id="fixed-user-is-refused"),
        pytest.param("ulimits: {nofiles: 10}", "profiles.big.sandbox.ulimits", id="unknown-ulimit"),
        pytest.param("runtime: kata", "profiles.big.sandbox.runtime", id="unknown-runtime"),
        pytest.param("tmpfs: [{path: /, size: 1m}]", "profiles.big.sandbox.tmpfs[0].path", id="tmpfs-root"),
    ],
)
def test_schema_errors_name_the_key(extra: str, key: str) -> None:
    with pytest.raises(PolicyLoadError) as info:
        load_policy_text(policy_with(extra), source="p.yaml")
    assert str(info.value).startswith(f"p.yaml: {key}: ")


def test_unknown_tool_is_refused() -> None:
    text = "version: 1\nprofiles:\n  a:\n    tools: [rm_rf]\n    sandbox: {images: [x]}\n"
    with pytest.raises(PolicyLoadError, match=r"profiles\.a\.tools: .*unknown tool"):
        load_policy_text(text)


def test_duplicate_keys_are_refused() -> None:
    text = (
        "version: 1\nprofiles:\n  a:\n    tools: [execute_bash]\n"
        "    tools: [execute_python]\n    sandbox: {images: [x]}\n"
    )
    with pytest.raises(PolicyLoadError, match="duplicate key 'tools'"):
        load_policy_text(text)


@pytest.mark.parametrize(
    "text", ["", "- a list", "version: 2\nprofiles: {}", ": : :"], ids=["empty", "list", "v2", "yaml"]
)
def test_malformed_files_are_refused(text: str) -> None:
    with pytest.raises(PolicyLoadError):
        load_policy_text(text)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError, match="cannot be read"):
        load_policy(tmp_path / "nope.yaml")


def test_sizes_accept_units() -> None:
    policy = load_policy_text(policy_with("memory: 1g\nmemory_swap: 1g\ntmpfs: [{path: /tmp, size: 64m}]"))
    sandbox = policy.profiles["big"].sandbox
    assert sandbox.memory == 1024**3
    assert sandbox.tmpfs[0].size == 64 * 1024**2


def test_shipped_default_policy_is_secure() -> None:
    sandbox = load_policy().profiles["default"].sandbox
    assert sandbox.read_only_rootfs and sandbox.no_new_privileges and sandbox.init
    assert sandbox.network == "none" and sandbox.cap_add == ()
    assert "user" not in sandbox.model_dump()  # the uid is the sandbox's own, from the gateway's range
    assert sandbox.seccomp != "unconfined"
    assert {m.path for m in sandbox.tmpfs} == {"/tmp", "/workspace"}


@pytest.mark.parametrize(
    ("exec_limits", "message"),
    [
        pytest.param(
            "{max_concurrent: 8, max_concurrent_per_tenant: 4}",
            "cannot be below max_concurrent",
            id="tenant-cap-below-principal-cap",
        ),
        pytest.param("{max_concurrent_per_tenant: 0}", "greater than 0", id="zero-tenant-cap"),
        pytest.param("{max_concurrent_per_tenant: 100000}", "less than or equal to 4096", id="unbounded"),
    ],
)
def test_the_tenant_concurrency_cap_is_bounded(exec_limits: str, message: str) -> None:
    text = (
        "version: 1\nprofiles:\n  a:\n    tools: [execute_bash]\n    sandbox: {images: [x]}\n"
        f"    exec: {exec_limits}\n"
    )
    with pytest.raises(PolicyLoadError, match=rf"profiles\.a\.exec.*{message}"):
        load_policy_text(text)


def test_the_shipped_profiles_cap_each_tenant_and_its_request_rate() -> None:
    policy = load_policy()
    for profile in policy.profiles.values():
        assert profile.exec.max_concurrent <= profile.exec.max_concurrent_per_tenant <= 64
        assert profile.rate_limits.tenant_requests


def test_a_specs_digest_is_computed_once_and_a_changed_copy_gets_its_own() -> None:
    from policy.model import SandboxSpec

    spec = load_policy().profiles["default"].sandbox
    first = spec.digest()
    assert spec.digest() == first
    changed = spec.model_copy(update={"exec_path": "exec", "read_only_rootfs": False})
    fresh = SandboxSpec.model_validate(changed.model_dump())
    assert changed.digest() == fresh.digest() != first, "the copy does not keep the original's digest"
    assert spec.model_copy().digest() == first
    assert copy.deepcopy(spec).digest() == first
