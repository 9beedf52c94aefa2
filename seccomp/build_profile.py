"""Builds sandbox.json, the seccomp profile of the shipped policy. Run: python3 seccomp/build_profile.py

The profile is an allow-list: any system call not named here fails with EPERM. It is written as
data in this script so each group carries its reason; tests check sandbox.json matches this output.

libseccomp 2.5 (Debian 12) keeps one comparison per argument in a rule, and an unconditional rule
for a system call overrides conditional ones. So "every ioctl except two" is expressed as the
complement of the two values: allow rules over masked prefixes of the low 32 bits of the request
number (the kernel ignores the upper 32), which cannot be bypassed by setting high bits.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ALLOW: dict[str, str] = {
    "files and descriptors (fcntl is filtered below)": (
        "read write readv writev pread64 pwrite64 preadv pwritev preadv2 pwritev2 open openat openat2 "
        "close close_range creat lseek _llseek stat fstat lstat newfstatat fstatat64 stat64 fstat64 "
        "lstat64 statx statfs fstatfs statfs64 fstatfs64 access faccessat faccessat2 readlink readlinkat "
        "getdents getdents64 mkdir mkdirat rmdir rename renameat renameat2 link linkat unlink unlinkat "
        "symlink symlinkat chmod fchmod fchmodat fchmodat2 chown fchown lchown fchownat chown32 fchown32 "
        "lchown32 truncate ftruncate truncate64 ftruncate64 fallocate fsync fdatasync sync syncfs "
        "sync_file_range utime utimes utimensat futimesat dup dup2 dup3 pipe pipe2 flock "
        "sendfile sendfile64 splice tee vmsplice copy_file_range umask chdir fchdir getcwd memfd_create "
        "fadvise64 fadvise64_64 readahead getxattr lgetxattr fgetxattr listxattr llistxattr flistxattr "
        "setxattr lsetxattr fsetxattr removexattr lremovexattr fremovexattr inotify_init inotify_init1 "
        "inotify_add_watch inotify_rm_watch"
    ),
    "waiting for events": (
        "select _newselect pselect6 poll ppoll epoll_create epoll_create1 epoll_ctl epoll_wait "
        "epoll_pwait epoll_pwait2 eventfd eventfd2 signalfd signalfd4 timerfd_create timerfd_settime "
        "timerfd_gettime"
    ),
    "memory": (
        "brk mmap mmap2 munmap mremap mprotect madvise mlock mlock2 munlock mlockall munlockall msync "
        "mincore membarrier get_mempolicy set_mempolicy mbind pkey_alloc pkey_free pkey_mprotect"
    ),
    "processes, threads and signals (clone, sending signals and the scheduling calls are filtered "
    "below; fork and vfork create no namespace)": (
        "fork vfork execve execveat exit exit_group wait4 waitid getpid getppid gettid getpgid setpgid "
        "getpgrp getsid setsid rt_sigaction rt_sigprocmask rt_sigreturn rt_sigpending rt_sigtimedwait "
        "rt_sigsuspend sigaltstack pause alarm getitimer setitimer sched_yield sched_getaffinity "
        "sched_getparam sched_getscheduler sched_get_priority_max sched_get_priority_min "
        "sched_rr_get_interval sched_getattr getpriority prctl arch_prctl set_tid_address set_robust_list "
        "get_robust_list futex futex_waitv rseq pidfd_open pidfd_send_signal restart_syscall ioprio_get"
    ),
    "time": (
        "nanosleep clock_nanosleep clock_gettime clock_getres gettimeofday time times timer_create "
        "timer_settime timer_gettime timer_getoverrun timer_delete"
    ),
    "the caller's own identity and limits (raising privileges needs capabilities, and all are dropped; "
    "prlimit64 is filtered below)": (
        "getuid geteuid getgid getegid getresuid getresgid getgroups setuid setgid setreuid setregid "
        "setresuid setresgid setgroups setfsuid setfsgid capget capset getrlimit setrlimit "
        "getrusage sysinfo uname getcpu getrandom seccomp landlock_create_ruleset landlock_add_rule "
        "landlock_restrict_self"
    ),
    "sockets, once created (families are filtered below; the sandbox has no network)": (
        "socketpair bind listen accept accept4 connect getsockname getpeername sendto recvfrom sendmsg "
        "recvmsg sendmmsg recvmmsg shutdown setsockopt getsockopt"
    ),
    "System V and POSIX IPC, private to the sandbox's IPC namespace": (
        "shmget shmat shmdt shmctl semget semop semtimedop semctl msgget msgsnd msgrcv msgctl mq_open "
        "mq_unlink mq_timedsend mq_timedreceive mq_notify mq_getsetattr"
    ),
    "native asynchronous I/O (io_uring is not allowed)": (
        "io_setup io_destroy io_submit io_cancel io_getevents io_pgetevents"
    ),
}

#: Socket families allowed: AF_UNIX, AF_INET, AF_INET6 (loopback only: network none), AF_NETLINK (interface
#: queries). Everything else, AF_PACKET, AF_ALG and AF_VSOCK among them, fails with EPERM.
SOCKET_FAMILIES = {1: "AF_UNIX", 2: "AF_INET", 10: "AF_INET6", 16: "AF_NETLINK"}
#: CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
CLONE_NAMESPACE_FLAGS = 0x7E020000
#: CLONE_PARENT makes the new process a child of the caller's parent (the agent, for a command it started),
#: with the exit signal the caller picks: under gVisor a SIGSTOP or SIGKILL sent to the agent that way.
CLONE_PARENT = 0x00008000
#: ioctl requests refused: TIOCSTI pushes input into a terminal, TIOCLINUX reaches the console.
DENIED_IOCTLS = {0x5412: "TIOCSTI", 0x541C: "TIOCLINUX"}
LOW32 = 0xFFFFFFFF
#: The sandbox agent: PID 1, running as the uid of the code it starts, with one thread (TID 1).
AGENT_PID = 1
#: System calls that send a signal to the process or thread named by their first argument.
SIGNAL_CALLS = ("kill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "tgkill", "tkill")
#: System calls that change another process's scheduling when their first argument is not 0 (the caller).
SCHEDULING_CALLS = ("sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler")
#: fcntl F_SETSIG chooses the signal that F_SETOWN's owner gets on I/O (SIGKILL or SIGSTOP among them).
F_SETSIG = 10
PRIO_PROCESS, IOPRIO_WHO_PROCESS = 0, 1


def complement_patterns(excluded: set[int], bits: int = 32) -> list[tuple[int, int]]:
    """(mask, value) pairs whose matches are exactly the `bits`-bit numbers not in `excluded`."""
    patterns: list[tuple[int, int]] = []

    def walk(prefix: int, depth: int, members: set[int]) -> None:
        if not members:
            mask = ((1 << depth) - 1) << (bits - depth) if depth else 0
            patterns.append((mask, prefix << (bits - depth) if depth else 0))
            return
        if depth == bits:
            return  # an excluded value itself
        for bit in (0, 1):
            child = (prefix << 1) | bit
            walk(child, depth + 1, {m for m in members if (m >> (bits - depth - 1)) & 1 == bit})

    walk(0, 0, set(excluded))
    return patterns


def build() -> dict[str, Any]:
    rules: list[dict[str, Any]] = [
        {"comment": f"allow: {why}", "names": sorted(set(names.split())), "action": "SCMP_ACT_ALLOW"}
        for why, names in ALLOW.items()
    ]
    rules.append(
        {
            "comment": "allow: clone only without namespace flags (no new user, mount, pid, net, ipc, uts or "
            "cgroup namespace) and without CLONE_PARENT (no sibling whose exit signal the caller chooses)",
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [
                {
                    "index": 0,
                    "value": CLONE_NAMESPACE_FLAGS | CLONE_PARENT,
                    "valueTwo": 0,
                    "op": "SCMP_CMP_MASKED_EQ",
                }
            ],
        }
    )
    rules.append(
        {
            "comment": "deny: clone3 passes its flags in memory seccomp cannot read; ENOSYS (not the default "
            "EPERM, so the rule is kept) makes libc fall back to the filtered clone",
            "names": ["clone3"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 38,
        }
    )
    for family, name in SOCKET_FAMILIES.items():
        rules.append(
            {
                "comment": f"allow: socket({name})",
                "names": ["socket"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": family, "op": "SCMP_CMP_EQ"}],
            }
        )
    for name, index in (("mknod", 1), ("mknodat", 2)):
        for kind, bits in (
            ("FIFO", 0o010000),
            ("regular file", 0o100000),
            ("regular file (type 0)", 0),
            ("socket", 0o140000),
        ):
            rules.append(
                {
                    "comment": f"allow: {name} of a {kind} only; device nodes are refused",
                    "names": [name],
                    "action": "SCMP_ACT_ALLOW",
                    "args": [
                        {"index": index, "value": 0o170000, "valueTwo": bits, "op": "SCMP_CMP_MASKED_EQ"}
                    ],
                }
            )
    denied = ", ".join(f"{name} ({value:#x})" for value, name in DENIED_IOCTLS.items())
    for mask, value in complement_patterns(set(DENIED_IOCTLS)):
        rules.append(
            {
                "comment": f"allow: ioctl requests other than {denied}, by masked prefix of the low 32 bits",
                "names": ["ioctl"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 1, "value": mask, "valueTwo": value, "op": "SCMP_CMP_MASKED_EQ"}],
            }
        )
    for value, what in ((0, "set the default PER_LINUX"), (LOW32, "query the current persona")):
        rules.append(
            {
                "comment": f"allow: personality only to {what}",
                "names": ["personality"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": LOW32, "valueTwo": value, "op": "SCMP_CMP_MASKED_EQ"}],
            }
        )
    rules += _agent_out_of_reach()
    return {
        "comment": "Sandbox Gateway seccomp profile, generated by build_profile.py: an allow-list for "
        "untrusted code; any other system call fails with EPERM. See README.md beside this file.",
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "archMap": [
            {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": []},
            {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": []},
        ],
        "syscalls": rules,
    }


def _low32(index: int, value: int) -> dict[str, Any]:
    """Argument `index` (an int: the kernel reads its low 32 bits only) equals `value`."""
    return {"index": index, "value": LOW32, "valueTwo": value, "op": "SCMP_CMP_MASKED_EQ"}


def _agent_out_of_reach() -> list[dict[str, Any]]:
    """Code runs as the agent's uid, so the kernel lets it change the agent's limits and scheduling;
    these calls act only on the caller itself. Signals to PID 1 are also refused here (gVisor does not
    protect a PID 1 from signals sent inside its namespace, as Linux does)."""
    rules: list[dict[str, Any]] = [
        {
            "comment": "allow: prlimit64 on the caller itself (pid 0), which setrlimit and ulimit use",
            "names": ["prlimit64"],
            "action": "SCMP_ACT_ALLOW",
            "args": [_low32(0, 0)],
        },
        {
            "comment": "allow: prlimit64 that only reads a limit (no new limit given)",
            "names": ["prlimit64"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 2, "value": 0, "op": "SCMP_CMP_EQ"}],
        },
        {
            "comment": "allow: scheduling changes of the calling thread only (pid 0)",
            "names": list(SCHEDULING_CALLS),
            "action": "SCMP_ACT_ALLOW",
            "args": [_low32(0, 0)],
        },
        {
            "comment": "allow: setpriority (nice) of the calling thread only: PRIO_PROCESS, who 0; never a "
            "process group or a user (PRIO_USER would reach every process of the uid, the agent included)",
            "names": ["setpriority"],
            "action": "SCMP_ACT_ALLOW",
            "args": [_low32(0, PRIO_PROCESS), _low32(1, 0)],
        },
        {
            "comment": "allow: ioprio_set of the calling thread only: IOPRIO_WHO_PROCESS, who 0",
            "names": ["ioprio_set"],
            "action": "SCMP_ACT_ALLOW",
            "args": [_low32(0, IOPRIO_WHO_PROCESS), _low32(1, 0)],
        },
    ]
    for mask, value in complement_patterns({AGENT_PID}):
        rules.append(
            {
                "comment": f"allow: signals to any process or thread group but PID {AGENT_PID} (the agent), "
                "by masked prefix of the low 32 bits of the pid",
                "names": list(SIGNAL_CALLS),
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": mask, "valueTwo": value, "op": "SCMP_CMP_MASKED_EQ"}],
            }
        )
    for mask, value in complement_patterns({F_SETSIG}):
        rules.append(
            {
                "comment": f"allow: fcntl commands other than F_SETSIG ({F_SETSIG}), by masked prefix of the "
                "low 32 bits",
                "names": ["fcntl"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 1, "value": mask, "valueTwo": value, "op": "SCMP_CMP_MASKED_EQ"}],
            }
        )
    return rules


def render() -> str:
    return json.dumps(build(), indent=1) + "\n"


if __name__ == "__main__":
    target = Path(__file__).with_name("sandbox.json")
    target.write_text(render())
    print(f"wrote {target} ({len(build()['syscalls'])} rules)", file=sys.stderr)
