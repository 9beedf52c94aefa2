"""Repeated events (bad tokens, rate-limit hits) folded per source and window, in a bounded table."""

from pathlib import Path

import pytest
import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from audit import AuditLog, MemorySink, RepeatTable
from audit.chain import verify_lines
from audit.repeats import OTHER
from audit.schema import EVENTS, AuditEvent
from gateway.auth.tokens import TokenStore
from gateway.auth.verifier import GatewayTokenVerifier
from gateway.http.middleware.address_budget import AddressBudget
from gateway.http.middleware.address_rate import AddressRateLimitMiddleware
from gateway.http.middleware.authentication import BearerAuthMiddleware
from gateway.ratelimit import RateLimiter
from tests.support import audit_events

WALL0 = 1_800_000_000.0
ALICE = (("source_ip", "203.0.113.7"),)
BOB = (("source_ip", "198.51.100.9"),)


class Clock:
    """A hand-moved clock: `mono` for windows, `wall` for the timestamps in summaries."""

    def __init__(self) -> None:
        self.now = 0.0

    def mono(self) -> float:
        return self.now

    def wall(self) -> float:
        return WALL0 + self.now


def table(clock: Clock, window_s: float = 60.0, capacity: int = 16, max_variants: int = 8) -> RepeatTable:
    return RepeatTable(window_s, capacity, max_variants=max_variants, clock=clock.mono, wall_clock=clock.wall)


# -- the table ---------------------------------------------------------------------------------------


def test_the_first_occurrence_is_recorded_and_the_rest_are_counted_until_the_window_ends() -> None:
    clock = Clock()
    repeats = table(clock)
    seen = [repeats.observe("auth.failed", ALICE).record for _ in range(1000)]
    assert seen == [True] + [False] * 999
    clock.now = 30.0
    assert not repeats.observe("auth.failed", ALICE).record
    assert repeats.expire() == [], "the window is still open"
    clock.now = 60.0
    (summary,) = repeats.expire()
    assert (summary.event, summary.key, summary.count, summary.recorded, summary.suppressed) == (
        "auth.failed",
        ALICE,
        1001,
        1,
        1000,
    )
    assert (summary.first, summary.last, summary.window_s, summary.overflow) == (
        WALL0,
        WALL0 + 30,
        60.0,
        False,
    )
    assert len(repeats) == 0 and repeats.expire() == []


def test_a_single_occurrence_needs_no_summary() -> None:
    clock = Clock()
    repeats = table(clock)
    assert repeats.observe("auth.failed", ALICE, ("reason", "missing")).record
    clock.now = 61.0
    assert repeats.expire() == []
    assert len(repeats) == 0, "its source is forgotten all the same"


def test_the_first_of_each_variant_is_recorded_so_a_flood_cannot_hide_another_reason() -> None:
    clock = Clock()
    repeats = table(clock, max_variants=3)
    flood = [repeats.observe("auth.failed", ALICE, ("reason", "unknown-token")).record for _ in range(500)]
    assert flood.count(True) == 1
    assert repeats.observe("auth.failed", ALICE, ("reason", "revoked")).record
    assert not repeats.observe("auth.failed", ALICE, ("reason", "revoked")).record
    assert repeats.observe("auth.failed", ALICE, ("reason", "expired")).record
    # A fourth variant is past max_variants: counted under OTHER, never recorded on its own.
    assert not repeats.observe("auth.failed", ALICE, ("reason", "malformed")).record
    assert not repeats.observe("auth.failed", ALICE, ("reason", "missing")).record
    (summary,) = repeats.drain()
    assert summary.counts == {
        ("reason", "unknown-token"): 500,
        ("reason", "revoked"): 2,
        ("reason", "expired"): 1,
        ("reason", OTHER): 2,
    }
    assert (summary.count, summary.recorded, summary.suppressed) == (505, 3, 502)


def test_sources_and_event_names_are_counted_apart() -> None:
    clock = Clock()
    repeats = table(clock)
    for key in (ALICE, BOB):
        for event in ("auth.failed", "ratelimit.hit"):
            assert repeats.observe(event, key).record
            assert not repeats.observe(event, key).record
    assert len(repeats) == 4
    summaries = repeats.drain()
    assert sorted((s.event, s.key, s.count) for s in summaries) == [
        ("auth.failed", BOB, 2),
        ("auth.failed", ALICE, 2),
        ("ratelimit.hit", BOB, 2),
        ("ratelimit.hit", ALICE, 2),
    ]


def test_an_occurrence_after_the_window_closes_it_and_opens_a_new_one() -> None:
    clock = Clock()
    repeats = table(clock)
    repeats.observe("auth.failed", ALICE)
    repeats.observe("auth.failed", ALICE)
    clock.now = 75.0
    seen = repeats.observe("auth.failed", ALICE)
    assert seen.record, "the first of a new window is recorded at once"
    assert [(s.count, s.first, s.last) for s in seen.closed] == [(2, WALL0, WALL0)]
    clock.now = 134.9
    assert repeats.expire() == [], "the new window started at 75 s"
    repeats.observe("auth.failed", ALICE)
    clock.now = 135.0
    assert [(s.count, s.first, s.last) for s in repeats.expire()] == [(2, WALL0 + 75, WALL0 + 134.9)]


def test_windows_end_in_the_order_they_started_and_only_ended_ones_are_summarised() -> None:
    clock = Clock()
    repeats = table(clock)
    for second, key in enumerate((ALICE, BOB)):
        clock.now = float(second * 10)
        repeats.observe("auth.failed", key)
        repeats.observe("auth.failed", key)
    clock.now = 65.0
    assert [s.key for s in repeats.expire()] == [ALICE]
    clock.now = 70.0
    assert [s.key for s in repeats.expire()] == [BOB]


def test_a_full_table_does_not_grow_it_says_so_once_and_counts_new_sources_together() -> None:
    clock = Clock()
    repeats = table(clock, capacity=3)
    sources = [(("source_ip", f"10.0.{n // 256}.{n % 256}"),) for n in range(10_000)]
    seen = [repeats.observe("auth.failed", key, ("reason", "unknown-token")) for key in sources]
    assert len(repeats) == 3
    assert [s.record for s in seen[:3]] == [True] * 3
    assert not any(s.record for s in seen[3:]), "sources beyond the table get no line of their own"
    assert [s.overflow_started for s in seen].count(True) == 1 and seen[3].overflow_started
    assert not repeats.observe("auth.failed", sources[0]).record, "tracked sources are still folded"
    clock.now = 60.0
    summaries = repeats.expire()
    (spill,) = [s for s in summaries if s.overflow]
    assert (spill.event, spill.key, spill.count, spill.recorded) == ("auth.failed", (), 9997, 0)
    assert spill.counts == {("reason", "unknown-token"): 9997}
    assert [s.count for s in summaries if not s.overflow] == [2], "only the source that repeated"


def test_slots_are_free_again_once_their_windows_end() -> None:
    clock = Clock()
    repeats = table(clock, capacity=1)
    assert repeats.observe("auth.failed", ALICE).record
    assert repeats.observe("auth.failed", BOB).overflow_started
    clock.now = 60.0
    seen = repeats.observe("auth.failed", BOB)
    assert seen.record and not seen.overflow_started
    assert [s.overflow for s in seen.closed] == [True]


def test_drain_returns_every_open_window_and_leaves_nothing_behind() -> None:
    clock = Clock()
    repeats = table(clock, capacity=1)
    for key in (ALICE, ALICE, BOB):
        repeats.observe("ratelimit.hit", key)
    summaries = repeats.drain()
    assert sorted((s.overflow, s.count) for s in summaries) == [(False, 2), (True, 1)]
    assert len(repeats) == 0 and repeats.drain() == []


@pytest.mark.parametrize(
    "arguments",
    [
        pytest.param({"window_s": 0}, id="window"),
        pytest.param({"capacity": 0}, id="capacity"),
        pytest.param({"max_variants": 0}, id="variants"),
    ],
)
def test_a_table_that_could_not_bound_anything_is_refused(arguments: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="repeat table"):
        RepeatTable(**arguments)  # type: ignore[arg-type]


# -- the audit log -----------------------------------------------------------------------------------


def test_a_flood_writes_one_line_then_one_summary_and_the_chain_holds() -> None:
    clock = Clock()
    sink = MemorySink()
    log = AuditLog([sink], repeats=table(clock))
    for _ in range(1000):
        log.emit_repeated("auth.failed", {"source_ip": "203.0.113.7"}, by="reason", reason="unknown-token")
    assert [e["event"] for e in audit_events(sink)] == ["auth.failed"]
    assert log.flush_repeated() == 0
    clock.now = 60.0
    assert log.flush_repeated() == 1
    first, summary = audit_events(sink)
    assert first["actor"]["source_ip"] == "203.0.113.7" and first["detail"]["reason"] == "unknown-token"
    assert summary["event"] == "audit.repeated"
    assert summary["actor"] == {"source_ip": "203.0.113.7"}
    assert summary["detail"] == {
        "of": "auth.failed",
        "count": 1000,
        "suppressed": 999,
        "counts": [{"reason": "unknown-token", "count": 1000}],
        "first_ts": "2027-01-15T08:00:00.000000Z",
        "last_ts": "2027-01-15T08:00:00.000000Z",
        "window_s": 60.0,
    }
    for event in audit_events(sink):
        AuditEvent.model_validate(event)
        assert event["event"] in EVENTS
    assert verify_lines([(str(n), line) for n, line in enumerate(sink.lines, 1)], expect_genesis=True).ok


def test_a_summary_belongs_to_no_request_but_the_first_event_keeps_its_own() -> None:
    clock = Clock()
    sink = MemorySink()
    log = AuditLog([sink], repeats=table(clock))
    key = {"principal": "alice", "tenant": "t", "limit": "requests"}
    with structlog.contextvars.bound_contextvars(request_id="r1", tool="execute_bash"):
        log.emit_repeated("ratelimit.hit", key, rate="2/minute")
        log.emit_repeated("ratelimit.hit", key, rate="2/minute")
    clock.now = 61.0
    with structlog.contextvars.bound_contextvars(request_id="r2", principal="mallory"):
        log.emit_repeated("ratelimit.hit", key, rate="2/minute")
    first, summary, again = audit_events(sink)
    assert first["request_id"] == "r1" and first["tool"] == "execute_bash"
    assert first["limits"] == {"limit": "requests", "rate": "2/minute"}
    assert summary["event"] == "audit.repeated" and "request_id" not in summary and "tool" not in summary
    assert summary["actor"] == {"principal": "alice", "tenant": "t"}, "not the request that closed it"
    assert summary["limits"] == {"limit": "requests"} and summary["detail"]["count"] == 2
    assert "counts" not in summary["detail"], "no variants were given"
    assert again["request_id"] == "r2" and again["actor"]["principal"] == "alice"


def test_a_full_table_is_reported_at_once_and_its_count_comes_at_the_end() -> None:
    clock = Clock()
    sink = MemorySink()
    log = AuditLog([sink], repeats=table(clock, capacity=1))
    for n in range(50):
        log.emit_repeated("auth.failed", {"source_ip": f"192.0.2.{n}"}, by="reason", reason="missing")
    assert [e["event"] for e in audit_events(sink)] == ["auth.failed", "audit.overflow"]
    overflow = audit_events(sink)[1]
    assert overflow["detail"] == {"of": "auth.failed", "capacity": 1, "window_s": 60.0}
    log.close()
    (spill,) = audit_events(sink)[2:]
    assert spill["event"] == "audit.repeated" and "actor" not in spill
    assert spill["detail"]["overflow"] is True and spill["detail"]["count"] == 49
    assert spill["detail"]["suppressed"] == 49


def test_close_writes_the_summaries_of_windows_still_open() -> None:
    sink = MemorySink()
    log = AuditLog([sink], repeats=table(Clock()))
    for _ in range(3):
        log.emit_repeated("ratelimit.hit", {"source_ip": "203.0.113.7", "limit": "address"})
    log.close()
    assert [e["event"] for e in audit_events(sink)] == ["ratelimit.hit", "audit.repeated"]
    assert audit_events(sink)[1]["detail"]["count"] == 3


# -- the HTTP front ----------------------------------------------------------------------------------


def front(tmp_path: Path, rate: str = "100000/minute") -> tuple[TestClient, AuditLog, MemorySink, str]:
    tokens = TokenStore(tmp_path / "tokens")
    token = tokens.create("alice")
    sink = MemorySink()
    audit = AuditLog([sink], repeats=table(Clock()))

    async def ok(request: Request) -> JSONResponse:
        return JSONResponse({})

    budget = AddressBudget(RateLimiter(), rate)

    app = Starlette(
        routes=[Route("/mcp", ok, methods=["POST"])],
        middleware=[
            Middleware(AddressRateLimitMiddleware, budget=budget, audit=audit),
            Middleware(
                BearerAuthMiddleware,
                verifier=GatewayTokenVerifier(tokens),
                audit=audit,
                charge_address=budget.charge,
            ),
        ],
    )
    return TestClient(app), audit, sink, token


def test_bad_tokens_from_one_address_are_folded_per_reason(tmp_path: Path) -> None:
    client, audit, sink, _ = front(tmp_path)
    for _ in range(200):
        assert client.post("/mcp", headers={"Authorization": "Bearer sgw_wrong"}).status_code == 401
    assert client.post("/mcp").status_code == 401
    assert client.post("/mcp", headers={"Authorization": "Bearer sgw_wrong"}).status_code == 401
    assert [e["detail"]["reason"] for e in audit_events(sink)] == ["unknown-token", "missing"]
    audit.close()
    summary = audit_events(sink)[-1]
    assert summary["event"] == "audit.repeated" and summary["actor"]["source_ip"] == "testclient"
    assert summary["detail"]["counts"] == [
        {"reason": "unknown-token", "count": 201},
        {"reason": "missing", "count": 1},
    ]
    assert summary["detail"]["count"] == 202 and summary["detail"]["suppressed"] == 200


def test_unauthenticated_requests_over_the_address_rate_are_folded(tmp_path: Path) -> None:
    client, audit, sink, _ = front(tmp_path, rate="3/minute")
    statuses = [client.post("/mcp").status_code for _ in range(100)]
    assert statuses == [401] * 3 + [429] * 97
    (hit,) = audit_events(sink, "ratelimit.hit")
    assert hit["limits"]["limit"] == "address"
    audit.close()
    summary = audit_events(sink)[-1]
    assert summary["detail"]["of"] == "ratelimit.hit" and summary["detail"]["count"] == 97
    assert summary["limits"] == {"limit": "address"} and summary["actor"] == {"source_ip": "testclient"}


def test_a_long_request_path_is_cut_in_the_audit_line(tmp_path: Path) -> None:
    client, _, sink, _ = front(tmp_path)
    client.post("/mcp/" + "a" * 5000)
    (failed,) = audit_events(sink)
    assert len(failed["detail"]["path"]) == 256
