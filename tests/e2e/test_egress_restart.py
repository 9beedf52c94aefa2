"""Egress across a gateway's death: SIGKILL leaves its sandboxes and its two Squids running. The next
gateway with the same id stops those Squids (they hold the egress port with nobody's policy),
starts its own, and adopts the sandbox at the address its label names, so that sandbox's egress
works again under the same profile, and the proxy knows whose it is."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.backend.docker_engine import DockerBackend
from tests.e2e.conftest import mcp_client, start_gateway, stop_gateway
from tests.e2e.egress_gateways import egress_arguments, egress_policy, outside_world
from tests.support import audit_events
from tests.support.egress_lock import egress_port
from tests.support.egress_world import World
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio
GATEWAY_ID = "egress-restart-test"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with outside_world(tmp_path_factory.mktemp("world")) as outside:
        yield outside


async def fetch(url: str, token: str, world: World) -> dict[str, object]:
    command = f"cat > ca.pem <<'EOF'\n{world.ca_pem}EOF\ncurl -sS --cacert ca.pem https://good.test/again"
    async with mcp_client(url, token) as client:
        result = await client.call_tool("execute_bash", {"command": command})
    assert result.structured_content is not None, result
    return dict(result.structured_content)


def _after_last_start(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    starts = [i for i, event in enumerate(events) if event["event"] == "gateway.start"]
    return [event for event in events[starts[-1] :] if event["event"] == name]


def squids(gateway_id: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if (
            proc.name.isdigit()
            and cmdline.split(b"\0")[0].endswith(b"squid")
            and gateway_id.encode() in cmdline
        ):
            found.append(int(proc.name))
    return found


async def test_after_a_sigkill_the_next_gateway_takes_egress_over(
    tmp_path: Path, world: World, backend: DockerBackend
) -> None:
    common = egress_policy(tmp_path / "policy.yaml", {"allow": ["good.test:443"]})
    common += ["--gateway-id", GATEWAY_ID, *egress_arguments(world)]
    with egress_port():
        first = start_gateway(tmp_path, *common, principals={"alice": "web"})
        assert "host=good.test" in str((await fetch(first.url, first.tokens["alice"], world))["stdout"])
        old_squids = squids(GATEWAY_ID)
        assert len(old_squids) >= 2
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=30)
        assert set(old_squids) <= set(squids(GATEWAY_ID)), "SIGKILL left the proxy running"
        (tmp_path / "second").mkdir()
        second = start_gateway(
            tmp_path / "second", *common, "--tokens", str(tmp_path / "tokens.jsonl"),
            "--audit-log", str(first.audit_log), principals={},
        )  # fmt: skip
        try:
            out = await fetch(second.url, first.tokens["alice"], world)
            assert "host=good.test sni=good.test" in str(out["stdout"]), out
            assert not set(old_squids) & set(squids(GATEWAY_ID)), "the orphaned proxy was stopped"
            adopted = audit_events(first.audit_log, "sandbox.adopt")
            assert adopted, "alice's sandbox was adopted, not replaced"
            # The new gateway knows whose address it is (the first one's event may have died with it:
            # the proxy's log of that run is kept, once, beside the new one as ID.previous).
            restarted = len(audit_events(first.audit_log, "gateway.start"))
            assert restarted == 2
            event = eventually(
                lambda: _after_last_start(audit_events(first.audit_log), "egress.connection"),
                timeout_s=15,
            )[-1]
            assert event["actor"]["principal"] == "alice" and event["decision"]["result"] == "allow"
            assert event["decision"]["profile"] == "web" and event["egress"]["host"] == "good.test"
        finally:
            stop_gateway(second)
    assert backend.list({"sandbox-gateway.gateway": GATEWAY_ID}) == []
