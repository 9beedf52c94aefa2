"""FleetMonitor: probes every host, records host state changes, and acts on them.

Every `probe_interval_s` each host is pinged (down ones too, to see them come back) on a short
timeout. A host that goes down: its attach and exec streams are cut, so calls waiting on it end now,
and the broker forgets its sandboxes (their principals' next calls get new ones elsewhere, with
`sandbox_replaced`). A host that comes back: a principal whose sandbox was made again elsewhere
meanwhile has two; the older is removed (`duplicate`), the other one stays, and a principal that
made no call while it was away finds its sandbox there again. Every few probes the hosts are listed
whole, which keeps each host's count of sandboxes (its free capacity) true across replicas.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait

import anyio
import anyio.to_thread

from audit import AuditLog
from gateway.backend.base import Backend, ContainerInfo
from gateway.errors import GatewayError
from gateway.fleet.backend import FleetBackend
from gateway.fleet.hosts import HostsFile, HostSpec, HostTLS

__all__ = ["FleetMonitor", "ProbeConnect"]

_log = logging.getLogger("sandbox_gateway.fleet")
#: Makes a host's probe connection (a Backend with the probe timeout).
ProbeConnect = Callable[[HostSpec, HostsFile], Backend]
#: Every this many probes, the hosts are listed whole.
LIST_EVERY = 5


class FleetMonitor:
    """Watches the hosts of `fleet`; `lose` is the broker's `host_lost`, `remove` its audited removal."""

    def __init__(
        self,
        fleet: FleetBackend,
        audit: AuditLog,
        probe_connect: ProbeConnect,
        *,
        lose: Callable[[set[str]], Awaitable[int]],
        remove: Callable[[ContainerInfo, str], Awaitable[bool]],
        managed: dict[str, str],
        renew: Callable[[], None] | None = None,
        current: Callable[[str], str | None] | None = None,
    ) -> None:
        self.fleet, self.audit = fleet, audit
        self._probe_connect = probe_connect
        self._lose, self._remove, self._managed = lose, remove, managed
        #: Renews this replica's places in the fleet's shared budgets (Redis), every few rounds.
        self._renew = renew
        #: Fleet replicas with Redis: the container a sandbox name was last given to.
        self._current = current
        #: Each host's probe connection, with the settings it was made with.
        self._probes: dict[str, tuple[tuple[HostSpec, HostTLS | None], Backend]] = {}
        #: Hosts whose going down was acted on (streams cut, sandboxes lost, recorded).
        self._down: set[str] = set()
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="fleet-probe")
        self._ticks = 0
        self._running: dict[str, Future[str | None]] = {}  # host -> its probe under way
        #: Threads of the monitor's own, so that probes never wait behind the gateway's other work.
        self._threads, self._listing = anyio.CapacityLimiter(2), anyio.CapacityLimiter(1)

    def _probe(self, host: HostSpec) -> str | None:
        settings = (host, self.fleet.hosts.tls_of(host))  # the file's own TLS may be the host's
        known = self._probes.get(host.name)
        if known is None or known[0] != settings:
            if known is not None:
                known[1].close()
            known = (settings, self._probe_connect(host, self.fleet.hosts))
            self._probes[host.name] = known
        try:
            known[1].ping()
        except GatewayError as exc:
            return exc.message
        return None

    def _probe_all(self, hosts: list[HostSpec]) -> list[str | None]:
        """Probe every host at once, waiting `probe_timeout_s` in all: a probe not back by then (TCP
        and TLS each have their own timeouts, which add up) fails, and runs on until it ends, the
        host's next probe with it."""
        for host in hosts:
            if host.name not in self._running:
                self._running[host.name] = self._pool.submit(self._probe, host)
        deadline = self.fleet.hosts.health.probe_timeout_s
        wait([self._running[h.name] for h in hosts], timeout=deadline)
        results: list[str | None] = []
        for host in hosts:
            probe = self._running[host.name]
            if not probe.done():
                results.append(f"no answer within {deadline:g} s")
                continue
            del self._running[host.name]
            try:
                results.append(probe.result())
            except Exception as exc:  # noqa: BLE001 - a probe that cannot even start has failed
                results.append(f"the probe failed: {exc}")
        return results

    async def tick(self) -> None:
        """One round: probe, record and act on the changes, and now and then list every host."""
        hosts = list(self.fleet.hosts.hosts)
        names = {host.name for host in hosts}
        for gone in self._probes.keys() - names:  # no longer in the hosts file
            self._probes.pop(gone)[1].close()
        self._down &= names
        results = await anyio.to_thread.run_sync(self._probe_all, hosts, limiter=self._threads)
        returned = False
        for host, error in zip(hosts, results, strict=True):
            health = self.fleet.health
            known = health.of(host.name)
            before = known.state if known is not None else None
            moved = health.ok(host.name) if error is None else health.failed(host.name, error)
            # Down: acted on once per outage (again next round if acting on it failed).
            if health.is_down(host.name):
                if host.name not in self._down:
                    await self._went_down(host.name, error or "")
                    self._down.add(host.name)  # only once done: if it failed, next round tries again
                continue
            self._down.discard(host.name)
            if moved == "up":
                returned |= before == "down"
                self.fleet.inventory.forget_host(host.name)
                self.audit.emit("host.up", host=host.name, address=host.address, was=before)
        self._ticks += 1
        if self._renew is not None and self._ticks % LIST_EVERY == 0:
            await anyio.to_thread.run_sync(self._renew, limiter=self._threads)
        if returned:  # a principal may have two sandboxes now: the older goes at once
            await self.settle()

    async def _went_down(self, host: str, error: str) -> None:
        ids = set(self.fleet.inventory.on(host))
        cut = self.fleet.streams.cut(host)
        lost = await self._lose(ids)
        self.audit.emit("host.down", host=host, error=error[:300], sandboxes=len(ids), lost=lost, streams=cut)

    async def settle(self) -> int:
        """List every host (counts stay true) and remove the older of two sandboxes of one name on
        different hosts: a principal gets a second only when its first was on a host that stopped
        answering, so the newer running one is the one in use. Returns how many were removed."""
        try:
            rows = await anyio.to_thread.run_sync(self.fleet.list, self._managed, None, limiter=self._listing)
        except GatewayError as exc:
            _log.warning("listing the sandbox hosts failed: %s", exc.message)
            return 0
        by_name: dict[str, list[ContainerInfo]] = {}
        for row in rows:
            by_name.setdefault(row.name, []).append(row)
        removed = 0
        for same in by_name.values():
            if len({row.host for row in same}) < 2:
                continue
            # The one to keep is the one last given to the principal when the replicas share that,
            # else the newest running one (a create whose start never came does not count).
            latest = self._current(same[0].name) if self._current is not None else None
            order = sorted(same, key=lambda row: (row.id == latest, row.running, row.created))
            for older in order[:-1]:
                removed += await self._remove(older, "duplicate")
        return removed

    async def run(self, interval_s: float) -> None:
        """Probe forever, every `interval_s` (from the start of one round to the next), and list the
        hosts every LIST_EVERY rounds on the side, so a slow listing never holds a probe up."""

        async def every(seconds: float, step: Callable[[], Awaitable[object]], what: str) -> None:
            while True:
                started = time.monotonic()
                try:
                    await step()
                except GatewayError as exc:  # the audit log failing: try again next round
                    _log.warning("%s failed: %s", what, exc.message)
                await anyio.sleep(max(0.0, seconds - (time.monotonic() - started)))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(every, interval_s, self.tick, "probing the sandbox hosts")
            tasks.start_soon(every, interval_s * LIST_EVERY, self.settle, "listing the sandbox hosts")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for _, probe in self._probes.values():
            probe.close()
