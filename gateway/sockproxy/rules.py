"""The proxy's configuration (what a sandbox may be) and what it knows of a sandbox it found.

The checks built on these: fields.py (single fields a create body and a sandbox's inspect
document share), binds.py (the /tools and /skills binds), create_rules.py (a container create
body) and exec_rules.py (exec create and start bodies).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.egress.network import EgressNetwork

__all__ = ["ContainerFacts", "ProxyRules"]


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
    #: The egress network sandboxes of egress profiles join (at an address of its subnet); None:
    #: every sandbox has network none.
    egress: EgressNetwork | None = None

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
