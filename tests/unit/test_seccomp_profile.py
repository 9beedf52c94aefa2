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


def test_every_conditional_rule_has_one_comparison_per_argument() -> None:
    """libseccomp 2.5 keeps one comparison per argument: the profile never relies on more."""
    for rule in PROFILE["syscalls"]:
        indexes = [arg["index"] for arg in rule.get("args", [])]
        assert len(indexes) == len(set(indexes)), rule


def allowed(name: str, *args: int) -> bool:
    """What the profile answers for system call `name` with these arguments (the rest 0)."""
    values = [*args, *[0] * (6 - len(args))]
    for rule in PROFILE["syscalls"]:
        if name not in rule["names"] or rule["action"] != "SCMP_ACT_ALLOW":
            continue
        if all(_holds(arg, values[arg["index"]]) for arg in rule.get("args", [])):
            return True
    return False


def _holds(arg: dict[str, int | str], value: int) -> bool:
    if arg["op"] == "SCMP_CMP_MASKED_EQ":
        return (value & int(arg["value"])) == int(arg["valueTwo"])
    assert arg["op"] == "SCMP_CMP_EQ", arg
    return value == int(arg["value"])


LOW32 = 0xFFFFFFFF
WORDS = st.integers(min_value=0, max_value=2**64 - 1)
#: Small values, the agent's pid and -1 with and without high bits: where filters on ints go wrong.
INTS = st.one_of(
    WORDS,
    st.builds(
        lambda low, high: low | high,
        st.sampled_from([0, 1, 2, 10, LOW32, LOW32 - 1]),
        st.sampled_from([0, 1 << 32, LOW32 << 32]),
    ),
)


@given(st.sampled_from(build_profile.SIGNAL_CALLS), INTS, INTS)
def test_signals_reach_every_pid_but_the_agents(name: str, pid: int, other: int) -> None:
    """kill, tkill, tgkill, rt_sigqueueinfo, rt_tgsigqueueinfo: refused exactly when the pid (or
    thread group) the kernel reads, the low 32 bits, is 1 (the agent)."""
    assert allowed(name, pid, other) == ((pid & LOW32) != 1)


@given(INTS, INTS, INTS)
def test_prlimit_changes_only_the_callers_own_limits(pid: int, new: int, old: int) -> None:
    assert allowed("prlimit64", pid, 7, new, old) == ((pid & LOW32) == 0 or new == 0)


@given(st.sampled_from(build_profile.SCHEDULING_CALLS), INTS, INTS)
def test_scheduling_changes_only_the_calling_thread(name: str, pid: int, other: int) -> None:
    assert allowed(name, pid, other) == ((pid & LOW32) == 0)


@given(INTS, INTS, INTS)
def test_priorities_change_only_the_calling_thread(which: int, who: int, value: int) -> None:
    """setpriority and ioprio_set: the caller itself only (PRIO_USER would reach the agent too)."""
    itself = (who & LOW32) == 0
    assert allowed("setpriority", which, who, value) == (itself and (which & LOW32) == 0)
    assert allowed("ioprio_set", which, who, value) == (itself and (which & LOW32) == 1)


@given(INTS, INTS)
def test_fcntl_allows_every_command_but_f_setsig(command: int, value: int) -> None:
    assert allowed("fcntl", 3, command, value) == ((command & LOW32) != build_profile.F_SETSIG)


@given(WORDS)
def test_clone_refuses_namespaces_and_clone_parent(flags: int) -> None:
    refused = build_profile.CLONE_NAMESPACE_FLAGS | build_profile.CLONE_PARENT
    assert allowed("clone", flags) == (flags & refused == 0)


def test_the_calls_that_reach_the_agent_are_never_allowed_unconditionally() -> None:
    """An unconditional rule would override the filters above (libseccomp keeps the broader rule)."""
    filtered = {
        *build_profile.SIGNAL_CALLS,
        *build_profile.SCHEDULING_CALLS,
        "prlimit64",
        "setpriority",
        "ioprio_set",
        "fcntl",
        "clone",
    }
    for rule in PROFILE["syscalls"]:
        if rule["action"] == "SCMP_ACT_ALLOW" and not rule.get("args"):
            assert not filtered & set(rule["names"]), rule
    assert allowed("kill", LOW32) and allowed("kill", 0) and allowed("getrlimit")


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_ioctl_patterns_allow_exactly_the_requests_other_than_the_denied_ones(request: int) -> None:
    allowed = any((request & mask) == value for mask, value in PATTERNS)
    assert allowed == ((request & 0xFFFFFFFF) not in DENIED)


def test_denied_ioctls_with_high_bits_set_are_still_denied() -> None:
    for value in DENIED:
        for high in (0, 1 << 32, 0xFFFFFFFF << 32):
            assert not any(((value | high) & mask) == v for mask, v in PATTERNS)
