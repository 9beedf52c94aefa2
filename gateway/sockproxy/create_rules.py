"""What the proxy accepts in a container create body: exactly what the broker sends, nothing else.

`validate_create` accepts a container create body only if it has the shape `create_body()` gives
for some profile the policy guardrails allow, and returns the object to forward. Every key is
known and spelled exactly, every value type-checked against the guardrails: a uid from the
configured range, network none, the project's seccomp profile by content, CapDrop ALL with
capabilities from the allow-list, binds only from configured source directories, read-only, at
/tools and /skills, no mounts, devices, volumes, ports, links, sysctls or host namespaces.
"""

from __future__ import annotations

import re
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
from gateway.egress.network import EgressNetwork
from gateway.sockproxy.binds import binds_of
from gateway.sockproxy.errors import Refused
from gateway.sockproxy.fields import NAME, caps, plain_path, sandbox_user, security_opt
from gateway.sockproxy.routes import IMAGE
from gateway.sockproxy.rules import ProxyRules
from gateway.sockproxy.shapes import (
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
from policy.model import ULIMIT_NAMES

__all__ = ["MAX_PIDS", "validate_create"]

_TMPFS_OPTIONS = re.compile(
    r"rw,nosuid,nodev(,noexec)?,size=[1-9][0-9]{0,13},mode=[0-7]{1,4},uid=(?P<uid>[1-9][0-9]{0,9}),"
    r"gid=(?P<gid>[1-9][0-9]{0,9})"
)
_KERNEL_TREES = ("/proc", "/sys", "/dev")
_GIB = 1024**3
#: The largest pids limit a profile can give, per runtime (gVisor's is scaled: create_body.py).
MAX_PIDS = {"runc": 32768, "runsc": 32768 * GVISOR_PIDS_FACTOR + GVISOR_PIDS_BASE}


def _tmpfs(value: Any, where: str, uid: int) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > 8:
        raise fail(where, "must be an object of at most 8 mounts")
    for path, options in value.items():
        plain_path(path, f"{where} key")
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


def _egress_address(network: EgressNetwork) -> Any:
    def check(value: Any, where: str) -> str:
        if not network.holds(text(value, where)):
            raise Refused(
                "egress-network", f"{where}: {str(value)[:40]!r} is not a sandbox address of {network.subnet}"
            )
        return str(value)

    return check


def _network(
    body: dict[str, Any], host: dict[str, Any], top: dict[str, Any], env: list[str], rules: ProxyRules
) -> None:
    """Network none; or, for the egress network (exactly as configured), that network only, at an
    address of its subnet, with the proxy environment and the unroutable DNS address."""
    host_in = body.get("HostConfig")
    mode = host_in.get("NetworkMode") if isinstance(host_in, dict) else None
    network = rules.egress
    if network is None or mode != network.name:
        host["NetworkMode"] = const("none")
        top |= {"Env": const(env), "NetworkDisabled": const(True)}
        return
    host |= {key: const(value) for key, value in network.host_config().items()}
    endpoint = obj({"IPAMConfig": obj({"IPv4Address": _egress_address(network)})})
    top |= {
        "Env": const([*env, *network.environment()]),
        "NetworkDisabled": const(False),
        "NetworkingConfig": obj({"EndpointsConfig": obj({network.name: endpoint})}),
    }


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
    workdir = plain_path(body.get("WorkingDir"), "WorkingDir")
    host_in = body.get("HostConfig")
    runtime = host_in.get("Runtime") if isinstance(host_in, dict) else None
    host = {
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
        "Labels": lambda v, w: _labels(v, w, code_user),
        "Hostname": const("sandbox"),
        "StopSignal": const("SIGKILL"),
        "AttachStdin": const(agent),
        "AttachStdout": const(agent),
        "AttachStderr": const(agent),
        "Tty": const(False),
        "OpenStdin": const(agent),
    }
    if agent:
        top["StdinOnce"] = const(False)
    _network(body, host, top, environment(workdir), rules)
    top["HostConfig"] = obj(host)
    checked: dict[str, Any] = obj(top)(body, "body")
    host_config = checked["HostConfig"]
    if host_config["MemorySwap"] < host_config["Memory"]:
        raise fail("HostConfig.MemorySwap", "below Memory")
    return checked
