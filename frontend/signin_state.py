"""What the sign-in keeps in memory between its two routes and the page: the flows in flight (by
`state`) and the hand-offs waiting for their page (by the hand-off cookie's id). Both are bounded and
expire; each entry is taken at most once."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from mcp.client.auth.oauth2 import PKCEParameters

from frontend.oauth import Endpoints

__all__ = ["FLOW_TTL_S", "HANDOFF_TTL_S", "Flow", "Flows", "Handoff", "Handoffs", "new_flow"]

#: How long a person has to finish signing in at the issuer.
FLOW_TTL_S = 600.0
#: How long a token waits in memory for the page that asked for it to load.
HANDOFF_TTL_S = 120.0
#: Sign-ins in flight and hand-offs waiting, each at most (the oldest make room).
MAX_PENDING = 1024


@dataclass(frozen=True, slots=True)
class Flow:
    """One sign-in in flight: what the callback needs, and the hash of the browser's binding cookie."""

    endpoints: Endpoints
    verifier: str
    binding_hash: bytes
    started: float


def bound(binding: str) -> bytes:
    return hashlib.sha256(binding.encode()).digest()


T = TypeVar("T")


class _Expiring(Generic[T]):
    """A bounded map whose entries live `ttl_s`; each is taken at most once."""

    def __init__(self, ttl_s: float, limit: int = MAX_PENDING) -> None:
        self._ttl_s, self._limit = ttl_s, limit
        self._items: OrderedDict[str, tuple[float, T]] = OrderedDict()

    def put(self, key: str, value: T) -> None:
        self._expire()
        while len(self._items) >= self._limit:
            self._items.popitem(last=False)
        self._items[key] = (time.monotonic(), value)

    def take(self, key: str) -> T | None:
        self._expire()
        entry = self._items.pop(key, None)
        return entry[1] if entry is not None else None

    def __len__(self) -> int:
        self._expire()
        return len(self._items)

    def _expire(self) -> None:
        cutoff = time.monotonic() - self._ttl_s
        while self._items and next(iter(self._items.values()))[0] < cutoff:
            self._items.popitem(last=False)


class Flows(_Expiring[Flow]):
    def take_bound(self, state: str, binding: str | None) -> Flow | None:
        """The flow `state` names if this browser started it (its binding cookie matches)."""
        flow = self.take(state)
        if flow is None or binding is None or not hmac.compare_digest(flow.binding_hash, bound(binding)):
            return None
        return flow


@dataclass(frozen=True, slots=True)
class Handoff:
    """What the callback leaves for the page: a token (with its issuer and lifetime) or an error."""

    token: str | None = None
    issuer: str = ""
    expires_in_s: int | None = None
    error: str | None = None

    def __repr__(self) -> str:
        token = "<hidden>" if self.token else None
        return f"Handoff(token={token}, issuer={self.issuer!r}, error={self.error!r})"


class Handoffs(_Expiring[Handoff]):
    def leave(self, handoff: Handoff) -> str:
        """Keep `handoff` under a new random id (the hand-off cookie's value)."""
        key = secrets.token_urlsafe(32)
        self.put(key, handoff)
        return key

    def claim(self, key: str | None) -> Handoff | None:
        return self.take(key) if key else None


def new_flow(endpoints: Endpoints) -> tuple[str, str, PKCEParameters, Flow]:
    """state, binding cookie value, PKCE pair and the flow record for a new sign-in."""
    state, binding, pkce = secrets.token_urlsafe(32), secrets.token_urlsafe(32), PKCEParameters.generate()
    return state, binding, pkce, Flow(endpoints, pkce.code_verifier, bound(binding), time.monotonic())
