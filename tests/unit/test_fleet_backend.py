"""FleetBackend over fake hosts: placement, routing by container id, fan-out listings, capacity,
drain, labels, image builds, a failed create tried once more elsewhere, fast failures for a down host,
cut streams, reconfiguration, and what ping and image_identity say for the whole fleet."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from audit import AuditLog, MemorySink
from gateway.backend.base import ExecRequest
from gateway.errors import EngineError, SandboxError, SandboxGone
from gateway.fleet.backend import FleetBackend, NoHostAvailable
from gateway.fleet.hosts import parse_hosts
from gateway.fleet.inventory import IMAGE_TTL_S
from gateway.fleet.placement import Candidate, Load, bounded, rank
from tests.unit.broker_support import events
from tests.unit.fleet_support import GOOD_IMAGE, FakeClock, Hosts, host, hosts_file, make_fleet

BODY: dict[str, object] = {"Image": GOOD_IMAGE}
REQUEST = ExecRequest(argv=["true"], workdir="/", env=[], timeout_s=5, max_output_bytes=1024)
Build = Callable[..., tuple[FleetBackend, Hosts]]


@pytest.fixture
def mono() -> FakeClock:
    return FakeClock()


@pytest.fixture
def build(audit: AuditLog, mono: FakeClock) -> Iterator[Build]:
    made: list[tuple[FleetBackend, Hosts]] = []

    def make(*hosts: dict[str, Any], up: bool = True, **top: Any) -> tuple[FleetBackend, Hosts]:
        pair = make_fleet(hosts_file(*hosts, **top), audit, mono, up=up)
        made.append(pair)
        return pair

    yield make
    for fleet, fakes in made:
        fleet.close()
        fakes.close_streams()


def expected_host(fleet: FleetBackend, name: str, hosts: list[str]) -> str:
    """The rendezvous-best of the hosts not over their bounded share (placement.bounded)."""
    loads = [Load(h, fleet.inventory.count(h), fleet.hosts.named(h).capacity) for h in hosts]  # type: ignore[union-attr]
    return rank(name, bounded(loads))[0]


def go_down(fleet: FleetBackend, mono: FakeClock, name: str) -> None:
    mono.advance(fleet.health.down_after_s)
    assert fleet.health.failed(name, "no route to host") == "down"


def place_on(fleet: FleetBackend, target: str, prefix: str = "sgw") -> str:
    """Create sandboxes until one lands on `target`; the others are removed again."""
    for i in range(200):
        cid = fleet.create(f"{prefix}-{i}", BODY)
        if fleet.inventory.host_of(cid) == target:
            return cid
        fleet.remove(cid)
    raise AssertionError(f"nothing was placed on {target}")


def eof(sock: socket.socket) -> bool:
    """Whether the peer of `sock` was shut (reading returns the end at once)."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False


# -- placement -----------------------------------------------------------------------------------


def test_create_places_on_the_rendezvous_best_host_and_records_it(build: Build, sink: MemorySink) -> None:
    fleet, fakes = build(host("a", 10), host("b", 20), host("c", 30))
    for i in range(40):
        name = f"sgw-{i}"
        want = expected_host(fleet, name, ["a", "b", "c"])
        cid = fleet.create(name, BODY)
        assert fleet.inventory.host_of(cid) == want
        assert cid in fakes[want].containers
        assert fakes[want].called("create")[-1] == name
        place = events(sink, "sandbox.place")[-1]
        assert place["resource"]["container_id"] == cid
        assert place["detail"] | {"candidates": 0} == {"host": want, "rank": 0, "candidates": 0} | {
            "free": fleet.free(want)
        }
        assert 1 <= place["detail"]["candidates"] <= 3, "overfull hosts are passed over"
    assert sum(fleet.inventory.count(h) for h in "abc") == 40
    for name in "abc":
        assert fleet.free(name) == fleet.hosts.named(name).capacity - len(fakes[name].containers)  # type: ignore[union-attr]


def test_fuller_hosts_take_fewer_new_sandboxes(build: Build) -> None:
    fleet, fakes = build(host("a", 100), host("b", 100))
    for i in range(90):
        fakes["a"].add(f"old-{i}")
    fleet.list({}, None)  # the gateway learns how full each host is
    assert (fleet.free("a"), fleet.free("b")) == (10, 100)
    placed = [fleet.inventory.host_of(fleet.create(f"sgw-{i}", BODY)) for i in range(60)]
    assert placed.count("b") > placed.count("a")


def test_an_unknown_host_is_not_placed_on_until_it_answers(build: Build) -> None:
    fleet, fakes = build(host("a"), host("b"), up=False)
    with pytest.raises(NoHostAvailable):
        fleet.create("sgw-1", BODY)
    assert fakes["a"].called("create") == fakes["b"].called("create") == []
    fleet.health.ok("b")
    cid = fleet.create("sgw-1", BODY)
    assert fleet.inventory.host_of(cid) == "b"


def test_a_suspect_host_is_not_placed_on(build: Build) -> None:
    fleet, fakes = build(host("a"), host("b"))
    fleet.health.failed("a", "reset by peer")
    fleet.health.failed("a", "reset by peer")  # two in a row: suspect
    for i in range(20):
        assert fleet.inventory.host_of(fleet.create(f"sgw-{i}", BODY)) == "b"
    assert fakes["a"].called("create") == []


# -- routing -------------------------------------------------------------------------------------


def test_calls_about_a_container_go_to_its_host(build: Build) -> None:
    fleet, fakes = build(host("a"), host("b"), host("c"))
    cid = place_on(fleet, "b")
    others = [fakes["a"], fakes["c"]]
    before = [list(f.calls) for f in others]

    fleet.start(cid)
    info = fleet.inspect(cid)
    assert (info.id, info.host, info.running) == (cid, "b", True)
    stream = fleet.exec_open(cid, REQUEST)
    pumped = fleet.exec_pump(stream, REQUEST)
    outcome = fleet.exec_result(stream, pumped)
    assert outcome.exit_code == 0
    _, early, _ = fleet.attach(cid)
    assert early == b"early"
    fleet.rename(cid, "sgw-renamed")
    assert fakes["b"].containers[cid].name == "sgw-renamed"
    assert fleet.inventory.on("b")[cid] == "sgw-renamed"
    fleet.remove(cid)

    for method in ("start", "inspect", "exec_open", "exec_pump", "exec_result", "attach", "rename", "remove"):
        assert fakes["b"].called(method) == [cid], method
    assert [list(f.calls) for f in others] == before, "no other host was asked"
    assert cid not in fakes["b"].containers and fleet.inventory.host_of(cid) is None


def test_a_container_the_gateway_has_not_seen_is_found_by_asking_the_hosts(build: Build) -> None:
    fleet, fakes = build(host("a"), host("b"), host("c"))
    cid = fakes["c"].add("sgw-another-replica")
    info = fleet.inspect(cid)
    assert (info.host, info.name) == ("c", "sgw-another-replica")
    assert fleet.inventory.host_of(cid) == "c"
    asked = len(fakes["a"].called("inspect"))
    fleet.start(cid)
    assert fakes["c"].called("start") == [cid]
    assert len(fakes["a"].called("inspect")) == asked, "found once, then routed"


def test_a_container_on_no_host_is_gone(build: Build) -> None:
    fleet, _ = build(host("a"), host("b"))
    with pytest.raises(SandboxGone) as caught:
        fleet.inspect("nowhere")
    assert caught.value.code == "sandbox-gone"


def test_finding_a_container_skips_hosts_that_fail(build: Build) -> None:
    fleet, fakes = build(host("a"), host("b"))
    fakes["a"].failing = "connection refused"
    cid = fakes["b"].add("sgw-x")
    assert fleet.inspect(cid).host == "b"
    state = fleet.health.of("a")
    assert state is not None and state.failing == 1 and state.errors == 1


# -- listings ------------------------------------------------------------------------------------


def test_list_asks_every_host_and_says_where_each_row_is(build: Build) -> None:
    fleet, fakes = build(host("a"), host("b"), host("c"))
    ids = {name: fakes[name].add(f"sgw-{name}") for name in "abc"}
    rows = fleet.list({"managed": "true"})
    assert {(r.id, r.host) for r in rows} == {(ids[n], n) for n in "abc"}
    assert all(fleet.inventory.host_of(ids[n]) == n for n in "abc")
    assert all(fakes[n].called("list") == [""] for n in "abc")
    named = fleet.list({}, "sgw-b")
    assert [(r.id, r.host) for r in named] == [(ids["b"], "b")]


def test_list_skips_a_failing_host_and_counts_it_against_its_health(build: Build) -> None:
    fleet, fakes = build(host("a"), host("b"))
    kept = fakes["a"].add("sgw-a")
    fakes["b"].add("sgw-b")
    fleet.list({})
    fakes["b"].failing = "timed out"
    rows = fleet.list({})
    assert [r.id for r in rows] == [kept]
    state = fleet.health.of("b")
    assert state is not None and (state.failing, state.errors, state.last_error) == (1, 1, "timed out")
    assert fleet.inventory.count("b") == 1, "what a failing host had is not forgotten"


def test_a_whole_listing_forgets_what_a_host_no_longer_has(build: Build) -> None:
    fleet, fakes = build(host("a", 10))
    gone, kept = fakes["a"].add("sgw-1"), fakes["a"].add("sgw-2")
    fleet.list({})
    del fakes["a"].containers[gone]
    fleet.list({}, "sgw-2")
    assert fleet.inventory.host_of(gone) == "a", "a listing of one name is not a whole listing"
    fleet.list({})
    assert fleet.inventory.host_of(gone) is None and fleet.inventory.host_of(kept) == "a"
    assert fleet.free("a") == 9


def test_a_down_host_is_not_listed_or_asked(build: Build, mono: FakeClock) -> None:
    fleet, fakes = build(host("a"), host("b"))
    fakes["a"].add("sgw-a")
    go_down(fleet, mono, "a")
    fleet.health.ok("b")
    assert [r.host for r in fleet.list({})] == []
    assert fakes["a"].called("list") == []


# -- capacity, drain, labels, images -------------------------------------------------------------


def test_a_full_host_gets_nothing_more(build: Build) -> None:
    fleet, fakes = build(host("a", 2), host("b", 3))
    for i in range(5):
        fleet.create(f"sgw-{i}", BODY)
    assert (len(fakes["a"].containers), len(fakes["b"].containers)) == (2, 3)
    assert fleet.free("a") == fleet.free("b") == 0
    with pytest.raises(NoHostAvailable) as caught:
        fleet.create("sgw-one-more", BODY)
    assert caught.value.code == "no-host-available"
    assert "full" in caught.value.message and "sandbox-gateway hosts" in caught.value.message
    assert fakes["a"].called("create").count("sgw-one-more") == 0
    assert fakes["b"].called("create").count("sgw-one-more") == 0


def test_sandboxes_another_replica_placed_count_against_capacity(build: Build) -> None:
    fleet, fakes = build(host("a", 2), host("b", 50))
    fakes["a"].add("sgw-other-1")
    fakes["a"].add("sgw-other-2")
    fleet.list({})
    for i in range(20):
        assert fleet.inventory.host_of(fleet.create(f"sgw-{i}", BODY)) == "b"


def test_a_host_that_frees_room_takes_sandboxes_again(build: Build) -> None:
    fleet, _ = build(host("a", 1))
    cid = fleet.create("sgw-1", BODY)
    with pytest.raises(NoHostAvailable):
        fleet.create("sgw-2", BODY)
    fleet.remove(cid)
    assert fleet.inventory.host_of(fleet.create("sgw-2", BODY)) == "a"


def test_a_create_under_way_holds_its_place(build: Build) -> None:
    """Creates run on worker threads: while one is being made on the last free place of a host,
    another must not be placed there too (the host would hold more than its capacity)."""
    fleet, fakes = build(host("a", 1))
    inner: list[BaseException | str] = []

    def meanwhile() -> None:  # another worker thread's create, while this one is under way
        if fakes["a"].called("create") != ["sgw-1"]:
            return
        try:
            inner.append(fleet.create("sgw-2", BODY))
        except NoHostAvailable as exc:
            inner.append(exc)

    fakes["a"].hooks["create"] = meanwhile
    fleet.create("sgw-1", BODY)
    assert isinstance(inner[0], NoHostAvailable), f"placed past capacity: {inner}"
    assert len(fakes["a"].containers) == 1
    assert fleet.free("a") == 0
    with pytest.raises(NoHostAvailable):
        fleet.create("sgw-3", BODY)


def test_a_failed_create_gives_its_place_back(build: Build) -> None:
    fleet, fakes = build(host("a", 1))
    fakes["a"].fails["create"] = "engine said no"
    with pytest.raises(EngineError):
        fleet.create("sgw-1", BODY)
    del fakes["a"].fails["create"]
    fleet.health.ok("a")
    assert fleet.free("a") == 1
    assert fleet.inventory.host_of(fleet.create("sgw-1", BODY)) == "a"


def test_a_drained_host_gets_nothing_new_but_its_sandboxes_still_work(build: Build) -> None:
    fleet, fakes = build(host("a"), host("b", drain=True))
    cid = fakes["b"].add("sgw-before-drain")
    for i in range(30):
        assert fleet.inventory.host_of(fleet.create(f"sgw-{i}", BODY)) == "a"
    assert fakes["b"].called("create") == []
    fleet.start(cid)
    assert fleet.inspect(cid).host == "b"
    fleet.attach(cid)
    fleet.remove(cid)
    assert fakes["b"].called("remove") == [cid]


def test_only_drained_hosts_means_no_host(build: Build) -> None:
    fleet, _ = build(host("a", drain=True))
    with pytest.raises(NoHostAvailable):
        fleet.create("sgw-1", BODY)


def test_needs_only_hosts_with_those_labels(build: Build) -> None:
    fleet, fakes = build(
        host("cpu"),
        host("gpu-a", labels={"gpu": "a100", "zone": "eu"}),
        host("gpu-h", labels={"gpu": "h100", "zone": "eu"}),
    )
    for i in range(20):
        cid = fleet.create(f"sgw-{i}", BODY, needs={"gpu": "a100"})
        assert fleet.inventory.host_of(cid) == "gpu-a"
    placed = {fleet.inventory.host_of(fleet.create(f"eu-{i}", BODY, needs={"zone": "eu"})) for i in range(30)}
    assert placed == {"gpu-a", "gpu-h"}
    assert fakes["cpu"].called("create") == []


def test_needs_no_host_has_names_the_labels(build: Build) -> None:
    fleet, fakes = build(host("a", labels={"gpu": "a100"}))
    with pytest.raises(NoHostAvailable) as caught:
        fleet.create("sgw-1", BODY, needs={"gpu": "h100", "zone": "us"})
    assert caught.value.code == "no-host-available"
    assert "without the labels gpu=h100, zone=us" in caught.value.message
    assert fakes["a"].called("create") == []


def test_a_host_with_another_build_of_the_image_is_not_chosen(build: Build, mono: FakeClock) -> None:
    fleet, fakes = build(host("a"), host("b"))
    fakes["a"].image_id = "sha256:" + "b" * 64
    for i in range(20):
        assert fleet.inventory.host_of(fleet.create(f"sgw-{i}", BODY)) == "b"
    assert fakes["a"].called("create") == []
    asked = len(fakes["a"].called("image_identity"))
    assert asked == 1, "the answer is kept a while"
    fakes["a"].image_id = GOOD_IMAGE  # the operator loads the right build
    mono.advance(IMAGE_TTL_S + 1)
    placed = {fleet.inventory.host_of(fleet.create(f"later-{i}", BODY)) for i in range(30)}
    assert placed == {"a", "b"}


def test_a_host_that_could_not_say_which_image_it_has_is_asked_again(build: Build) -> None:
    """A host that did not answer about the image (a blip) is not taken to lack it for the whole
    time an answer is kept: once it answers again, it takes sandboxes again."""
    fleet, fakes = build(host("a"))
    fakes["a"].fails["image_identity"] = "timed out"
    with pytest.raises(NoHostAvailable):
        fleet.create("sgw-1", BODY)
    del fakes["a"].fails["image_identity"]
    fleet.health.ok("a")  # the next probe
    assert fleet.inventory.host_of(fleet.create("sgw-1", BODY)) == "a"


def test_a_host_without_the_image_is_not_chosen(build: Build) -> None:
    fleet, fakes = build(host("a"), host("b"))
    fakes["b"].image_id = ""
    assert {fleet.inventory.host_of(fleet.create(f"sgw-{i}", BODY)) for i in range(20)} == {"a"}
    fakes["a"].image_id = ""
    fleet.inventory.forget_host("a")
    with pytest.raises(NoHostAvailable, match="without the"):
        fleet.create("sgw-x", BODY)


# -- a create that fails --------------------------------------------------------------------------


def test_when_the_best_host_fails_the_second_is_tried_once(build: Build, sink: MemorySink) -> None:
    fleet, fakes = build(host("a"), host("b"), host("c"))
    name = "sgw-retry"
    first, second, third = rank(name, [Candidate(h, 10.0) for h in "abc"])
    fakes[first].fails["create"] = "connection reset"
    cid = fleet.create(name, BODY)
    assert fleet.inventory.host_of(cid) == second
    assert fakes[first].called("create") == [name] and fakes[second].called("create") == [name]
    assert fakes[third].called("create") == []
    assert events(sink, "sandbox.place")[-1]["detail"]["rank"] == 1
    state = fleet.health.of(first)
    assert state is not None and state.failing == 1 and fleet.health.placeable(first), "one failure"
    fleet.health.failed(first, "connection reset", probe=False)
    assert not fleet.health.placeable(first), "two in a row: suspect"


def test_when_the_two_best_hosts_fail_the_create_fails(build: Build) -> None:
    fleet, fakes = build(host("a"), host("b"), host("c"))
    name = "sgw-retry"
    first, second, third = rank(name, [Candidate(h, 10.0) for h in "abc"])
    fakes[first].fails["create"] = "first failed"
    fakes[second].fails["create"] = "second failed"
    with pytest.raises(EngineError, match="second failed"):
        fleet.create(name, BODY)
    assert fakes[third].called("create") == [], "two tries, not a tour of the fleet"
    assert fleet.inventory.count(first) == fleet.inventory.count(second) == 0


def test_a_name_already_in_use_is_not_tried_elsewhere(build: Build) -> None:
    """SandboxGone at create is the engine's 409 (the name is taken): making it again on another host
    would give the principal two sandboxes."""
    fleet, fakes = build(host("a"), host("b"))
    name = "sgw-taken"
    first, second = rank(name, [Candidate(h, 10.0) for h in "ab"])
    fakes[first].add(name)
    with pytest.raises(SandboxGone):
        fleet.create(name, BODY)
    assert fakes[second].called("create") == []
    assert fleet.health.placeable(first), "a refusal is an answer, not a failure"


# -- a down host ----------------------------------------------------------------------------------


def test_calls_about_a_down_hosts_sandboxes_fail_at_once(build: Build, mono: FakeClock) -> None:
    fleet, fakes = build(host("a"), host("b"))
    cid = place_on(fleet, "a")
    stream = fleet.exec_open(cid, REQUEST)
    go_down(fleet, mono, "a")
    fleet.health.ok("b")
    calls_before = list(fakes["a"].calls)
    for call in (
        lambda: fleet.start(cid),
        lambda: fleet.inspect(cid),
        lambda: fleet.exec_open(cid, REQUEST),
        lambda: fleet.attach(cid),
        lambda: fleet.rename(cid, "x"),
        lambda: fleet.exec_result(stream, fleet.exec_pump(stream, REQUEST)),
    ):
        with pytest.raises(SandboxGone) as caught:
            call()
        assert caught.value.code == "host-down" and "sandbox host a is down" in caught.value.message
    with pytest.raises(EngineError, match="sandbox host a is down; the sandbox is removed when it is back"):
        fleet.remove(cid)
    assert [c for c in fakes["a"].calls if c not in calls_before and c[0] != "exec_pump"] == []
    assert fleet.inventory.host_of(cid) == "a", "kept: it is removed once the host is back"


def test_a_down_host_gets_no_create(build: Build, mono: FakeClock) -> None:
    fleet, fakes = build(host("a"), host("b"))
    go_down(fleet, mono, "a")
    fleet.health.ok("b")
    for i in range(20):
        assert fleet.inventory.host_of(fleet.create(f"sgw-{i}", BODY)) == "b"
    assert fakes["a"].called("create") == []
    fleet.health.failed("b", "x")
    fleet.health.failed("b", "x")
    with pytest.raises(NoHostAvailable):
        fleet.create("sgw-last", BODY)


def test_a_container_unknown_to_the_gateway_is_not_looked_for_on_a_down_host(
    build: Build, mono: FakeClock
) -> None:
    fleet, fakes = build(host("a"), host("b"))
    hidden = fakes["a"].add("sgw-hidden")
    go_down(fleet, mono, "a")
    with pytest.raises(SandboxGone):
        fleet.inspect(hidden)
    assert fakes["a"].called("inspect") == []


def test_removing_a_container_no_host_has_is_done(build: Build) -> None:
    """DockerBackend.remove of a container already gone is not an error; the fleet says the same
    once every host answered that it does not have it."""
    fleet, fakes = build(host("a"), host("b"))
    fleet.remove("long-gone")
    assert fakes["a"].called("inspect") == fakes["b"].called("inspect") == ["long-gone"]


def test_removing_a_container_while_a_host_cannot_say_is_not_done(build: Build, mono: FakeClock) -> None:
    fleet, fakes = build(host("a"), host("b"))
    fakes["b"].failing = "timed out"
    with pytest.raises(SandboxGone, match="no host that answers"):
        fleet.remove("maybe-on-b")
    fakes["b"].failing = None
    go_down(fleet, mono, "b")
    with pytest.raises(SandboxGone, match="no host that answers"):
        fleet.remove("maybe-on-b")


# -- streams -------------------------------------------------------------------------------------


def test_cut_streams_shuts_every_stream_to_the_host(build: Build) -> None:
    fleet, fakes = build(host("a"), host("b"))
    on_a, on_b = place_on(fleet, "a"), place_on(fleet, "b", "other")
    attached, _, _ = fleet.attach(on_a)
    execd = fleet.exec_open(on_a, REQUEST).sock
    elsewhere, _, _ = fleet.attach(on_b)
    peers = {ours: theirs for f in fakes.made for ours, theirs in f.streams}

    assert fleet.streams.cut("a") == 2
    assert eof(peers[attached]) and eof(peers[execd]), "the far ends see the streams end"
    assert not eof(peers[elsewhere]), "another host's stream is left alone"
    assert fleet.streams.cut("a") == 0
    assert fleet.streams.cut("nobody") == 0


def test_a_stream_opened_as_its_host_goes_down_is_cut_too(build: Build, mono: FakeClock) -> None:
    """The monitor may cut a host's streams while an attach to it is under way; the stream that
    attach then returns must not be left waiting on a host that is down."""
    fleet, fakes = build(host("a"))
    cid = place_on(fleet, "a")

    def monitor_acts() -> None:
        go_down(fleet, mono, "a")
        fleet.streams.cut("a")

    fakes["a"].hooks["attach"] = monitor_acts
    sock, _, _ = fleet.attach(cid)
    peer = dict(fakes["a"].streams)[sock]
    assert eof(peer), "the stream of a host that went down meanwhile is cut"


# -- the hosts file changing -----------------------------------------------------------------------


def test_configure_keeps_unchanged_hosts_and_reconnects_changed_ones(build: Build, mono: FakeClock) -> None:
    fleet, fakes = build(host("a"), host("b"), host("c"))
    a, b, c = fakes["a"], fakes["b"], fakes["c"]
    on_c = place_on(fleet, "c")
    moved = {**host("b"), "address": "tcp://b-new.internal:2376"}
    fleet.configure(parse_hosts(hosts_file(host("a", capacity=99), moved, host("d"))))

    assert fleet.engine("a") is a, "capacity changed, not the connection"
    assert fleet.engine("b") is not b and fakes["b"].spec.address == "tcp://b-new.internal:2376"
    assert not b.closed, "calls may still run on the old connection"
    assert fleet.names() == ["a", "b", "d"]
    assert fleet.free("a") == 99 - fleet.inventory.count("a")
    state_b = fleet.health.of("b")
    assert state_b is not None and state_b.state == "up", "health follows the host, by name"
    state_d = fleet.health.of("d")
    assert state_d is not None and state_d.state == "unknown"
    with pytest.raises(SandboxGone) as caught:
        fleet.start(on_c)
    assert caught.value.code == "host-removed" and "no longer in the hosts file" in caught.value.message
    assert c.called("start") == []
    fleet.close()
    assert a.closed and b.closed and fakes["b"].closed and c.closed and fakes["d"].closed


def test_configure_reconnects_a_host_whose_tls_changed(build: Build) -> None:
    fleet, fakes = build(host("a"), host("b", tls={"ca": "/b/ca", "cert": "/b/c", "key": "/b/k"}))
    a, b = fakes["a"], fakes["b"]
    tls = {"ca": "/new/ca", "cert": "/new/c", "key": "/new/k"}
    fleet.configure(parse_hosts(hosts_file(host("a"), host("b", tls=tls))))
    assert fleet.engine("a") is a and fleet.engine("b") is not b
    fleet.configure(
        parse_hosts(
            hosts_file(host("a"), host("b", tls=tls), tls={"ca": "/d/ca", "cert": "/d/c", "key": "/d/k"})
        )
    )
    assert fleet.engine("a") is not a, "the file's own TLS is host a's"


def test_a_connection_that_cannot_be_made_leaves_the_hosts_as_they_were(build: Build) -> None:
    fleet, fakes = build(host("a"))
    before = fleet.hosts
    fakes.refuse["b"] = ValueError("no such certificate")
    with pytest.raises(ValueError, match="no such certificate"):
        fleet.configure(parse_hosts(hosts_file(host("a"), host("b"))))
    assert fleet.hosts is before and fleet.names() == ["a"]
    assert fleet.inventory.host_of(fleet.create("sgw-1", BODY)) == "a"


# -- the whole fleet -------------------------------------------------------------------------------


def test_ping_is_fine_while_one_host_answered_its_last_probes(build: Build) -> None:
    """It reads the hosts' health and asks no host itself, so a readiness check never waits on one."""
    fleet, fakes = build(host("a"), host("b"), host("c"))
    for name, error in (("a", "refused"), ("c", "timed out")):
        fleet.health.failed(name, error)
        fleet.health.failed(name, error)
    fleet.ping()
    fleet.health.failed("b", "reset")
    fleet.health.failed("b", "reset")
    with pytest.raises(EngineError) as caught:
        fleet.ping()
    assert caught.value.message == "no sandbox host answers: a: refused; b: reset; c: timed out"
    assert all(fake.called("ping") == [] for fake in fakes.by_name.values())


def test_ping_names_the_hosts_that_are_down(build: Build, mono: FakeClock) -> None:
    fleet, fakes = build(host("a"), host("b"))
    go_down(fleet, mono, "a")
    fleet.health.failed("b", "refused", probe=False)
    fleet.health.failed("b", "refused", probe=False)
    with pytest.raises(EngineError) as caught:
        fleet.ping()
    assert "a: down" in caught.value.message and "b: refused" in caught.value.message
    fleet.health.failed("b", "refused")
    with pytest.raises(EngineError, match="a: down; b: down"):
        fleet.ping()
    assert fakes["a"].called("ping") == []


def test_image_identity_is_the_build_most_hosts_have(build: Build) -> None:
    fleet, fakes = build(host("a"), host("b"), host("c"), host("d"))
    odd = "sha256:" + "9" * 64
    fakes["c"].image_id = odd
    fakes["d"].failing = "refused"
    image, digests = fleet.image_identity("sandbox:latest")
    assert image == GOOD_IMAGE
    assert digests == {"repo@a", "repo@b"}, "the digests of the hosts with that build"


def test_image_identity_of_a_tie_is_the_same_every_time(build: Build) -> None:
    fleet, fakes = build(host("a"), host("b"))
    other = "sha256:" + "0" * 64
    fakes["b"].image_id = other
    assert fleet.image_identity("sandbox:latest")[0] == min(GOOD_IMAGE, other)


def test_image_identity_nowhere_is_image_missing(build: Build) -> None:
    fleet, fakes = build(host("a"), host("b"))
    fakes["a"].image_id = ""
    fakes["b"].failing = "refused"
    with pytest.raises(SandboxError) as caught:
        fleet.image_identity("sandbox:latest")
    assert caught.value.code == "image-missing"


def test_image_present_on_any_host(build: Build) -> None:
    fleet, fakes = build(host("a"), host("b"))
    fakes["a"].image_id = ""
    assert fleet.image_present("sandbox:latest")
    fakes["b"].failing = "refused"
    assert fleet.image_present("sandbox:latest"), "readiness checks come often: the answer is kept a while"
    assert fakes["b"].called("image_present") == ["sandbox:latest"], "asked once"
