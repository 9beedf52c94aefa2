"""Checks of single fields that a create body and a sandbox's inspect document share: the
sandbox's name and uid:gid, plain paths, added capabilities, security options."""

from __future__ import annotations

import re
from typing import Any

from gateway.sockproxy.errors import Refused
from gateway.sockproxy.rules import ProxyRules
from gateway.sockproxy.shapes import any_text, fail, list_of, matching, text
from policy.model import CAP_ADD_ALLOW_LIST

__all__ = ["NAME", "caps", "plain_path", "sandbox_user", "security_opt"]

#: A principal's sandbox, or a warm pool's (of one fleet replica: `sgw-pool-REPLICA-...`).
NAME = re.compile(r"sgw-(pool-([a-z0-9][a-z0-9-]{0,62}-)?)?[0-9a-f]{16}")
_PATH = r"/[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*"
_CAP = "(?i:(cap_)?(" + "|".join(sorted(name.lower() for name in CAP_ADD_ALLOW_LIST)) + "))"
_USER = re.compile(r"(?P<uid>[1-9][0-9]{0,9}):(?P<gid>[1-9][0-9]{0,9})")


def sandbox_user(value: Any, where: str, rules: ProxyRules) -> str:
    """`uid:gid`, both canonical decimal (no sign, no leading zero), equal, and in the range."""
    match = _USER.fullmatch(text(value, where))
    if match is None:
        raise Refused("user", f"{where}: {value!r} is not a canonical numeric uid:gid")
    uid, gid = int(match["uid"]), int(match["gid"])
    if uid != gid or not rules.uid_in_range(uid):
        raise Refused("user", f"{where}: {value!r} is outside {rules.uid_low}-{rules.uid_high} or uid != gid")
    return str(value)


def plain_path(value: Any, where: str) -> str:
    """An absolute path of plain names, without '.' or '..' components."""
    path: str = matching(_PATH)(value, where)
    if any(part in (".", "..") for part in path.split("/")):
        raise fail(where, "no '.' or '..' components")
    return path


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
