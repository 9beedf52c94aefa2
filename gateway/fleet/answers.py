"""What the fleet says when it cannot do what it was asked, and how replies from several hosts are
made one answer."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from gateway.errors import EngineError
from gateway.fleet.health import HostHealth

__all__ = ["NoHostAvailable", "agreed_identity", "no_host_answers", "why_none"]


class NoHostAvailable(EngineError):
    """No host can take a new sandbox: all down, drained, full, or without what the profile needs."""


def why_none(needs: Mapping[str, str] | None) -> str:
    """Why no host could take a new sandbox (for `no-host-available`)."""
    wanted = ", ".join(f"{k}={v}" for k, v in (needs or {}).items())
    return (
        "no sandbox host can take a new sandbox (every host is down, drained, full or without the "
        f"image{', or without the labels ' + wanted if wanted else ''}); see `sandbox-gateway hosts`"
    )


def no_host_answers(hosts: Iterable[HostHealth]) -> str:
    """Each host's state or last error, when none answers."""
    said = [f"{h.name}: {'down' if h.state == 'down' else h.last_error or h.state}" for h in hosts]
    return "no sandbox host answers: " + "; ".join(said)


def agreed_identity(found: list[tuple[str, frozenset[str]]]) -> tuple[str, frozenset[str]]:
    """The image id most hosts have (a tie: the same answer in every replica), and its digests."""
    ids = [identity[0] for identity in found]
    best = max(sorted(set(ids)), key=ids.count)
    return best, frozenset().union(*(d for i, d in found if i == best))
