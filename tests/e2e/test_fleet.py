"""A fleet: three sandbox hosts (private engines in network namespaces of their own, each behind the
project's socket proxy on TLS), two gateway replicas sharing a gateway id, Redis and HAProxy.

60 principals make their calls through the balancer while an engine is killed and comes back, a
host is cut off the network and rejoins, and a replica is killed and restarted. Every call must be
answered (a call caught in a fault is retried by its client, as an agent would), files must persist
per principal across replicas, principals whose host stayed up must never notice, and afterwards
nothing may be left twice or unrecorded. Quotas, rate limits and drain are checked across replicas.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
import pytest

from gateway.sandboxes.naming import sandbox_name
from tests.conftest import IMAGE
from tests.e2e.conftest import ACCEPT, INIT, mcp_client
from tests.e2e.test_cli import cli
from tests.support import audit_events, eventually, eventually_async, read_events
from tests.support.fleet_rig import FleetRig

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.e2e]

LOAD = [f"p{i:02d}" for i in range(60)]
#: These alternate between the replicas directly, so their files must survive a hand-over each call.
ALTERNATING = set(LOAD[50:])
CALLS = 10


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetRig]:
    principals = {name: ("default", f"t{i % 3}") for i, name in enumerate(LOAD)}
    principals |= {f"q{i}": ("quota", "tq") for i in range(6)}
    principals |= {"rl": ("limited", "trl")} | {f"late{i}": ("default", "t9") for i in range(6)}
    fleet = FleetRig(tmp_path_factory.mktemp("fleet"), IMAGE)
    try:
        fleet.start(principals)
        yield fleet
    finally:
        fleet.close()


async def _run(url: str, token: str, command: str) -> dict[str, object]:
    async with mcp_client(url, token) as client:
        result = await client.call_tool("execute_bash", {"command": command})
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


@dataclass
class Principal:
    name: str
    answers: list[dict[str, object]] = field(default_factory=list)
    retries: int = 0
    replaced_at: list[int] = field(default_factory=list)
    lost_at: list[int] = field(default_factory=list)


async def _calls(rig: FleetRig, who: Principal, first: int, last: int, pace_s: float) -> None:
    """Calls first..last: each appends its number to a file and prints the file. A call that fails
    (its replica died, its host went down under it) is made again, as an agent would."""
    for number in range(first, last + 1):
        unanswered = False
        for attempt in range(8):
            url = rig.balancer + "/mcp"
            if who.name in ALTERNATING and attempt == 0:
                replica = rig.replicas[("gw-1", "gw-2")[number % 2]]
                url = replica.url if replica.process.poll() is None else url
            try:
                command = f"echo {number} >> /workspace/calls; cat /workspace/calls"
                answer = await _run(url, rig.tokens[who.name], command)
            except Exception:  # any failure is made again; too many fail the test below
                who.retries += 1
                unanswered = True
                await anyio.sleep(1 + attempt)
                continue
            if not answer["sandbox_lost"]:
                break
            who.lost_at.append(number)  # its host went down under it: answered so, and made again
        else:
            raise AssertionError(f"{who.name}: call {number} was never answered")
        if answer["sandbox_replaced"]:
            who.replaced_at.append(number)
        # A call made again after one that got no answer may have missed the news that its sandbox
        # was replaced: the replica that would have said so died first (a known limit).
        who.answers.append({"number": number, "unanswered_before": unanswered, **answer})
        await anyio.sleep(pace_s * random.uniform(0.5, 1.5))


def _placements(rig: FleetRig) -> Counter[str]:
    return Counter(
        {
            host: sum(1 for name in names if not name.startswith("sgw-pool-"))
            for host, names in rig.sandboxes().items()
        }
    )


@pytest.mark.timeout(900)
async def test_a_fleet_serves_sixty_principals_through_faults(rig: FleetRig) -> None:
    people = {name: Principal(name) for name in LOAD}
    async with anyio.create_task_group() as tasks:  # every principal's first call
        for who in people.values():
            tasks.start_soon(_calls, rig, who, 1, 1, 0.0)
    spread = _placements(rig)
    print("sandboxes per host after the first calls:", dict(spread))
    assert sum(spread.values()) == len(LOAD)
    even = len(LOAD) / len(rig.hosts)
    assert all(abs(spread[h.name] - even) <= 0.2 * even for h in rig.hosts), spread
    home = {name: host for host, names in rig.sandboxes().items() for name in names}
    sandbox_of = {name: sandbox_name(rig.gateway_id, f"t{i % 3}/{name}") for i, name in enumerate(LOAD)}

    killed, cut = rig.hosts[0], rig.hosts[1]
    faults_done = anyio.Event()

    async def seen(event: str, host: str) -> None:
        """Until every live replica recorded `event` for `host`."""

        def everywhere() -> bool:
            live = [r.audit_log for r in rig.replicas.values() if r.process.poll() is None]
            return all(audit_events(log, event, host=host) for log in live)

        await eventually_async(everywhere, timeout_s=30, message=f"{event} {host} not recorded")

    async def faults() -> None:
        await anyio.sleep(2)
        killed.kill_engine()
        print("engine of", killed.name, "killed")
        await seen("host.down", killed.name)
        await anyio.sleep(2)
        await anyio.to_thread.run_sync(killed.start_engine)
        await seen("host.up", killed.name)
        cut.cut()
        await seen("host.down", cut.name)
        await anyio.sleep(2)
        await anyio.to_thread.run_sync(cut.rejoin)
        await seen("host.up", cut.name)
        rig.kill_replica("gw-1")
        await anyio.sleep(3)
        await anyio.to_thread.run_sync(rig.start_replica, "gw-1")
        print("faults done")
        faults_done.set()

    async def load(who: Principal) -> None:
        await _calls(rig, who, 2, CALLS, 1.5)
        number = CALLS
        while not faults_done.is_set():  # the load lasts as long as the faults
            number += 1
            await _calls(rig, who, number, number, 1.5)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(faults)
        for who in people.values():
            tasks.start_soon(load, who)

    # Every call was answered, and each saw every earlier number since its sandbox was last replaced.
    stayed_up = {name for name in LOAD if home[sandbox_of[name]] not in (killed.name, cut.name)}
    for who in people.values():
        assert len(who.answers) >= CALLS
        since = 1
        for answer in who.answers:
            if answer["sandbox_replaced"] or answer["unanswered_before"]:
                since = int(answer["number"])  # type: ignore[call-overload]
            lines = [int(n) for n in str(answer["stdout"]).split()]
            assert lines and lines[-1] == answer["number"], (who.name, answer)
            assert set(range(since, int(answer["number"]) + 1)) <= set(lines), (who.name, since, answer)
        if who.name in stayed_up:
            assert who.replaced_at == [], f"{who.name} was on a host that stayed up: {who.replaced_at}"
            assert who.lost_at == [], f"{who.name} was on a host that stayed up: {who.lost_at}"
    replaced = {who.name for who in people.values() if who.replaced_at}
    lost = sum(len(w.lost_at) for w in people.values())
    retries = sum(w.retries for w in people.values())
    print(f"retries {retries}, lost in flight {lost}, replaced: {sorted(replaced)}")
    assert replaced, "the principals of the hosts that went down got new sandboxes"

    # Nothing left twice: once the hosts are back, each principal has one sandbox in the fleet.
    def one_each() -> bool:
        names = Counter(n for names in rig.sandboxes().values() for n in names)
        return all(names[sandbox_of[name]] == 1 for name in LOAD) and max(names.values()) == 1

    eventually(one_each, timeout_s=30, message=f"duplicate or leaked sandboxes: {rig.sandboxes()}")

    # Every execution is in the audit trail (its exec.start is written before it runs), and every
    # replica's log verifies.
    logs = [log for logs in rig.audit_logs.values() for log in logs]
    for who in people.values():
        started = sum(len(audit_events(log, "exec.start", principal=who.name)) for log in logs)
        assert started >= len(who.answers), who.name
    for log in logs:
        verify = cli("audit", "verify", str(log), "--from-genesis")
        assert verify.returncode == 0, (log, verify.stdout, verify.stderr)
    places = [e for log in logs for e in read_events(log) if e.get("event") == "sandbox.place"]
    assert len(places) >= len(LOAD)


async def _refused(url: str, token: str) -> str | None:
    """None when a call runs, else the error code it was refused with."""
    async with mcp_client(url, token) as client:
        result = await client.call_tool("execute_bash", {"command": "true"})
    if not result.is_error:
        return None
    text = " ".join(getattr(part, "text", "") for part in result.content)
    return "tenant-sandbox-quota" if "tenant-sandbox-quota" in text else text


async def test_a_tenants_sandbox_quota_holds_across_replicas(rig: FleetRig) -> None:
    """Tenant tq may hold 3 sandboxes; six of its principals ask, alternately on each replica."""
    urls = [rig.replicas["gw-1"].url, rig.replicas["gw-2"].url]
    outcomes = [await _refused(urls[i % 2], rig.tokens[f"q{i}"]) for i in range(6)]
    assert outcomes.count(None) == 3, outcomes
    assert set(outcomes) - {None} == {"tenant-sandbox-quota"}, outcomes
    names = [n for names in rig.sandboxes().values() for n in names]
    made = {sandbox_name(rig.gateway_id, f"tq/q{i}") for i in range(6)} & set(names)
    assert len(made) == 3


async def test_a_principals_request_rate_holds_across_replicas(rig: FleetRig) -> None:
    """`limited` allows 12 requests a minute; requests alternate between the replicas."""
    statuses = []
    async with httpx.AsyncClient(timeout=10) as http:
        for i in range(20):
            replica = rig.replicas[("gw-1", "gw-2")[i % 2]]
            response = await http.post(
                replica.url,
                headers={**ACCEPT, "Authorization": f"Bearer {rig.tokens['rl']}"},
                content=json.dumps(INIT),
            )
            statuses.append(response.status_code)
    assert statuses.count(429) == 8, statuses
    assert all(code == 200 for code in statuses[:12]), statuses


async def test_a_drained_host_takes_no_new_sandbox_and_keeps_its_own(rig: FleetRig) -> None:
    """Its principals' sandboxes stay; its ready warm-pool sandboxes are retired, not handed out."""
    drained = rig.hosts[2]

    def on_drained() -> tuple[set[str], set[str]]:
        names = rig.sandboxes()[drained.name]
        pooled = {n for n in names if n.startswith("sgw-pool-")}
        return set(names) - pooled, pooled

    before, _ = on_drained()
    rig.drained = {drained.name}
    rig.write_hosts()
    rig.hup()
    for replica in rig.replicas.values():

        def recorded(log: Path = replica.audit_log) -> bool:
            return bool(audit_events(log, "host.drain", host=drained.name))

        await eventually_async(recorded, timeout_s=10)
    late = [f"late{i}" for i in range(6)]
    for name in late:
        await _run(rig.balancer + "/mcp", rig.tokens[name], "true")
    after, _ = on_drained()
    assert not {sandbox_name(rig.gateway_id, f"t9/{n}") for n in late} & after
    assert before <= after, "its principals' sandboxes stay"
    eventually(lambda: not on_drained()[1], timeout_s=30, message="the drained host's pool is retired")
    ready = httpx.get(rig.replicas["gw-2"].base + "/ready", timeout=10).json()
    rows = {row["name"]: row for row in ready["hosts"]}
    assert rows[drained.name]["drain"] is True and rows[drained.name]["placeable"] is False
    assert all(rows[h.name]["state"] == "up" for h in rig.hosts)


def test_the_hosts_command_lists_every_host(rig: FleetRig) -> None:
    listed = cli("hosts", "--hosts-file", str(rig.hosts_file), "--gateway-id", rig.gateway_id, "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert set(rows) == {h.name for h in rig.hosts}
    counts = {host: len(names) for host, names in rig.sandboxes().items()}
    assert all(rows[h]["state"] == "up" and rows[h]["sandboxes"] >= 1 for h in rows), (rows, counts)
    assert sum(rows[h]["sandboxes"] for h in rows) >= len(LOAD)
