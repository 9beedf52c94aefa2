"""`sandbox-gateway sandboxes` against the real engine, through the socket proxy: a sandbox taken from
the warm pool keeps its pool labels when it is handed out, and `--principal` still finds it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import anyio
import pytest

from gateway.backend.docker_engine import DockerBackend
from gateway.calls.service import ExecutionService
from gateway.sandboxes.broker import Broker
from gateway.sandboxes.naming import POOL, PRINCIPAL, sandbox_name
from policy import Principal, load_policy
from policy.engine import PolicyEngine
from tests.conftest import PROXY_URL

pytestmark = pytest.mark.anyio

OWNER = Principal("dora", tenant="acme")


def _sandboxes(gateway_id: str, *flags: str) -> tuple[int, list[dict[str, Any]], str]:
    """The command as an operator runs it: its own process, the engine at DOCKER_HOST."""
    env = {**os.environ, "DOCKER_HOST": PROXY_URL}
    env.pop("SGW_GATEWAY_ID", None)
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "sandboxes", "--gateway-id", gateway_id, "--json", *flags],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    return done.returncode, json.loads(done.stdout or "[]"), done.stderr


async def test_principal_finds_a_pooled_sandbox_handed_out_to_it(
    broker: Broker, backend: DockerBackend
) -> None:
    engine = PolicyEngine(load_policy())
    service = ExecutionService(engine, broker, broker.audit)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(broker.maintain_pool)
        with anyio.fail_after(60):
            while len(broker.pool.sandboxes) < 2:
                await anyio.sleep(0.05)
        pooled = {s.container_id for s in broker.pool.sandboxes}
        result = await service.execute(OWNER, "execute_bash", "true")
        assert result.exit_code == 0
        tasks.cancel_scope.cancel()
    handed = broker.sandbox_of(OWNER)
    assert handed is not None and handed.container_id in pooled, "the call was served from the pool"

    # What the engine records: the owner's sandbox name, and the labels of a pooled sandbox.
    raw = await anyio.to_thread.run_sync(backend.inspect_raw, handed.container_id)
    labels = raw["Config"]["Labels"]
    assert raw["Name"] == f"/{sandbox_name(broker.gateway_id, 'acme/dora')}"
    assert labels[POOL] == "true" and PRINCIPAL not in labels
    by_label = await anyio.to_thread.run_sync(backend.list, {PRINCIPAL: "dora"})
    assert handed.container_id not in {row.id for row in by_label}, "a label filter misses it"

    code, found, err = await anyio.to_thread.run_sync(
        _sandboxes, broker.gateway_id, "--principal", "dora", "--tenant", "acme"
    )
    assert code == 0, err
    (row,) = found
    assert row["id"] == handed.container_id and row["name"] == handed.name
    assert (row["owner"], row["owner_from"], row["pooled"], row["handed_out"]) == (
        "acme/dora",
        "name",
        True,
        True,
    )
    assert (row["profile"], row["state"]) == ("default", "running")
    assert row["uid"] == int(labels["sandbox-gateway.user"].partition(":")[0])
    assert row["created"].startswith(raw["Created"][:19])

    # The same principal in another tenant owns nothing here.
    code, found, err = await anyio.to_thread.run_sync(_sandboxes, broker.gateway_id, "--principal", "dora")
    assert (code, found) == (1, []) and "no sandbox of default/dora" in err

    # Unfiltered: the handed-out one without a known owner, and the pool (refilled or not) waiting.
    code, every, err = await anyio.to_thread.run_sync(_sandboxes, broker.gateway_id)
    assert code == 0, err
    rows = {r["id"]: r for r in every}
    assert rows[handed.container_id]["owner"] is None and rows[handed.container_id]["handed_out"]
    waiting = [r for r in every if r["pooled"] and not r["handed_out"]]
    assert all(r["owner"] is None and r["name"].startswith("sgw-pool-") for r in waiting)
    assert pooled - {handed.container_id} <= {r["id"] for r in waiting}
