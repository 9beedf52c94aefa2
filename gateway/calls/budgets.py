"""Budgets shared by several callers: calls running at once per tenant, and their metrics.

A shared budget is what one caller can spend at another's expense. Each is charged to who the
caller is (its principal, its tenant), refuses at once when spent (nothing waits in a hidden
queue), and says so: a `budget.refused` audit event folded per source and window, and a counter
by budget and tenant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from opentelemetry import metrics

from gateway import __version__
from gateway.telemetry import TRACER_NAME

__all__ = ["BudgetInstruments", "Slots", "TenantSlots", "budget_instruments"]


class Slots(Protocol):
    """Calls running per tenant: these (`TenantSlots`), or across a fleet's replicas (Redis)."""

    def acquire(self, tenant: str, cap: int) -> bool: ...

    def release(self, tenant: str) -> None: ...

    def running(self, tenant: str) -> int: ...


class TenantSlots:
    """Calls running per tenant: `acquire(tenant, cap)` -> False when `cap` already run, else
    counts one more until `release(tenant)`. Pure bookkeeping, on the event loop only."""

    def __init__(self) -> None:
        self._running: dict[str, int] = {}

    def acquire(self, tenant: str, cap: int) -> bool:
        running = self._running.get(tenant, 0)
        if running >= cap:
            return False
        self._running[tenant] = running + 1
        return True

    def release(self, tenant: str) -> None:
        running = self._running.get(tenant, 0) - 1
        if running > 0:
            self._running[tenant] = running
        else:  # a tenant with nothing running takes no room
            self._running.pop(tenant, None)

    def running(self, tenant: str) -> int:
        return self._running.get(tenant, 0)

    def __len__(self) -> int:
        """Tenants with a call running."""
        return len(self._running)


@dataclass(frozen=True, slots=True)
class BudgetInstruments:
    #: Calls or sessions refused because a shared budget was spent, by `limit` and `tenant`.
    refusals: metrics.Counter
    #: Calls running now, by tenant.
    tenant_running: metrics.UpDownCounter
    #: Open MCP sessions.
    sessions: metrics.UpDownCounter


def budget_instruments() -> BudgetInstruments:
    """The budgets' metrics, from whatever MeterProvider is installed."""
    meter = metrics.get_meter(TRACER_NAME, __version__)
    return BudgetInstruments(
        refusals=meter.create_counter(
            "sandbox_gateway.budget.refusals",
            description="Calls and sessions refused because a shared budget was spent, by limit and tenant",
        ),
        tenant_running=meter.create_up_down_counter(
            "sandbox_gateway.tenant.running_calls", description="Calls running now, by tenant"
        ),
        sessions=meter.create_up_down_counter(
            "sandbox_gateway.mcp.sessions", description="Open MCP sessions"
        ),
    )
