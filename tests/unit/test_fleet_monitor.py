"""FleetMonitor with fake probe connections and a clock the test moves: a host that stops answering
goes down (audited, its streams cut, its sandboxes lost), one that comes back is audited and the older
of two sandboxes of one name is removed, and a host that was only suspect changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from audit import AuditLog, MemorySink
from gateway.backend.base import ContainerInfo, ExecRequest
from gateway.errors import EngineError
from gateway.fleet.backend import FleetBackend
from gateway.fleet.hosts import parse_hosts
from gateway.fleet.monitor import LIST_EVERY, FleetMonitor
from tests.unit.broker_support import events
from tests.unit.fleet_support import GOOD_IMAGE, FakeClock, Hosts, host, hosts_file, make_fleet

pytestmark = pytest.mark.anyio
BODY: dict[str, object] = {"Image": GOOD_IMAGE}
MANAGED = {"sandbox-gateway.managed": "true"}
REQUEST = ExecRequest(argv=["true"], workdir="/", env=[], timeout_s=5, max_output_bytes=1024)


class Watch:
    """A fleet of fake hosts, their probe connections, and what the monitor asked the broker."""

    def __init__(self, audit: AuditLog, text: str, *, up: bool = True) -> None:
        self.clock = FakeClock()
        self.fleet, self.hosts = make_fleet(text, audit, self.clock, up=up)
        self.probes = Hosts()
        self.lost: list[set[str]] = []
        self.removed: list[tuple[ContainerInfo, str]] = []
        self.renewed = 0
        self.monitor = FleetMonitor(
            self.fleet,
            audit,
            self.probes.connect,
            lose=self.lose,
            remove=self.remove,
            managed=MANAGED,
            renew=self.renew,
        )

    async def lose(self, ids: set[str]) -> int:
        self.lost.append(set(ids))
        return len(ids) - 1  # one of them was not the broker's: the count is passed on as it is

    async def remove(self, row: ContainerInfo, why: str) -> bool:
        self.removed.append((row, why))
        self.fleet.remove(row.id)
        return True

    def renew(self) -> None:
        self.renewed += 1

    async def tick(self, advance: float = 1.0) -> None:
        self.clock.advance(advance)
        await self.monitor.tick()

    def probe_fails(self, name: str, error: str | None = "connection refused") -> None:
        self.probes[name].failing = error

    def close(self) -> None:
        self.monitor.close()
        self.fleet.close()
        self.hosts.close_streams()


@pytest.fixture
async def make_watch(audit: AuditLog) -> AsyncIterator[Callable[..., Watch]]:
    made: list[Watch] = []

    def make(*hosts: dict[str, Any], up: bool = True) -> Watch:
        watch = Watch(audit, hosts_file(*hosts), up=up)
        made.append(watch)
        return watch

    yield make
    for watch in made:
        watch.close()


def on(fleet: FleetBackend, target: str, count: int, prefix: str = "sgw") -> list[str]:
    """`count` sandboxes created through the fleet that landed on `target` (others are removed)."""
    placed: list[str] = []
    for i in range(500):
        cid = fleet.create(f"{prefix}-{i}", BODY)
        if fleet.inventory.host_of(cid) == target:
            placed.append(cid)
            if len(placed) == count:
                return placed
        else:
            fleet.remove(cid)
    raise AssertionError(f"could not place {count} on {target}")


def peer_closed(watch: Watch, sock: Any) -> bool:
    peer = {ours: theirs for fake in watch.hosts.made for ours, theirs in fake.streams}[sock]
    peer.setblocking(False)
    try:
        return bool(peer.recv(1) == b"")
    except BlockingIOError:
        return False


# -- going down ----------------------------------------------------------------------------------


async def test_a_host_silent_for_down_after_s_goes_down_and_its_sandboxes_are_lost(
    make_watch: Callable[..., Watch], sink: MemorySink
) -> None:
    watch = make_watch(host("a"), host("b"))
    on_a, on_b = on(watch.fleet, "a", 2), on(watch.fleet, "b", 1, "other")
    sock, _, _ = watch.fleet.attach(on_a[0])
    stream = watch.fleet.exec_open(on_a[1], REQUEST)
    elsewhere, _, _ = watch.fleet.attach(on_b[0])
    await watch.tick()
    assert events(sink, "host.down") == [] and events(sink, "host.up") == []

    watch.probe_fails("a")
    for tick in range(4):
        await watch.tick()
        assert not watch.fleet.health.is_down("a")
        assert watch.fleet.health.placeable("a") == (tick == 0), "suspect from the second failure in a row"
    assert watch.lost == [] and events(sink, "host.down") == []
    await watch.tick()

    assert watch.fleet.health.is_down("a")
    assert watch.lost == [set(on_a)]
    (down,) = events(sink, "host.down")
    assert down["detail"] == {"host": "a", "sandboxes": 2, "lost": 1, "streams": 2}
    assert down["outcome"]["error"] == "connection refused"
    assert peer_closed(watch, sock) and peer_closed(watch, stream.sock)
    assert not peer_closed(watch, elsewhere)
    await watch.tick(10)
    assert len(events(sink, "host.down")) == 1 and len(watch.lost) == 1, "acted on once"


async def test_a_failed_call_never_moves_a_host_down_the_next_probe_does_and_is_acted_on(
    make_watch: Callable[..., Watch], sink: MemorySink
) -> None:
    """Calls on worker threads count against a host's health as well, but only a probe moves it to
    down, so the monitor sees every move it must act on: cut the streams, lose the sandboxes, record."""
    watch = make_watch(host("a"), host("b"))
    (cid,) = on(watch.fleet, "a", 1)
    sock, _, _ = watch.fleet.attach(cid)
    await watch.tick()
    watch.probe_fails("a")
    watch.hosts["a"].failing = "connection refused"
    await watch.tick()
    watch.clock.advance(5)
    watch.fleet.list(MANAGED)  # a worker's call fails first
    assert not watch.fleet.health.is_down("a") and not watch.fleet.health.placeable("a")

    await watch.tick(0.5)
    assert watch.lost == [{cid}]
    assert [e["detail"]["host"] for e in events(sink, "host.down")] == ["a"]
    assert peer_closed(watch, sock)


# -- coming back ---------------------------------------------------------------------------------


async def test_a_host_that_comes_back_is_recorded_and_the_older_duplicate_removed(
    make_watch: Callable[..., Watch], sink: MemorySink
) -> None:
    watch = make_watch(host("a"), host("b"))
    a, b = watch.hosts["a"], watch.hosts["b"]
    older = a.add("sgw-alice", created=100.0)
    alone = a.add("sgw-bob", created=50.0)
    watch.fleet.list(MANAGED)
    await watch.tick()
    watch.probe_fails("a")
    await watch.tick(6)
    assert watch.fleet.health.is_down("a") and watch.lost == [{older, alone}]
    newer = b.add("sgw-alice", created=200.0)  # alice's next call got a new sandbox on b

    watch.probe_fails("a", None)
    await watch.tick()

    up = events(sink, "host.up")[-1]
    assert up["detail"]["host"] == "a" and up["detail"]["was"] == "down"
    assert up["detail"]["address"] == "tcp://a.internal:2376"
    assert [(row.id, row.host, why) for row, why in watch.removed] == [(older, "a", "duplicate")]
    assert older not in a.containers and newer in b.containers and alone in a.containers
    assert watch.fleet.health.placeable("a")


async def test_the_newer_duplicate_stays_wherever_it_is(make_watch: Callable[..., Watch]) -> None:
    watch = make_watch(host("a"), host("b"), host("c"))
    newest = watch.hosts["a"].add("sgw-alice", created=300.0)
    mid = watch.hosts["b"].add("sgw-alice", created=200.0)
    oldest = watch.hosts["c"].add("sgw-alice", created=100.0)
    await watch.tick()
    watch.probe_fails("a")
    await watch.tick(6)
    watch.probe_fails("a", None)
    await watch.tick()
    assert sorted(row.id for row, _ in watch.removed) == sorted([mid, oldest])
    assert newest in watch.hosts["a"].containers


async def test_a_host_that_was_only_suspect_triggers_no_dedupe(
    make_watch: Callable[..., Watch], sink: MemorySink
) -> None:
    watch = make_watch(host("a"), host("b"))
    watch.hosts["a"].add("sgw-alice", created=100.0)
    watch.hosts["b"].add("sgw-alice", created=200.0)
    await watch.tick()
    watch.probe_fails("a")
    await watch.tick(1)
    await watch.tick(1)
    assert not watch.fleet.health.placeable("a") and not watch.fleet.health.is_down("a")
    watch.probe_fails("a", None)
    for _ in range(LIST_EVERY * 2):
        await watch.tick()
    assert watch.fleet.health.placeable("a")
    assert watch.removed == [], "no host came back from down: nothing to dedupe"
    assert events(sink, "host.up") == [] and events(sink, "host.down") == []
    assert watch.lost == []


async def test_a_host_answering_for_the_first_time_is_up(
    make_watch: Callable[..., Watch], sink: MemorySink
) -> None:
    watch = make_watch(host("a"), host("b"), up=False)
    watch.hosts["a"].add("sgw-alice", created=100.0)
    watch.hosts["b"].add("sgw-alice", created=200.0)
    await watch.tick()
    ups = {e["detail"]["host"]: e["detail"]["was"] for e in events(sink, "host.up")}
    assert ups == {"a": "unknown", "b": "unknown"}
    assert watch.fleet.health.placeable("a") and watch.fleet.health.placeable("b")
    assert watch.removed == [], "a first answer is no return"


async def test_a_host_that_never_answers_goes_down_after_down_after_s(
    make_watch: Callable[..., Watch], sink: MemorySink
) -> None:
    watch = make_watch(host("a"), up=False)
    await watch.tick(0)  # the probe connection is made
    watch.probe_fails("a")
    await watch.tick(4)
    assert events(sink, "host.down") == []
    await watch.tick(1)
    (down,) = events(sink, "host.down")
    assert down["detail"]["sandboxes"] == 0


async def test_the_image_cache_of_a_host_that_comes_back_is_forgotten(
    make_watch: Callable[..., Watch],
) -> None:
    watch = make_watch(host("a"))
    watch.fleet.create("sgw-1", BODY)
    asked = len(watch.hosts["a"].called("image_identity"))
    await watch.tick()
    watch.probe_fails("a")
    await watch.tick(6)
    watch.probe_fails("a", None)
    await watch.tick()
    watch.fleet.create("sgw-2", BODY)
    assert len(watch.hosts["a"].called("image_identity")) == asked + 1


# -- rounds --------------------------------------------------------------------------------------


async def test_every_few_rounds_the_hosts_are_listed_and_budgets_renewed(
    make_watch: Callable[..., Watch],
) -> None:
    watch = make_watch(host("a"))
    other = watch.hosts["a"].add("sgw-from-another-replica")
    for _ in range(LIST_EVERY - 1):
        await watch.tick()
    assert watch.renewed == 0
    await watch.tick()
    assert watch.renewed == 1
    assert watch.hosts["a"].called("list") == [], "a listing runs on the side: probes never wait on it"
    assert await watch.monitor.settle() == 0
    assert watch.hosts["a"].called("list") == [""]
    assert watch.fleet.inventory.host_of(other) == "a", "counts stay true across replicas"


async def test_a_listing_that_fails_is_not_fatal(make_watch: Callable[..., Watch]) -> None:
    watch = make_watch(host("a"))
    watch.hosts["a"].failing = "refused"
    assert await watch.monitor.settle() == 0


async def test_probes_follow_the_hosts_file(make_watch: Callable[..., Watch]) -> None:
    watch = make_watch(host("a"), host("b"))
    await watch.tick()
    first_a, first_b = watch.probes["a"], watch.probes["b"]
    watch.fleet.configure(
        parse_hosts(hosts_file(host("a"), {**host("b"), "address": "tcp://b2.internal:2376"}))
    )
    await watch.tick()
    assert watch.probes["a"] is first_a and first_b.closed
    assert watch.probes["b"].spec.address == "tcp://b2.internal:2376"
    assert watch.probes["a"].called("ping") == ["", ""]


async def test_a_probe_reconnects_when_the_files_tls_changes(make_watch: Callable[..., Watch]) -> None:
    """Rotating the gateway's client certificate to new files (the file's `tls:`) must reach the
    probes as it reaches the fleet's connections; a probe on the old files would put every host down."""
    watch = make_watch(host("a"))
    await watch.tick()
    first = watch.probes["a"]
    tls = {"ca": "/new/ca.pem", "cert": "/new/cert.pem", "key": "/new/key.pem"}
    watch.fleet.configure(parse_hosts(hosts_file(host("a"), tls=tls)))
    await watch.tick()
    assert watch.probes["a"] is not first and first.closed


async def test_the_probe_of_a_host_no_longer_in_the_file_is_closed(make_watch: Callable[..., Watch]) -> None:
    watch = make_watch(host("a"), host("b"))
    await watch.tick()
    gone = watch.probes["b"]
    watch.fleet.configure(parse_hosts(hosts_file(host("a"))))
    await watch.tick()
    assert gone.closed
    assert gone.called("ping") == [""]


async def test_a_lost_host_that_failed_to_be_handled_is_handled_next_round(
    make_watch: Callable[..., Watch], sink: MemorySink
) -> None:
    watch = make_watch(host("a"))
    (cid,) = on(watch.fleet, "a", 1)
    await watch.tick()
    watch.probe_fails("a")
    attempts: list[set[str]] = []

    async def lose_fails_once(ids: set[str]) -> int:
        attempts.append(ids)
        if len(attempts) == 1:
            raise EngineError("the broker could not forget them")
        return len(ids)

    watch.monitor._lose = lose_fails_once
    with pytest.raises(EngineError):
        await watch.tick(6)
    await watch.tick()
    assert attempts == [{cid}, {cid}]
    assert len(events(sink, "host.down")) == 1


async def test_a_host_taken_out_of_the_file_and_put_back_is_watched_afresh(
    make_watch: Callable[..., Watch], sink: MemorySink
) -> None:
    watch = make_watch(host("a"), host("b"))
    await watch.tick()
    watch.probe_fails("a")
    await watch.tick(6)
    assert len(events(sink, "host.down")) == 1
    watch.fleet.configure(parse_hosts(hosts_file(host("b"))))  # two reloads between two rounds
    watch.fleet.configure(parse_hosts(hosts_file(host("a"), host("b"))))
    await watch.tick()
    assert not watch.fleet.health.is_down("a"), "back in the file: unknown, not down"
    await watch.tick(5)
    assert watch.fleet.health.is_down("a")
    assert len(events(sink, "host.down")) == 2, "its going down again is acted on"
