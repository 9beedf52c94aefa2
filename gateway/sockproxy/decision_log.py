"""What the proxy tells about its decisions: a counter per route and rule, refusals in the log.

A refusal is written once per rule, client and window; the rest of the window is counted and
written as one summary when the window ends (or the proxy stops), so that a client cannot wash
the log out.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import structlog

from audit.repeats import RepeatTable, Summary
from gateway.sockproxy.errors import EngineUnavailable, Refused

__all__ = ["DecisionLog"]


class DecisionLog:
    """Counts every decision and logs refusals and an engine that does not answer."""

    def __init__(self, *, repeat_window_s: float = 60.0) -> None:
        self.counts: Counter[str] = Counter()
        self.log = structlog.get_logger("sandbox_gateway.socket_proxy")
        #: Refusals from one client are written once per rule and window, then summarised.
        self.repeats = RepeatTable(window_s=repeat_window_s, capacity=1024)

    def allowed(self, route_name: str) -> None:
        self.counts[f"{route_name}:allowed"] += 1

    def engine_unavailable(self, route_name: str, exc: EngineUnavailable) -> None:
        self.counts[f"{route_name}:engine-unavailable"] += 1
        self.log.warning("proxy.engine_unavailable", route=route_name, error=str(exc))

    def refused(self, client: str, method: str, target: str, refusal: Refused) -> None:
        """Count every refusal; write the first of each rule per client and window, then a summary."""
        self.counts[f"refused:{refusal.rule}"] += 1
        seen = self.repeats.observe("proxy.refused", (("client", client),), ("rule", refusal.rule))
        self._summarise(seen.closed)
        if seen.overflow_started:
            self.log.warning("proxy.refused.overflow", detail="too many clients refused: counted together")
        if not seen.record:
            return
        self.log.warning(
            "proxy.refused",
            client=client,
            method=method,
            path=target[:300],
            rule=refusal.rule,
            status=refusal.status,
            detail=refusal.detail[:500],
        )

    def _summarise(self, summaries: list[Summary]) -> None:
        for summary in summaries:
            self.log.warning(
                "proxy.refused.repeated",
                client=dict(summary.key).get("client", "(others)"),
                count=summary.count,
                unlogged=summary.suppressed,
                rules={value: count for (_, value), count in summary.counts.items()},
                first=summary.first,
                last=summary.last,
                window_s=summary.window_s,
            )

    def flush_repeats(self, *, everything: bool = False) -> None:
        """Write the summaries of windows that have ended (all of them at a stop)."""
        self._summarise(self.repeats.drain() if everything else self.repeats.expire())

    def totals(self) -> dict[str, Any]:
        """Requests allowed per route, refused per rule, and all refused."""
        allowed = {k.partition(":")[0]: v for k, v in self.counts.items() if k.endswith(":allowed")}
        refused = {k.partition(":")[2]: v for k, v in self.counts.items() if k.startswith("refused:")}
        return {"allowed": allowed, "refused": refused, "refused_total": sum(refused.values())}
