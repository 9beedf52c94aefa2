"""The read-only /tools and /skills binds a sandbox may have, and the host directories behind them."""

from __future__ import annotations

import os
import stat
from typing import Any

from gateway.sockproxy.errors import Refused
from gateway.sockproxy.fields import plain_path
from gateway.sockproxy.rules import ProxyRules
from gateway.sockproxy.shapes import list_of, text

__all__ = ["bind_source", "binds_of"]


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
        bind_source(plain_path(source, f"{where}[{index}]"), rules)
        targets.append(rest)
    if len(set(targets)) != len(targets):
        raise Refused("bind-target", f"{where}: a target is bound twice")
    return binds
