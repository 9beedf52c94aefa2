"""The gateway's egress: the proxy it runs, the addresses its sandboxes hold, and the audit events
of their connections. Started when the first egress sandbox is made (or at start, when the policy
has egress profiles); the policy in force is read at every change, so a reload takes effect on the
next connection (allow-lists) or at once (limits: front is reconfigured)."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path

import anyio

from audit import AuditLog, AuditWriteError
from gateway.egress.addresses import Addresses, Holder
from gateway.egress.files import write_json
from gateway.egress.log_lines import Connection, Joiner, parse_line
from gateway.egress.network import EgressNetwork
from gateway.egress.squid import SquidPair, layout_for
from gateway.errors import EgressUnavailable
from policy import Policy, Principal, SandboxSpec
from policy.egress_model import Egress

__all__ = ["EGRESS_STATE_ROOT", "EgressService", "running_for"]

#: Where each gateway's egress proxy keeps its files by default (a directory per gateway id).
EGRESS_STATE_ROOT = Path("/run/sandbox-gateway/egress")

_log = logging.getLogger("sandbox_gateway.egress")
_POLL_S = 0.25
_RECENT_REFUSALS, _RECENT_PRINCIPALS = 32, 4096


class _Tail:
    """New whole lines of a file that only grows."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.rest = path, 0, b""

    def lines(self) -> list[str]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read(4 * 1024 * 1024)
        except OSError:  # not written yet (or gone with a stopped proxy)
            return []
        self.offset += len(data)
        *whole, self.rest = (self.rest + data).split(b"\n")
        return [line.decode(errors="replace") for line in whole]


class EgressService:
    def __init__(
        self,
        network: EgressNetwork,
        state_dir: Path,
        policy: Callable[[], Policy],
        audit: AuditLog,
        *,
        hosts_file: Path | None = None,
        dns: tuple[str, ...] = (),
    ) -> None:
        self.network = network
        self.addresses = Addresses(network)
        self._policy, self._audit = policy, audit
        self._layout_args = (state_dir, hosts_file, dns)
        self._pair: SquidPair | None = None
        self._lock = anyio.Lock()
        self._joiner = Joiner()
        self._tails: dict[str, _Tail] = {}
        #: Recent refusals per `tenant/principal` (ts, message), for the result of the call they hit.
        self._refused: OrderedDict[str, deque[tuple[float, str]]] = OrderedDict()

    def profiles(self) -> dict[str, Egress]:
        return {name: p.egress for name, p in self._policy().profiles.items() if p.egress is not None}

    def _document(self) -> dict[str, object]:
        rules = {name: list(egress.allow) for name, egress in self.profiles().items()}
        return {"sources": self.addresses.sources(), "profiles": rules}

    @property
    def running(self) -> bool:
        return self._pair is not None and self._pair.running()

    async def ensure_running(self) -> None:
        """Start the proxy if it does not run (again, if it died)."""
        async with self._lock:
            if self.running:
                return
            if self._pair is not None:
                await anyio.to_thread.run_sync(self._pair.stop)
            state_dir, hosts_file, dns = self._layout_args
            layout = layout_for(self.network, state_dir, hosts_file=hosts_file, dns=dns)
            pair = SquidPair(layout)
            await anyio.to_thread.run_sync(pair.start, self.profiles(), self._document())
            self._pair = pair
            self._tails = {stage: _Tail(layout.log(stage)) for stage in ("tls", "front")}
            self._audit.emit(
                "egress.start", proxy_url=self.network.proxy_url, profiles=sorted(self.profiles())
            )

    def publish(self) -> None:
        """After a policy change: rewrite policy.json (what each profile allows) and front's limits
        if they changed."""
        if self._pair is None:
            return
        self._write_policy()
        self._pair.reconfigure(self.profiles())

    def _write_policy(self) -> None:
        """Rewrite policy.json: who holds which address (the helper re-reads it on change)."""
        if self._pair is not None:
            write_json(self._pair.layout.policy_file, self._document())

    def hold(self, principal: Principal | None, profile: str) -> tuple[EgressNetwork, str]:
        """(the network, an address on it) for a sandbox about to be made (for a warm pool when
        `principal` is None), recorded before it exists."""
        if self._pair is None:
            raise EgressUnavailable("the egress proxy is not running")
        who = (principal.id, principal.tenant) if principal is not None else ("(pool)", "")
        address = self.addresses.pick(Holder(*who, profile))
        self._write_policy()
        return self.network, address

    def claim(self, address: str, principal: str, tenant: str, profile: str, container_id: str) -> bool:
        if not self.addresses.claim(address, Holder(principal, tenant, profile, container_id)):
            return False
        self._write_policy()
        return True

    def attached(self, address: str, container_id: str) -> None:
        self.addresses.attach(address, container_id)

    def reassign(self, container_id: str, principal: str, tenant: str, profile: str) -> None:
        self.addresses.reassign(container_id, principal, tenant, profile)
        self._write_policy()

    def release(self, *, address: str | None = None, container_id: str | None = None) -> None:
        if self.addresses.release(address=address, container_id=container_id):
            self._write_policy()

    def poll(self, *, everything: bool = False) -> list[Connection]:
        """Read new log lines; the connections that ended, joined."""
        now = time.monotonic()
        done = []
        if "tls" in self._tails:
            for line in self._tails["tls"].lines():
                self._joiner.tls(parse_line(line))
        if "front" in self._tails:
            for line in self._tails["front"].lines():
                conn = self._joiner.front(parse_line(line), now)
                if conn is not None:
                    done.append(conn)
        return done + self._joiner.ready(now, everything=everything)

    def _remember_refusal(self, conn: Connection) -> None:
        key = f"{conn.tenant}/{conn.principal}"
        recent = self._refused.pop(key, None) or deque(maxlen=_RECENT_REFUSALS)
        target = f"[{conn.host}]:{conn.port}" if ":" in conn.host else f"{conn.host}:{conn.port}"
        recent.append((conn.ts, f"{target}: {conn.message or 'egress refused'} (rule: {conn.rule})"))
        self._refused[key] = recent
        while len(self._refused) > _RECENT_PRINCIPALS:
            self._refused.popitem(last=False)

    def refused_since(self, tenant: str, principal: str, since: float) -> list[str]:
        """The refusals of `tenant/principal`'s sandbox that ended at or after `since` (epoch)."""
        # Off the calling request's context: the events read now may be other principals'.
        contextvars.Context().run(self.catch_up)
        recent = self._refused.get(f"{tenant}/{principal}", ())
        return [message for ts, message in recent if ts >= since - 1.0]

    def catch_up(self) -> None:
        """Record the connections whose log lines are in."""
        for conn in self.poll():
            with contextlib.suppress(AuditWriteError):
                self.record(conn)

    def record(self, conn: Connection) -> None:
        if not conn.principal and (holder := self.addresses.holder(conn.sandbox_ip)) is not None:
            conn.principal, conn.tenant, conn.profile = holder.principal, holder.tenant, holder.profile
        if not conn.allowed and conn.principal:
            self._remember_refusal(conn)
        self._audit.emit(
            "egress.connection",
            principal=conn.principal or None,
            tenant=conn.tenant or None,
            profile=conn.profile or None,
            decision="allow" if conn.allowed else "deny",
            reasons=[conn.message] if conn.message else None,
            outcome="ok" if conn.allowed else "rejected",
            duration_ms=float(conn.duration_ms),
            sandbox_ip=conn.sandbox_ip,
            method=conn.method,
            dest_host=conn.host,
            dest_port=conn.port,
            egress_rule=conn.rule or None,
            sni=conn.sni or None,
            server_address=conn.server or None,
            bytes_up=conn.bytes_up,
            bytes_down=conn.bytes_down,
        )

    async def tail_forever(self) -> None:
        """Turn the proxy's log lines into audit events while the gateway serves; a failure here is
        logged and tried again, never the gateway's end."""
        while True:
            await anyio.sleep(_POLL_S)
            try:
                self.catch_up()
            except Exception:  # noqa: BLE001 - the gateway outlives a broken log reader
                _log.exception("reading the egress proxy's logs failed")

    async def stop(self) -> None:
        if self._pair is None:
            return
        await anyio.to_thread.run_sync(self._pair.stop)
        for conn in self.poll(everything=True):
            with contextlib.suppress(AuditWriteError):
                self.record(conn)
        self._pair = None
        with contextlib.suppress(AuditWriteError):
            self._audit.emit("egress.stop")


async def running_for(service: EgressService | None, spec: SandboxSpec) -> EgressService | None:
    """The egress service, its proxy running, for a sandbox with network egress; None for network
    none. EgressUnavailable when the gateway has none (or its proxy cannot start)."""
    if spec.network != "egress":
        return None
    if service is None:
        raise EgressUnavailable(
            "this gateway has no egress network: run `sandbox-gateway setup` (a fleet of sandbox hosts, "
            "--hosts-file, serves no egress profile)"
        )
    await service.ensure_running()
    return service
