"""The app's lifespan: start-up sweep, background work while serving, clean-up at the stop.

While the app serves: the reaper (sandboxes past their idle TTL or max age), the warm pool, the
summaries of repeated audit events, and policy reload on SIGHUP. At the stop: calls still running
get a moment to finish, the gateway's sandboxes are removed (unless kept), and the stop is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import anyio
from starlette.applications import Starlette

from audit import AuditLog, AuditWriteError
from gateway import __version__
from gateway.calls.reload import reload_policy
from gateway.config import Settings
from gateway.errors import GatewayError
from gateway.fleet.reload import reload_hosts
from gateway.http.sessions import GatewaySessionManager
from gateway.sandboxes.broker import Broker
from gateway.upstream import Upstreams, generate
from gateway.wiring import Core

__all__ = ["Lifespan", "gateway_lifespan"]

_log = logging.getLogger("sandbox_gateway.app")

Lifespan = Callable[[Starlette], AbstractAsyncContextManager[None]]

#: How often ended windows of repeated audit events are summarised (their summaries are this late at most).
_REPEAT_FLUSH_S = 1.0
#: Regenerations of the tool modules after list-changed notifications are at least this far apart.
_REGENERATE_EVERY_S = 2.0
#: After the server's graceful wait, how long calls still running get before sandboxes are removed.
_SETTLE_S = 2.0


async def _reap_forever(broker: Broker, interval_s: float) -> None:
    """Remove sandboxes past their idle TTL or max age, every `interval_s`."""
    while True:
        await anyio.sleep(interval_s)
        try:
            await broker.reap_expired()
        except GatewayError as exc:  # the engine may be down for a while; try again next round
            _log.warning("reaping expired sandboxes failed: %s", exc.message)


def _reload(core: Core, settings: Settings) -> None:
    """SIGHUP: the policy file and, in fleet mode, the hosts file (each refused alone if wrong)."""
    reload_policy(core.service, settings.policy_file, core.audit)
    if core.fleet is not None and settings.hosts_file is not None:
        fleet = core.fleet.fleet
        if reload_hosts(fleet, settings.hosts_file, core.audit):  # no new principal on a drained host
            drained = {host.name for host in fleet.hosts.hosts if host.drain}
            core.broker.pool.retire_if(lambda s: fleet.inventory.host_of(s.container_id) in drained)


async def _sweep(core: Core) -> None:
    """Keep current sandboxes from before a restart for adoption; remove stale and orphaned ones."""
    specs = {name: profile.sandbox.digest() for name, profile in core.engine.policy.profiles.items()}
    try:
        await core.broker.sweep(specs)
    except GatewayError as exc:  # the engine may come up later; sandboxes are then adopted lazily
        _log.warning("start-up sweep of sandboxes failed: %s", exc.message)


async def _start_upstreams(core: Core, settings: Settings) -> None:
    """Code mode: connect to the upstream servers (one that does not answer is tried again on its
    next call) and, with --generate-tools, write their modules now and whenever a list changes."""
    upstreams = core.upstreams
    if upstreams is None:
        return
    await upstreams.start()
    connected = sorted(name for name in upstreams.servers() if upstreams.connected(name))
    core.audit.emit("upstreams.start", servers=sorted(upstreams.servers()), connected=connected)
    if not settings.generate_tools or settings.tools_path is None:
        return
    writer = _ToolWriter(core, upstreams, settings.tools_path)
    await writer.write("start")
    upstreams.on_tools_changed = writer.changed


async def _start_egress(core: Core) -> None:
    """The egress proxy, when a profile has egress (otherwise with the first egress sandbox, after a
    reload that adds one). A proxy that cannot start fails those sandboxes, not the gateway."""
    if core.egress is None or not core.egress.profiles():
        return
    try:
        await core.egress.ensure_running()
    except GatewayError as exc:
        _log.error("the egress proxy did not start: %s", exc.message)


class _ToolWriter:
    """Writes the upstream tools' modules: at start, then once per burst of list-changed
    notifications (at most one run at a time, one more queued, and `_REGENERATE_EVERY_S` apart), so
    a chatty upstream cannot make the gateway list every server again and again."""

    def __init__(self, core: Core, upstreams: Upstreams, out: Path) -> None:
        self.core, self.upstreams, self.out = core, upstreams, out
        self.running = False
        self.again: set[str] = set()
        self.last = 0.0

    async def changed(self, server: str) -> None:
        self.again.add(server)
        if self.running:
            return  # the run in progress writes again once it ends
        self.running = True
        try:
            while self.again:
                await anyio.sleep(max(0.0, self.last + _REGENERATE_EVERY_S - anyio.current_time()))
                servers, self.again = sorted(self.again), set()
                await self.write("list-changed:" + ",".join(servers))
        finally:
            self.running = False

    async def write(self, trigger: str) -> None:
        self.last = anyio.current_time()
        try:
            report = await generate(self.upstreams, self.out)
        except GatewayError as exc:
            _log.warning("generating the upstream tools' modules failed: %s", exc.message)
            return
        with contextlib.suppress(AuditWriteError):
            self.core.audit.emit(
                "tools.generate",
                trigger=trigger,
                written=len(report.written),
                removed=len(report.removed),
                unavailable=sorted(report.unavailable),
            )


async def _flush_repeated_forever(audit: AuditLog) -> None:
    """Write the summary of each window of repeated events (auth failures, rate-limit hits) once it ends."""
    while True:
        await anyio.sleep(_REPEAT_FLUSH_S)
        try:
            audit.flush_repeated()
        except AuditWriteError:  # the sinks' failures are logged and counted; try again next round
            continue


def _record_stop(audit: AuditLog, removed: int, interrupted: int) -> None:
    """Summarise the windows of repeated events still open, so no counted event is lost at a stop,
    then record the stop itself (the chain's last line for this run)."""
    with contextlib.suppress(AuditWriteError):
        audit.flush_repeated(everything=True)
    audit.emit("gateway.stop", sandboxes_removed=removed, calls_interrupted=interrupted)


async def _cleanup(broker: Broker) -> int:
    """Remove every sandbox of this gateway; with the engine unreachable, say so and stop anyway."""
    try:
        return await broker.cleanup_all()
    except GatewayError as exc:
        _log.error("sandboxes could not be removed on shutdown (%s); the next start sweeps them", exc.message)
        return 0


def gateway_lifespan(
    settings: Settings,
    core: Core,
    sessions: GatewaySessionManager,
    on_shutdown: Callable[[], None] | None = None,
) -> Lifespan:
    """The lifespan: runs the MCP session manager and the background work, removes sandboxes at
    the stop, then calls `on_shutdown` (to flush exporters)."""
    broker, audit = core.broker, core.audit

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        hup = True
        try:
            loop.add_signal_handler(signal.SIGHUP, _reload, core, settings)
        except (RuntimeError, ValueError):  # an embedded server off the main thread: no signals there
            hup = False
            _log.warning("policy reload on SIGHUP is unavailable outside the main thread")
        async with sessions.run():
            audit.emit(
                "gateway.start",
                version=__version__,
                gateway_id=settings.gateway_id,
                policy_digest=core.engine.digest,
                docker_host=None if settings.hosts_file else settings.docker_host,
                hosts_file=str(settings.hosts_file) if settings.hosts_file else None,
                replica_id=settings.replica_id or None,
                trusted_proxies=list(settings.trusted_proxies) or None,
            )
            if core.fleet is not None:  # which hosts answer, before the sweep lists them
                await core.fleet.tick()
            await _sweep(core)
            await _start_upstreams(core, settings)
            await _start_egress(core)
            try:
                # Background work ends (and its Docker calls return) before the clean-up below, so
                # a pool sandbox being made now cannot outlive the shutdown.
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(_reap_forever, broker, settings.reap_interval_s)
                    tasks.start_soon(broker.maintain_pool)
                    tasks.start_soon(_flush_repeated_forever, audit)
                    if core.egress is not None:
                        tasks.start_soon(core.egress.tail_forever)
                    if core.fleet is not None:
                        tasks.start_soon(core.fleet.run, core.fleet.fleet.hosts.health.probe_interval_s)
                    try:
                        yield
                    finally:
                        if hup:
                            loop.remove_signal_handler(signal.SIGHUP)
                        tasks.cancel_scope.cancel()
            finally:
                removed = 0
                with anyio.CancelScope(shield=True):
                    # The server already let open requests finish (up to the grace); calls still
                    # running now lost their client, or outlived the grace: they get a moment more.
                    interrupted = await broker.wait_idle(min(settings.shutdown_grace_s, _SETTLE_S))
                    # A fleet's replicas share the sandboxes: the others adopt what this one held.
                    if settings.remove_on_shutdown and core.fleet is None:
                        removed = await _cleanup(broker)
                    if core.upstreams is not None:
                        await core.upstreams.aclose()
                    if core.egress is not None:
                        await core.egress.stop()
                _record_stop(audit, removed, interrupted)
                if on_shutdown is not None:
                    on_shutdown()  # flush exporters now: the server may re-raise the stop signal next

    return lifespan
