"""The socket proxy's rule for a sandbox's name: a principal's (`sgw-` and 16 hex digits), a warm
pool's (`sgw-pool-` and 16 hex digits), or a fleet replica's warm pool's (`sgw-pool-REPLICA-` and
16 hex digits, REPLICA as `--replica-id` allows) — the names the broker makes, and nothing else."""

from __future__ import annotations

import pytest

from gateway.sandboxes import naming
from gateway.sockproxy.fields import NAME

HEX = "0123456789abcdef"


@pytest.mark.parametrize(
    "name",
    [
        naming.sandbox_name("fleet", "t/p"),
        f"sgw-{HEX}",
        f"{naming.pool_prefix('')}{HEX}",
        f"{naming.pool_prefix('gw-1')}{HEX}",
        f"{naming.pool_prefix('r-' + 'a' * 40)}{HEX}",
    ],
)
def test_the_names_the_broker_makes_are_sandbox_names(name: str) -> None:
    assert NAME.fullmatch(name)


@pytest.mark.parametrize(
    "name",
    [
        f"sgw-{HEX.upper()}",
        f"sgw-{HEX}0",
        f"sgw-{HEX[:-1]}",
        f"sgw-pool-GW-1-{HEX}",
        f"sgw-pool--{HEX}",
        f"sgw-pool-gw_1-{HEX}",
        f"sgw-pool-gw.1-{HEX}",
        f"sgw-pool-gw/1-{HEX}",
        f"sgw-pool-{'a' * 64}-{HEX}",
        f"sgw-pool-gw-1-{HEX}\n",
        f"/sgw-{HEX}",
        f"sgw-pool-gw-1{HEX}",
        "victim",
        "",
    ],
)
def test_anything_else_is_not(name: str) -> None:
    assert not NAME.fullmatch(name)
