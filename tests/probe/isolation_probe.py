"""Isolation probe: runs inside a sandbox (stdlib only) and reports each property with its safe outcome.

Prints one JSON object: {check: {"ok": bool, "observed": str}}. The runner may define EXPECTED
(a dict) before this code, e.g. {"nofile": 1024, "fsize": 1073741824, "proxy_port": 2375,
"gateway_port": 8000}, and for an egress sandbox "egress": {"proxy_host", "proxy_port", "dns"}.
"""

import ctypes
import errno
import json
import os
import socket
from typing import Any

EXPECTED: dict[str, Any] = globals().get("EXPECTED", {})
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
results: dict[str, dict[str, Any]] = {}

# x86_64 and aarch64 system call numbers
X86 = os.uname().machine == "x86_64"
NR = {
    "unshare": 272 if X86 else 97,
    "mount": 165 if X86 else 40,
    "setns": 308 if X86 else 268,
    "pivot_root": 155 if X86 else 41,
    "io_uring_setup": 425,
    "userfaultfd": 323 if X86 else 282,
    "bpf": 321 if X86 else 280,
    "perf_event_open": 298 if X86 else 241,
    "keyctl": 250 if X86 else 219,
    "kexec_load": 246 if X86 else 104,
    "init_module": 175 if X86 else 105,
    "ptrace": 101 if X86 else 117,
    "process_vm_readv": 310 if X86 else 270,
    "add_key": 248 if X86 else 217,
    "umount2": 166 if X86 else 39,
}


def check(name: str, ok: object, observed: object) -> None:
    results[name] = {"ok": bool(ok), "observed": str(observed)[:300]}


def refused(name: str, *args: Any) -> None:
    """The system call must fail (seccomp EPERM, or the kernel refusing without capabilities)."""
    arg_types = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    ret = libc.syscall(ctypes.c_long(NR[name]), *arg_types)
    err = ctypes.get_errno()
    check(f"syscall_{name}_refused", ret == -1, f"ret={ret} errno={_errno_name(err)}")


def _errno_name(number: int | None) -> object:
    """errno's symbolic name (ENOENT), or the number when it has none."""
    return errno.errorcode.get(number, number) if number is not None else None


def status_field(field: str) -> str | None:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return line.split(":", 1)[1].strip()
    return None


def write_denied(path: str) -> tuple[bool, object]:
    try:
        with open(path, "w") as handle:
            handle.write("x")
    except OSError as exc:
        return True, _errno_name(exc.errno)
    return False, "written"


# identity and privileges
check(
    "uid_gid_not_root",
    os.getuid() != 0 and os.getgid() != 0 and 0 not in os.getgroups(),
    f"uid={os.getuid()} gid={os.getgid()} groups={os.getgroups()}",
)
caps = {f: status_field(f) for f in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
if caps["CapAmb"] is None:  # gVisor does not report the ambient set; ask the kernel directly
    caps["CapAmb"] = "0" if all(libc.prctl(47, 1, cap, 0, 0) != 1 for cap in range(41)) else "1"
check("capability_sets_empty", all(v is not None and int(v, 16) == 0 for v in caps.values()), caps)
no_new_privs = libc.prctl(39, 0, 0, 0, 0)  # PR_GET_NO_NEW_PRIVS
check("no_new_privs", no_new_privs == 1, no_new_privs)
check("seccomp_filter_mode", status_field("Seccomp") == "2", status_field("Seccomp"))

# dangerous system calls
refused("unshare", 0x10000000)  # CLONE_NEWUSER
refused("mount", ctypes.c_char_p(b"none"), ctypes.c_char_p(b"/tmp"), ctypes.c_char_p(b"tmpfs"), 0, None)
refused("umount2", ctypes.c_char_p(b"/tmp"), 0)
refused("setns", 0, 0)
refused("pivot_root", ctypes.c_char_p(b"/tmp"), ctypes.c_char_p(b"/tmp"))
refused("io_uring_setup", 8, ctypes.create_string_buffer(120))
refused("userfaultfd", 0)
refused("bpf", 0, ctypes.create_string_buffer(128), 128)
refused("perf_event_open", ctypes.create_string_buffer(128), 0, -1, -1, 0)
refused("keyctl", 0, 0)
refused("add_key", ctypes.c_char_p(b"user"), ctypes.c_char_p(b"k"), ctypes.c_char_p(b"v"), 1, -2)
refused("kexec_load", 0, 0, None, 0)
refused("init_module", None, 0, ctypes.c_char_p(b""))
refused("ptrace", 16, os.getppid(), None, None)  # PTRACE_ATTACH to the parent
local = ctypes.create_string_buffer(8)
iov = (ctypes.c_void_p * 2)(ctypes.cast(local, ctypes.c_void_p), 8)
refused("process_vm_readv", os.getppid(), iov, 1, iov, 1, 0)

for family, kind, name in (
    (38, socket.SOCK_SEQPACKET, "af_alg"),
    (40, socket.SOCK_STREAM, "af_vsock"),
    (17, socket.SOCK_RAW, "af_packet"),
):
    try:
        socket.socket(family, kind).close()
        check(f"socket_{name}_refused", False, "created")
    except OSError as exc:
        check(f"socket_{name}_refused", True, _errno_name(exc.errno))

# the engine and its socket proxy are out of reach
sockets = [
    p
    for p in (
        "/var/run/docker.sock",
        "/run/docker.sock",
        "/run/containerd/containerd.sock",
        "/var/run/containerd/containerd.sock",
        "/run/docker/docker.sock",
        "/run/sandbox-gateway/docker-proxy.sock",
    )
    if os.path.exists(p)
]
check("no_engine_sockets", not sockets, sockets or "none")

# network: loopback only, nowhere to connect to
interfaces = sorted(os.listdir("/sys/class/net"))
EGRESS = EXPECTED.get("egress")  # an egress profile: one interface more, and one door on it
check("only_loopback_interface", interfaces == (["eth0", "lo"] if EGRESS else ["lo"]), interfaces)


def unreachable(host: str, port: int) -> tuple[bool, object]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(2)
    try:
        sock.connect((host, port))
    except OSError as exc:
        return True, _errno_name(exc.errno) if exc.errno else type(exc).__name__
    finally:
        sock.close()
    return False, "connected"


targets = [("internet", "1.1.1.1", 443), ("metadata", "169.254.169.254", 80)]
for role, default in (("proxy", 2375), ("gateway", 8000)):
    port = EXPECTED.get(f"{role}_port", default)
    targets += [(f"host_{role}_port", "172.17.0.1", port), (f"loopback_{role}_port", "127.0.0.1", port)]
if EGRESS:
    door, door_port = EGRESS["proxy_host"], EGRESS["proxy_port"]
    targets += [
        ("bridge_gateway_other_port", door, EXPECTED.get("gateway_port", 8000)),
        ("bridge_gateway_ssh", door, 22),
        ("bridge_dns", EGRESS["dns"], 53),
        ("outside_direct", "198.51.100.10", 443),
    ]
    shut, how = unreachable(door, door_port)
    check("egress_proxy_is_the_one_door", not shut, how)
for label, host, port in targets:
    ok, observed = unreachable(host, port)
    check(f"no_route_to_{label}", ok, observed)

# filesystems
for path in ("/rootfs-probe", "/etc/probe", "/usr/probe"):
    ok, observed = write_denied(path)
    check(f"read_only_{path.strip('/').split('/')[0].replace('-probe', '') or 'root'}", ok, observed)
ok, observed = write_denied("/proc/sys/kernel/hostname")
check("proc_sys_not_writable", ok, observed)
ok, observed = write_denied("/proc/sysrq-trigger")
check("proc_sysrq_trigger_not_writable", ok, observed)
try:
    with open("/proc/kcore", "rb") as handle:
        head = handle.read(16)
    check("proc_kcore_masked", head == b"", f"read {len(head)} bytes")
except OSError as exc:
    check("proc_kcore_masked", True, _errno_name(exc.errno))
ok, observed = write_denied("/sys/fs/cgroup/probe")
check("cgroup_fs_read_only", ok, observed)
devices = sorted(os.listdir("/dev"))
allowed = {
    "null",
    "zero",
    "full",
    "random",
    "urandom",
    "tty",
    "console",
    "pts",
    "ptmx",
    "shm",
    "mqueue",
    "fd",
    "stdin",
    "stdout",
    "stderr",
    "core",
    "net",
    "fuse",
}  # gVisor's /dev/fuse is its own, not the host's
check("dev_minimal", set(devices) <= allowed, devices)
try:
    os.mknod("/tmp/probe-dev", 0o600 | 0o020000, os.makedev(1, 3))  # a character device
    check("mknod_device_refused", False, "created")
except OSError as exc:
    check("mknod_device_refused", True, _errno_name(exc.errno))

# processes, limits, environment
pids = [p for p in os.listdir("/proc") if p.isdigit()]
check("few_pids_visible", len(pids) <= 12, len(pids))
import resource  # noqa: E402

limits = {
    "core": resource.getrlimit(resource.RLIMIT_CORE),
    "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
    "fsize": resource.getrlimit(resource.RLIMIT_FSIZE),
}
check("rlimit_core_zero", limits["core"] == (0, 0), limits["core"])
if "nofile" in EXPECTED:
    check("rlimit_nofile", limits["nofile"] == (EXPECTED["nofile"],) * 2, limits["nofile"])
if "fsize" in EXPECTED:
    check("rlimit_fsize", limits["fsize"] == (EXPECTED["fsize"],) * 2, limits["fsize"])
secret_words = ("TOKEN", "SECRET", "PASSWORD", "KEY", "DOCKER", "AWS_", "OTEL_")
leaked = sorted(k for k in os.environ if any(w in k.upper() for w in secret_words))
check("no_secrets_in_environment", not leaked, leaked or "none")
setuid: list[str] = []
for directory in (
    "/bin",
    "/sbin",
    "/usr/bin",
    "/usr/sbin",
    "/usr/local/bin",
    "/usr/local/sbin",
    "/usr/libexec",
    "/usr/lib/dbus-1.0",
    "/usr/lib/openssh",
):
    try:
        names = os.listdir(directory)
    except OSError:
        continue
    for name in names:
        path = os.path.join(directory, name)
        try:
            if not os.path.islink(path) and os.lstat(path).st_mode & 0o6000:
                setuid.append(path)
        except OSError:
            pass
check("no_setuid_binaries", not setuid, setuid or "none")

with open("/proc/version") as version_file:
    version = version_file.read().strip()
results["kernel"] = {"ok": True, "observed": version}
print(json.dumps(results))
