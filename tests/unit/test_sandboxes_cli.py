"""`sandbox-gateway sandboxes`: owners read from labels, or from the name of a pooled sandbox handed out."""

from __future__ import annotations

import json
from typing import cast

import pytest

from gateway.backend.base import Backend, ContainerInfo
from gateway.cli import main
from gateway.cli import sandboxes as cli
from gateway.cli.sandboxes import Listed, describe, lookup, render_table
from gateway.sandboxes.naming import (
    GATEWAY,
    MANAGED,
    POOL,
    PRINCIPAL,
    PROFILE,
    TENANT,
    USER_LABEL,
    managed_by,
    sandbox_name,
)

GATEWAY_ID = "gw-1"


def _row(name: str, created: float, **labels: str) -> ContainerInfo:
    base = {MANAGED: "true", GATEWAY: GATEWAY_ID, PROFILE: "default", USER_LABEL: "2000000007:2000000007"}
    return ContainerInfo(
        id=f"{name}-id".ljust(64, "0"), name=name, running=True, labels=base | labels, created=created
    )


#: A sandbox made for acme/alice; one from the pool handed out to default/bob; one still waiting.
MADE = _row(sandbox_name(GATEWAY_ID, "acme/alice"), 30, **{PRINCIPAL: "alice", TENANT: "acme"})
HANDED = _row(sandbox_name(GATEWAY_ID, "default/bob"), 10, **{POOL: "true"})
WAITING = _row("sgw-pool-0123456789abcdef", 20, **{POOL: "true"})


class FakeBackend:
    def __init__(self, rows: list[ContainerInfo]) -> None:
        self.rows = rows
        self.asked: list[dict[str, str]] = []
        self.closed = False

    def list(self, labels: dict[str, str], name: str | None = None) -> list[ContainerInfo]:
        self.asked.append(labels)
        return [r for r in self.rows if all(r.labels.get(k) == v for k, v in labels.items())]

    def close(self) -> None:
        self.closed = True


def _lookup(
    backend: FakeBackend, gateway_id: str, *, principal: str | None = None, tenant: str | None = None
) -> list[Listed]:
    """`lookup` on the fake, which has only what `lookup` uses of a Backend: `list` (and `close`)."""
    return lookup(cast(Backend, backend), gateway_id, principal=principal, tenant=tenant)


def test_the_owner_of_a_sandbox_made_for_a_principal_is_in_its_labels() -> None:
    listed = describe(MADE, GATEWAY_ID)
    assert (listed.owner, listed.owner_from, listed.pooled, listed.handed_out) == (
        "acme/alice",
        "labels",
        False,
        False,
    )
    assert (listed.profile, listed.uid, listed.pool_state) == ("default", 2000000007, "no")


def test_a_handed_out_pooled_sandbox_is_its_principals_by_name_only() -> None:
    unknown = describe(HANDED, GATEWAY_ID)
    assert (unknown.owner, unknown.owner_from, unknown.pooled, unknown.handed_out) == (None, None, True, True)
    assert unknown.pool_state == "handed out"
    found = describe(HANDED, GATEWAY_ID, [("acme", "bob"), ("default", "bob")])
    assert (found.tenant, found.principal, found.owner_from) == ("default", "bob", "name")
    assert describe(HANDED, "another-gateway", [("default", "bob")]).owner is None, (
        "the name holds the gateway id"
    )


def test_a_pooled_sandbox_still_waiting_has_no_owner() -> None:
    waiting = describe(WAITING, GATEWAY_ID, [("default", "bob")])
    assert (waiting.owner, waiting.pooled, waiting.handed_out, waiting.pool_state) == (
        None,
        True,
        False,
        "waiting",
    )


def test_lookup_lists_the_gateways_sandboxes_oldest_first_and_finds_a_principals() -> None:
    backend = FakeBackend([MADE, HANDED, WAITING, _row("sgw-other", 5, **{GATEWAY: "other", PRINCIPAL: "x"})])
    assert [r.name for r in _lookup(backend, GATEWAY_ID)] == [HANDED.name, WAITING.name, MADE.name]
    assert backend.asked == [managed_by(GATEWAY_ID)]
    assert [r.id for r in _lookup(backend, GATEWAY_ID, principal="bob")] == [HANDED.id]
    assert [r.id for r in _lookup(backend, GATEWAY_ID, principal="alice", tenant="acme")] == [MADE.id]
    assert _lookup(backend, GATEWAY_ID, principal="alice") == [], "alice of tenant default has none"
    assert _lookup(backend, GATEWAY_ID, principal="bob", tenant="acme") == []
    assert [r.id for r in _lookup(backend, GATEWAY_ID, tenant="acme")] == [MADE.id]


def test_the_table_marks_an_owner_known_only_by_name() -> None:
    table = render_table(_lookup(FakeBackend([MADE, HANDED, WAITING]), GATEWAY_ID))
    header, handed, waiting, made = table.splitlines()[:4]
    assert header.split()[:4] == ["NAME", "OWNER", "OWNER", "FROM"]
    assert handed.split()[1:5] == ["?", "-", "handed", "out"]
    assert waiting.split()[1:4] == ["-", "-", "waiting"]
    assert made.split()[1:4] == ["acme/alice", "labels", "no"]
    assert "only its name records the owner" in table
    assert "records the owner" not in render_table(_lookup(FakeBackend([MADE, WAITING]), GATEWAY_ID))


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeBackend:
    backend = FakeBackend([MADE, HANDED, WAITING])
    monkeypatch.setattr(cli, "_backend", lambda settings: backend)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("SGW_GATEWAY_ID", raising=False)
    return backend


def test_the_command_prints_a_principals_pooled_sandbox_as_json(
    fake: FakeBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sandboxes", "--gateway-id", GATEWAY_ID, "--principal", "bob", "--json"]) == 0
    (found,) = json.loads(capsys.readouterr().out)
    assert found["name"] == HANDED.name and found["id"] == HANDED.id
    assert (found["owner"], found["owner_from"], found["pooled"], found["handed_out"]) == (
        "default/bob",
        "name",
        True,
        True,
    )
    assert (found["profile"], found["uid"], found["state"]) == ("default", 2000000007, "running")
    assert found["created"] == "1970-01-01T00:00:10+00:00"
    assert fake.closed


def test_no_sandbox_for_the_principal_exits_1(fake: FakeBackend, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sandboxes", "--gateway-id", GATEWAY_ID, "--principal", "carol"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "no sandbox of default/carol on gateway 'gw-1'" in captured.err


def test_the_gateway_id_defaults_to_the_compose_variable(
    fake: FakeBackend, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SGW_GATEWAY_ID", GATEWAY_ID)
    assert main(["sandboxes", "--tenant", "acme"]) == 0
    captured = capsys.readouterr()
    assert fake.asked == [managed_by(GATEWAY_ID)]
    assert [line.split()[1] for line in captured.out.splitlines()[1:]] == ["acme/alice"]
    assert "1 sandbox(es) of gateway 'gw-1' came from the warm pool" in captured.err


def test_the_engine_is_reached_only_through_the_socket_proxy(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///var/run/docker.sock")
    assert main(["sandboxes"]) == 2
    assert "raw socket" in capsys.readouterr().err


def test_no_docker_import_for_the_other_commands() -> None:
    import subprocess
    import sys

    code = "import sys, gateway.cli; gateway.cli._parser(); sys.exit('docker' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
