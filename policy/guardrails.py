"""Guardrails: what no policy file can switch on, whatever it says.

They run on the raw YAML mapping before the schema, so the message names the rule that was
broken rather than a generic "unknown key"; a rule about a profile as it is in force (what it
inherits through `extends` included) runs on the mapping with `extends` resolved. Each rule has a
stable id used in messages and tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from policy.errors import GuardrailViolation
from policy.model import CAP_ADD_ALLOW_LIST

__all__ = ["GUARDRAIL_IDS", "check_effective_guardrails", "check_guardrails"]

Finding = tuple[str, str, str]  # (dotted key, rule id, detail)
_Rule = Callable[[str, Mapping[str, Any]], Iterator[Finding]]

_SOCKET_MARKERS = ("docker.sock", "containerd.sock", "/var/run/docker", "/run/containerd", "crio.sock")
_HOST_NAMESPACE_KEYS = {
    "network": "no-host-network",
    "network_mode": "no-host-network",
    "pid": "no-host-pid",
    "pid_mode": "no-host-pid",
    "ipc": "no-host-ipc",
    "ipc_mode": "no-host-ipc",
    "uts": "no-host-uts",
    "uts_mode": "no-host-uts",
    "userns": "no-host-userns",
    "userns_mode": "no-host-userns",
    "cgroupns": "no-host-cgroupns",
}
_MOUNT_KEYS = ("volumes", "binds", "mounts", "volumes_from", "bind")


def _privileged(prefix: str, section: Mapping[str, Any]) -> Iterator[Finding]:
    if "privileged" in section and section["privileged"] is not False:
        yield f"{prefix}.privileged", "no-privileged", "privileged containers are never allowed"


def _host_namespaces(prefix: str, section: Mapping[str, Any]) -> Iterator[Finding]:
    for key, rule in _HOST_NAMESPACE_KEYS.items():
        value = section.get(key)
        if isinstance(value, str) and (value == "host" or value.startswith("container:")):
            yield f"{prefix}.{key}", rule, f"{value!r} would share a namespace with the host or a container"


def _mounts(prefix: str, section: Mapping[str, Any]) -> Iterator[Finding]:
    for key in _MOUNT_KEYS:
        if key in section:
            yield f"{prefix}.{key}", "no-host-mounts", "host paths are never mounted into a sandbox"
    if "devices" in section:
        yield f"{prefix}.devices", "no-devices", "device mappings are never allowed"


def _sockets(prefix: str, section: Mapping[str, Any]) -> Iterator[Finding]:
    for key, value in _walk(section, prefix):
        if isinstance(value, str) and any(marker in value for marker in _SOCKET_MARKERS):
            yield key, "no-docker-socket", "the engine's socket never reaches a sandbox"


def _unconfined(prefix: str, section: Mapping[str, Any]) -> Iterator[Finding]:
    if str(section.get("seccomp", "")).lower() == "unconfined":
        yield f"{prefix}.seccomp", "no-unconfined-seccomp", "a sandbox always runs under seccomp"
    if str(section.get("apparmor", "")).lower() == "unconfined":
        yield f"{prefix}.apparmor", "no-unconfined-apparmor", "apparmor cannot be switched off"
    options = section.get("security_opt")
    if isinstance(options, list):
        for index, option in enumerate(options):
            text = str(option).replace(":", "=").lower()
            if text in ("seccomp=unconfined", "apparmor=unconfined", "label=disable"):
                rule = "no-unconfined-apparmor" if "apparmor" in text else "no-unconfined-seccomp"
                yield f"{prefix}.security_opt[{index}]", rule, f"{option!r} removes a confinement layer"


def _network_only_through_egress(prefix: str, section: Mapping[str, Any]) -> Iterator[Finding]:
    value = section.get("network", "none")
    if prefix.endswith(".sandbox") and value != "none":  # `host` and `container:` are caught before
        yield (
            f"{prefix}.network",
            "egress-is-the-only-network",
            f"network {value!r}: a sandbox has network none, and reaches the outside only through its "
            "profile's `egress` allow-list (the egress proxy)",
        )


def _root_user(prefix: str, section: Mapping[str, Any]) -> Iterator[Finding]:
    if "user" not in section:
        return
    user = str(section["user"]).strip()
    uid, _, gid = user.partition(":")
    if _is_root_id(uid) or (gid and _is_root_id(gid)):
        yield f"{prefix}.user", "no-root", "sandboxes never run as uid or gid 0"


def _is_root_id(value: str) -> bool:
    """`root`, empty, or any spelling the engine reads as 0 (`00`, `+0`, `-0`, ` 0`)."""
    text = value.strip()
    if text in ("", "root"):
        return True
    try:
        return int(text) == 0
    except ValueError:
        return False


def _capabilities(prefix: str, section: Mapping[str, Any]) -> Iterator[Finding]:
    if "cap_drop" in section:
        yield f"{prefix}.cap_drop", "cap-drop-all", "ALL capabilities are always dropped; only cap_add is set"
    caps = section.get("cap_add")
    if not isinstance(caps, list | tuple):
        return
    for index, cap in enumerate(caps):
        name = str(cap).upper().removeprefix("CAP_")
        if name not in CAP_ADD_ALLOW_LIST:
            yield (
                f"{prefix}.cap_add[{index}]",
                "cap-add-allow-list",
                f"{cap!r} is not in the allow-list {sorted(CAP_ADD_ALLOW_LIST)}",
            )


_RULES: tuple[_Rule, ...] = (
    _privileged,
    _host_namespaces,
    _network_only_through_egress,
    _mounts,
    _sockets,
    _unconfined,
    _root_user,
    _capabilities,
)

GUARDRAIL_IDS = frozenset(
    {
        "no-privileged",
        "no-host-mounts",
        "no-devices",
        "no-docker-socket",
        "no-unconfined-seccomp",
        "no-unconfined-apparmor",
        "no-root",
        "cap-add-allow-list",
        "cap-drop-all",
        "code-mode-needs-agent",
        "egress-is-the-only-network",
        *_HOST_NAMESPACE_KEYS.values(),
    }
)


def _walk(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _walk(item, f"{prefix}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _walk(item, f"{prefix}[{index}]")
    else:
        yield prefix, value


def _sections(raw: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    profiles = raw.get("profiles")
    if not isinstance(profiles, Mapping):
        return
    for name, profile in profiles.items():
        if not isinstance(profile, Mapping):
            continue
        yield f"profiles.{name}", profile
        sandbox = profile.get("sandbox")
        if isinstance(sandbox, Mapping):
            yield f"profiles.{name}.sandbox", sandbox


def check_guardrails(raw: Mapping[str, Any], source: str) -> None:
    """Raise GuardrailViolation for the first rule a raw policy mapping breaks."""
    for prefix, section in _sections(raw):
        for rule in _RULES:
            for key, rule_id, detail in rule(prefix, section):
                raise GuardrailViolation(source, key, f"forbidden by guardrail {rule_id}", detail)


def _code_mode_needs_the_agent(prefix: str, profile: Mapping[str, Any]) -> Iterator[Finding]:
    sandbox = profile.get("sandbox")
    exec_path = sandbox.get("exec_path", "agent") if isinstance(sandbox, Mapping) else "agent"
    if profile.get("code_mode") is not None and exec_path != "agent":
        yield (
            f"{prefix}.code_mode",
            "code-mode-needs-agent",
            f"code mode needs exec_path: agent (the sandbox uses exec_path: {exec_path}; upstream calls "
            "travel over the agent's channel)",
        )


def check_effective_guardrails(effective: Mapping[str, Any], source: str) -> None:
    """The rules that hold for a profile as it is in force, `extends` resolved (a child inherits
    its parent's `code_mode` and `exec_path`): raise GuardrailViolation for the first one broken."""
    profiles = effective.get("profiles")
    if not isinstance(profiles, Mapping):
        return
    for name, profile in profiles.items():
        if isinstance(profile, Mapping):
            for key, rule_id, detail in _code_mode_needs_the_agent(f"profiles.{name}", profile):
                raise GuardrailViolation(source, key, f"forbidden by guardrail {rule_id}", detail)
