"""The composition root: the objects the gateway runs on, built from its settings.

`sandbox-gateway serve` and the embedding API (`DockerExecutionClient`) both build their `Core`
with `build_core`: backend -> rate limiter -> broker -> execution service, on the policy engine
and audit log each of them made (`build_audit` makes the server's from its settings).
"""

from __future__ import annotations

import functools
import logging
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from audit import AuditLog, FileSink, RepeatTable, StreamSink
from audit.otlp import OTLPLogSink, otlp_logs_configured
from audit.sinks import AuditSink, Fsync
from gateway.backend.base import Backend
from gateway.backend.docker_engine import DockerBackend, tls_config
from gateway.calls.code_mode import CodeModeCalls
from gateway.calls.explain import PrincipalDirectory
from gateway.calls.service import ExecutionService
from gateway.config import Settings
from gateway.egress.service import EGRESS_STATE_ROOT, EgressService
from gateway.errors import ConfigError
from gateway.fleet.backend import FleetBackend
from gateway.fleet.hosts import load_hosts
from gateway.fleet.lease import Leases
from gateway.fleet.monitor import FleetMonitor
from gateway.fleet.shared import SharedBudgets, SharedSandboxes, SharedSlots
from gateway.fleet.status import connect_host, observe_hosts
from gateway.ratelimit import RateLimiter
from gateway.sandboxes.broker import Broker
from gateway.sandboxes.naming import managed_by
from gateway.stages import StagedAuditLog
from gateway.uids import UidRange
from gateway.upstream import Upstreams, load_upstreams
from policy import Policy
from policy.engine import PolicyEngine

__all__ = ["Core", "build_audit", "build_core"]

_log = logging.getLogger("sandbox_gateway.audit")


def hmac_key_from(raw: bytes) -> bytes:
    """The key a key file holds: its bytes as they are (`head -c 32 /dev/urandom` may begin or end with
    whitespace bytes, which are key), except that a printable text key loses its line ending."""
    for ending in (b"\r\n", b"\n"):
        text = raw.removesuffix(ending)
        if text != raw and text.isascii() and text.decode("ascii").isprintable():
            return text
    return raw


def _hmac_key(settings: Settings) -> bytes | None:
    if settings.audit_hmac_key_file is None:
        return None
    try:
        key = hmac_key_from(settings.audit_hmac_key_file.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read the audit HMAC key file {settings.audit_hmac_key_file}") from exc
    if len(key) < 32:
        raise ConfigError("the audit HMAC key must be at least 32 bytes")
    return key


def build_audit(settings: Settings, policy: Policy) -> AuditLog:
    """Sinks: stdout (unless turned off), the rotated file, OTLP logs when OTEL_* says so. Fail-closed.
    Repeated refusals from one source are folded per window (see audit.repeats)."""
    sinks: list[AuditSink] = []
    if settings.audit_stdout:
        sinks.append(StreamSink())
    if settings.audit_log is not None:
        try:
            sinks.append(
                FileSink(
                    settings.audit_log,
                    max_bytes=settings.audit_max_bytes,
                    backups=settings.audit_backups,
                    fsync=cast("Fsync", settings.audit_fsync),  # FileSink refuses any other value
                )
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot open the audit log {settings.audit_log}: {exc}") from exc
    if otlp_logs_configured():
        sinks.append(OTLPLogSink())
    key = _hmac_key(settings)
    if key is None and policy.audit.code == "hmac":
        _log.warning("no audit HMAC key configured (SGW_AUDIT_HMAC_KEY_FILE): code HMACs are per process")
    repeats = RepeatTable(settings.audit_repeat_window_s, settings.audit_repeat_sources)
    return StagedAuditLog(sinks, fail_closed=True, code_mode=policy.audit.code, hmac_key=key, repeats=repeats)


@dataclass(frozen=True, slots=True)
class Core:
    """The gateway's object graph, handed whole to whoever needs parts of it (the HTTP app, the
    embedding API), so that none of them reaches through one object to get at another."""

    audit: AuditLog
    #: The Docker engine, through the socket proxy.
    backend: Backend
    #: Rate-limit counters: sandbox creations (the broker), request rates (the HTTP edge, or the
    #: service when there is none).
    rates: RateLimiter
    broker: Broker
    service: ExecutionService
    #: Code mode: the upstream MCP servers (started and closed by the app's lifespan), if configured.
    upstreams: Upstreams | None = None
    #: Fleet mode: the watch over the sandbox hosts (run by the app's lifespan); `backend` is then
    #: the FleetBackend over them.
    fleet: FleetMonitor | None = None

    @property
    def egress(self) -> EgressService | None:
        """Sandboxes' egress (its proxy is started by the app's lifespan when the policy has egress)."""
        return self.broker.containers.egress

    @property
    def engine(self) -> PolicyEngine:
        """The policy in force. The service holds it, and a reload (SIGHUP) replaces it there."""
        return self.service.engine


def replica_name(settings: Settings) -> str:
    """This replica's name: --replica-id; in fleet mode without one, one made from the host name
    (the same after a restart, so a restarted replica still sweeps its own warm pool)."""
    if settings.replica_id or settings.hosts_file is None:
        return settings.replica_id
    name = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower()).strip("-")[:40]
    return f"r-{name or 'host'}"


def share_budgets(
    settings: Settings, broker: Broker, service: ExecutionService
) -> tuple[Callable[[], None], Callable[[str], str | None]]:
    """Fleet replicas with Redis: tenants' running calls and sandboxes counted across all of them, and
    a lease per principal's sandbox. Returns what renews this replica's places and leases (the fleet
    monitor calls it every few seconds) and what says which container a sandbox name was last given."""
    budgets = SharedBudgets(settings.rate_limit_storage, settings.gateway_id)
    slots, sandboxes = SharedSlots(budgets), SharedSandboxes(budgets)
    service.tenant_slots = slots
    broker.upkeep.share_quota(sandboxes)
    service.leases = leases = Leases(budgets, replica_name(settings), broker.upkeep.handed_over)

    def renew() -> None:
        budgets.renew(slots.held())
        sandboxes.renew([sandbox.principal_key for sandbox in broker.sandboxes])
        leases.renew()

    return renew, sandboxes.current


def build_core(
    settings: Settings,
    engine: PolicyEngine,
    audit: AuditLog,
    *,
    enforce_request_rate: bool = True,
    principals: PrincipalDirectory | None = None,
) -> Core:
    """Backend, rate limiter, broker and execution service for `settings`, on `engine` and `audit`.

    `enforce_request_rate=False` when an HTTP edge counts each request against the principal's and
    tenant's rates already (the service would count them again per tool call). `principals` tells
    which principals have a credential in which tenant (the tokens file), for `admin_policy`.
    """
    backend: Backend
    if settings.hosts_file is not None:
        hosts = load_hosts(settings.hosts_file)
        pool = settings.docker_workers * 2
        backend = FleetBackend(hosts, functools.partial(connect_host, pool_size=pool), audit)
    else:
        engine_tls = tls_config(*map(str, settings.docker_tls)) if settings.docker_tls else None
        backend = DockerBackend(settings.docker_host, pool_size=settings.docker_workers * 2, tls=engine_tls)
    rates = RateLimiter(settings.rate_limit_storage)
    broker = Broker(
        backend,
        audit,
        gateway_id=settings.gateway_id,
        tools_path=settings.tools_path,
        skills_path=settings.skills_path,
        workers=settings.docker_workers,
        max_sandboxes=settings.max_sandboxes,
        rates=rates,
        uids=UidRange.parse(settings.sandbox_uids),
    )
    broker.containers.replica_id = replica_name(settings)
    service = ExecutionService(
        engine, broker, audit, enforce_request_rate=enforce_request_rate, rates=rates, principals=principals
    )
    # Fleet mode has no egress: its network and proxy live beside one engine, not on the hosts.
    broker.containers.egress = (
        None
        if settings.hosts_file
        else EgressService(
            settings.egress,
            settings.egress_state_dir or EGRESS_STATE_ROOT / settings.gateway_id,
            lambda: service.engine.policy,
            audit,
            hosts_file=settings.egress_hosts_file,
            dns=settings.egress_dns,
        )
    )
    upstreams = Upstreams(load_upstreams(settings.upstreams_file)) if settings.upstreams_file else None
    service.code_mode = CodeModeCalls(lambda: service.engine, upstreams, audit, rates)
    fleet, renew, current = None, None, None
    if isinstance(backend, FleetBackend) and settings.rate_limit_storage.startswith(
        ("redis://", "rediss://")
    ):
        renew, current = share_budgets(settings, broker, service)
    if isinstance(backend, FleetBackend):
        fleet = FleetMonitor(
            backend,
            audit,
            functools.partial(connect_host, timeout_s=backend.hosts.health.probe_timeout_s, pool_size=2),
            lose=broker.upkeep.host_lost,
            remove=lambda row, why: broker.containers.discard_quietly(row.id, why),
            managed=managed_by(settings.gateway_id),
            renew=renew,
            current=current,
        )
        observe_hosts(backend)
    return Core(
        audit=audit,
        backend=backend,
        rates=rates,
        broker=broker,
        service=service,
        upstreams=upstreams,
        fleet=fleet,
    )
