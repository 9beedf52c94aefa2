"""What the proxy accepts in a request body: exactly what the broker sends, nothing else.

`validate_create` accepts a container create body only if it has the shape `create_body()` gives
for some profile the policy guardrails allow, and returns the object to forward. Every key is
known and spelled exactly, every value type-checked against the guardrails: a uid from the
configured range, network none, the project's seccomp profile by content, CapDrop ALL with
capabilities from the allow-list, binds only from configured source directories, read-only, at
/tools and /skills, no mounts, devices, volumes, ports, links, sysctls or host namespaces.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.backend.create_body import (
    AGENT_COMMAND,
    GVISOR_PIDS_BASE,
    GVISOR_PIDS_FACTOR,
    KEEPER_USER,
    LABEL_PREFIX,
    USER_LABEL,
    environment,
)
from gateway.sockproxy.errors import Refused
from gateway.sockproxy.routes import IMAGE
from gateway.sockproxy.shapes import (
    any_text,
    boolean,
    const,
    fail,
    integer,
    list_of,
    matching,
    obj,
    one_of,
    text,
)
from policy.model import CAP_ADD_ALLOW_LIST, ULIMIT_NAMES

__all__ = [
    "ContainerFacts",
    "ProxyRules",
    "bind_source",
    "binds_of",
    "caps",
    "sandbox_user",
    "security_opt",
    "validate_create",
    "validate_exec_create",
    "validate_exec_start",
]

NAME = re.compile(r"sgw-(pool-)?[0-9a-f]{16}")
_PATH = r"/[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*"
_CAP = "(?i:(cap_)?(" + "|".join(sorted(name.lower() for name in CAP_ADD_ALLOW_LIST)) + "))"
_TMPFS_OPTIONS = re.compile(
    r"rw,nosuid,nodev(,noexec)?,size=[1-9][0-9]{0,13},mode=[0-7]{1,4},uid=(?P<uid>[1-9][0-9]{0,9}),"
    r"gid=(?P<gid>[1-9][0-9]{0,9})"
)
_USER = re.compile(r"(?P<uid>[1-9][0-9]{0,9}):(?P<gid>[1-9][0-9]{0,9})")
_KERNEL_TREES = ("/proc", "/sys", "/dev")
_GIB = 1024**3
#: The largest pids limit a profile can give, per runtime (gVisor's is scaled: create_body.py).
MAX_PIDS = {"runc": 32768, "runsc": 32768 * GVISOR_PIDS_FACTOR + GVISOR_PIDS_BASE}


@dataclass(frozen=True, slots=True)
class ProxyRules:
    """The proxy's configuration: what a sandbox may be."""

    #: Inclusive range of host uids (and gids) that sandboxes run as; no host account may use it.
    uid_low: int
    uid_high: int
    #: Per runtime, every `seccomp=<profile>` option the broker may send for it (the profiles in
    #: seccomp/ as sent for that runtime: the runsc variant leaves clone3 to gVisor, which must
    #: never reach runc).
    seccomp_options: Mapping[str, frozenset[str]]
    #: Host directories allowed as the source of the read-only /tools and /skills binds.
    mount_sources: frozenset[str] = frozenset()
    #: Directories whose subdirectories may be such a source.
    mount_roots: tuple[str, ...] = ()
    #: Image names (`name:tag`) sandboxes may be made from; empty means any image on the engine.
    images: frozenset[str] = frozenset()

    def uid_in_range(self, uid: int) -> bool:
        return self.uid_low <= uid <= self.uid_high


@dataclass(frozen=True, slots=True)
class ContainerFacts:
    """A sandbox as the engine describes it, once it has been found to be one."""

    id: str
    name: str
    #: `uid:gid` that commands of this sandbox run as (its `sandbox-gateway.user` label).
    user: str
    env: tuple[str, ...]
    #: Its read-only binds (`SRC:/tools:ro`), whose sources are checked again at start.
    binds: tuple[str, ...] = ()


def sandbox_user(value: Any, where: str, rules: ProxyRules) -> str:
    """`uid:gid`, both canonical decimal (no sign, no leading zero), equal, and in the range."""
    match = _USER.fullmatch(text(value, where))
    if match is None:
        raise Refused("user", f"{where}: {value!r} is not a canonical numeric uid:gid")
    uid, gid = int(match["uid"]), int(match["gid"])
    if uid != gid or not rules.uid_in_range(uid):
        raise Refused("user", f"{where}: {value!r} is outside {rules.uid_low}-{rules.uid_high} or uid != gid")
    return str(value)


def _path(value: Any, where: str) -> str:
    path: str = matching(_PATH)(value, where)
    if any(part in (".", "..") for part in path.split("/")):
        raise fail(where, "no '.' or '..' components")
    return path


def bind_source(source: str, rules: ProxyRules) -> None:
    """A directory the engine may mount read-only at /tools or /skills; Refused otherwise.

    A configured source is taken as the operator wrote it (in compose the proxy cannot see host
    paths). A directory below a mount root must exist now, be no link, and, with every directory
    above it, belong to root (or the proxy's own uid) and be writable by no one else: nobody else
    could swap it for a link to the host's root before the engine mounts it."""
    if source in rules.mount_sources:
        if os.path.lexists(source) and (os.path.realpath(source) != source or not os.path.isdir(source)):
            raise Refused("bind-source", f"{source} is a link or not a directory")
        return
    if not any(source.startswith(root.rstrip("/") + "/") for root in rules.mount_roots):
        raise Refused("bind-source", f"{source} is not a configured tools/skills directory")
    if not os.path.isdir(source) or os.path.realpath(source) != source:
        raise Refused("bind-source", f"{source} does not exist, is a link or is not a directory")
    path = source
    while True:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode) or info.st_uid not in (0, os.geteuid()) or info.st_mode & 0o022:
            raise Refused("bind-source", f"{path} may be changed by someone other than root")
        if path == "/":
            return
        path = os.path.dirname(path)


def binds_of(value: Any, where: str, rules: ProxyRules) -> list[str]:
    binds: list[str] = list_of(text, max_items=2)(value, where)
    targets = []
    for index, bind in enumerate(binds):
        source, _, rest = bind.partition(":")
        if rest not in ("/tools:ro", "/skills:ro"):
            raise Refused(
                "bind-target", f"{where}[{index}]: only SRC:/tools:ro and SRC:/skills:ro are allowed"
            )
        bind_source(_path(source, f"{where}[{index}]"), rules)
        targets.append(rest)
    if len(set(targets)) != len(targets):
        raise Refused("bind-target", f"{where}: a target is bound twice")
    return binds


def _tmpfs(value: Any, where: str, uid: int) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > 8:
        raise fail(where, "must be an object of at most 8 mounts")
    for path, options in value.items():
        _path(path, f"{where} key")
        if path == "/" or any(path == tree or path.startswith(tree + "/") for tree in _KERNEL_TREES):
            raise fail(where, f"no tmpfs over {path}")
        match = _TMPFS_OPTIONS.fullmatch(text(options, f"{where}.{path}"))
        if match is None or int(match["uid"]) != uid or int(match["gid"]) != uid:
            raise fail(
                f"{where}.{path}", "options must be rw,nosuid,nodev[,noexec],size,mode,uid,gid of the sandbox"
            )
    return dict(value)


def _ulimits(value: Any, where: str) -> list[dict[str, Any]]:
    entry = obj(
        {
            "Name": one_of(*sorted(ULIMIT_NAMES)),
            "Soft": integer(0, 2**62),
            "Hard": integer(0, 2**62),
        }
    )
    items: list[dict[str, Any]] = list_of(entry, max_items=len(ULIMIT_NAMES))(value, where)
    if len({item["Name"] for item in items}) != len(items):
        raise fail(where, "a ulimit is set twice")
    if any(item["Soft"] > item["Hard"] for item in items):
        raise fail(where, "a soft limit above its hard limit")
    return items


def caps(value: Any, where: str) -> list[str]:
    caps: list[str] = list_of(matching(_CAP), max_items=len(CAP_ADD_ALLOW_LIST))(value, where)
    names = [cap.upper().removeprefix("CAP_") for cap in caps]
    if len(set(names)) != len(names):
        raise fail(where, "a capability is added twice")
    return caps


def security_opt(value: Any, where: str, rules: ProxyRules, runtime: Any) -> list[str]:
    """No-new-privileges and the project's seccomp profile for this runtime, nothing else."""
    options: list[str] = list_of(any_text, max_items=2)(value, where)
    rest = options[1:] if options[:1] == ["no-new-privileges:true"] else options
    allowed = rules.seccomp_options.get(runtime, frozenset()) if isinstance(runtime, str) else frozenset()
    if len(rest) > 1 or (rest and rest[0] not in allowed):
        raise Refused(
            "security-opt",
            f"{where}: only no-new-privileges:true and the project's seccomp profile for {runtime}",
        )
    return options


def _labels(value: Any, where: str, user: str) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > 16:
        raise fail(where, "must be an object of at most 16 labels")
    for key, label in value.items():
        matching(re.escape(LABEL_PREFIX) + r"\.[a-z][a-z-]{0,40}")(key, f"{where} key")
        if len(text(label, f"{where}.{key}")) > 256:
            raise fail(f"{where}.{key}", "longer than 256 characters")
    if value.get(f"{LABEL_PREFIX}.managed") != "true":
        raise fail(where, f"{LABEL_PREFIX}.managed must be 'true'")
    if value.get(USER_LABEL) != user:
        raise Refused("user", f"{where}.{USER_LABEL} must be the sandbox's own uid:gid")
    return dict(value)


def validate_create(name: str, body: Any, rules: ProxyRules) -> dict[str, Any]:
    """The create body to forward, or Refused naming the rule it broke."""
    if not NAME.fullmatch(name):
        raise Refused("container-name", f"{name!r} is not a sandbox name")
    if not isinstance(body, dict):
        raise fail("body", "must be an object")
    agent = body.get("Cmd") == AGENT_COMMAND
    labels = body.get("Labels")
    code_user = sandbox_user(
        labels.get(USER_LABEL) if isinstance(labels, dict) else None, "Labels.user", rules
    )
    uid = int(code_user.split(":")[0])
    workdir = _path(body.get("WorkingDir"), "WorkingDir")
    host_in = body.get("HostConfig")
    runtime = host_in.get("Runtime") if isinstance(host_in, dict) else None
    host = {
        "NetworkMode": const("none"),
        "ReadonlyRootfs": boolean,
        "CapDrop": const(["ALL"]),
        "CapAdd": caps,
        "SecurityOpt": lambda v, w: security_opt(v, w, rules, runtime),
        "Privileged": const(False),
        "PidsLimit": integer(1, MAX_PIDS.get(runtime, 0) if isinstance(runtime, str) else 0),
        "Memory": integer(6 * 1024**2, 1024 * _GIB),
        "MemorySwap": integer(6 * 1024**2, 2048 * _GIB),
        "NanoCpus": integer(1, 64 * 10**9),
        "Tmpfs": lambda v, w: _tmpfs(v, w, uid),
        "Ulimits": _ulimits,
        "Init": const(False) if agent else boolean,
        "Runtime": one_of("runc", "runsc"),
        "Binds": lambda v, w: binds_of(v, w, rules),
        "RestartPolicy": obj({"Name": const("no")}),
    }
    if agent:
        host["LogConfig"] = obj({"Type": const("none"), "Config": const({})})
    top = {
        "Image": matching(IMAGE),
        "Cmd": const(AGENT_COMMAND if agent else ["sleep", "infinity"]),
        "Entrypoint": const([]),
        "User": const(code_user if agent else KEEPER_USER),
        "WorkingDir": const(workdir),
        "Env": const(environment(workdir)),
        "Labels": lambda v, w: _labels(v, w, code_user),
        "Hostname": const("sandbox"),
        "StopSignal": const("SIGKILL"),
        "NetworkDisabled": const(True),
        "AttachStdin": const(agent),
        "AttachStdout": const(agent),
        "AttachStderr": const(agent),
        "Tty": const(False),
        "OpenStdin": const(agent),
        "HostConfig": obj(host),
    }
    if agent:
        top["StdinOnce"] = const(False)
    checked: dict[str, Any] = obj(top)(body, "body")
    host_config = checked["HostConfig"]
    if host_config["MemorySwap"] < host_config["Memory"]:
        raise fail("HostConfig.MemorySwap", "below Memory")
    return checked


def validate_exec_create(body: Any, facts: ContainerFacts) -> dict[str, Any]:
    """An exec create body: the sandbox's own uid, not privileged, no tty or stdin, its own
    environment (or none)."""
    env = body.get("Env") if isinstance(body, dict) else None
    checked: dict[str, Any] = obj(
        {
            "Container": text,
            "User": const(facts.user),
            "Privileged": const(False),
            "Tty": const(False),
            "AttachStdin": const(False),
            "AttachStdout": const(True),
            "AttachStderr": const(True),
            "Cmd": list_of(any_text, max_items=4096),
        },
        # No Env (the container's own), none at all, or exactly the container's own.
        {"WorkingDir": _path_or_root, "Env": const([] if env == [] else list(facts.env))},
    )(body, "body")
    return checked


def validate_exec_start(body: Any) -> dict[str, Any]:
    checked: dict[str, Any] = obj({"Detach": const(False), "Tty": const(False)})(body, "body")
    return checked


def _path_or_root(value: Any, where: str) -> str:
    return "/" if value == "/" else _path(value, where)
