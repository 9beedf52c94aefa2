"""The shipped seccomp profile: generated from its documented source, and its filters mean what they say."""

import importlib.util
import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

SECCOMP = Path(__file__).parents[2] / "seccomp"
_spec = importlib.util.spec_from_file_location("build_profile", SECCOMP / "build_profile.py")
assert _spec is not None and _spec.loader is not None
build_profile = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_profile)
PROFILE = json.loads((SECCOMP / "sandbox.json").read_text())
DENIED = set(build_profile.DENIED_IOCTLS)
PATTERNS = build_profile.complement_patterns(DENIED)


def names(action: str = "SCMP_ACT_ALLOW") -> set[str]:
    return {n for rule in PROFILE["syscalls"] if rule["action"] == action for n in rule["names"]}


def test_the_committed_profile_is_exactly_what_the_script_builds() -> None:
    assert (SECCOMP / "sandbox.json").read_text() == build_profile.render()


def test_default_is_deny_and_only_64_bit_abis_are_allowed() -> None:
    assert PROFILE["defaultAction"] == "SCMP_ACT_ERRNO" and PROFILE["defaultErrnoRet"] == 1
    assert all(arch["subArchitectures"] == [] for arch in PROFILE["archMap"])


def test_dangerous_calls_are_not_allowed() -> None:
    dangerous = {
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "modify_ldt",
        "keyctl",
        "add_key",
        "request_key",
        "userfaultfd",
        "bpf",
        "perf_event_open",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "unshare",
        "setns",
        "mount",
        "umount2",
        "pivot_root",
        "kexec_load",
        "init_module",
        "finit_module",
        "delete_module",
        "open_by_handle_at",
        "reboot",
        "swapon",
        "chroot",
        "clone3",
        "fsopen",
        "fsmount",
        "move_mount",
        "open_tree",
    }
    assert not dangerous & names()


def test_explicit_denials_use_an_errno_distinct_from_the_default() -> None:
    for rule in PROFILE["syscalls"]:
        if rule["action"] == "SCMP_ACT_ERRNO":
            assert rule["errnoRet"] != PROFILE["defaultErrnoRet"], rule["names"]


def test_every_conditional_rule_has_a_single_comparison() -> None:
    """libseccomp 2.5 keeps one comparison per argument: the profile never relies on more."""
    for rule in PROFILE["syscalls"]:
        assert len(rule.get("args", [])) <= 1, rule


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_ioctl_patterns_allow_exactly_the_requests_other_than_the_denied_ones(request: int) -> None:
    allowed = any((request & mask) == value for mask, value in PATTERNS)
    assert allowed == ((request & 0xFFFFFFFF) not in DENIED)


def test_denied_ioctls_with_high_bits_set_are_still_denied() -> None:
    for value in DENIED:
        for high in (0, 1 << 32, 0xFFFFFFFF << 32):
            assert not any(((value | high) & mask) == v for mask, v in PATTERNS)
