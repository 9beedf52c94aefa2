"""ExecutionService on the in-memory backend: policy first (a denial never reaches the backend, and is
audited), the audit trail of a call, refused arguments with clear codes, tenant budgets, the
request rate, results as the client sees them, and the file and admin calls."""

from __future__ import annotations

import base64
from typing import Any

import anyio
import pytest

from audit import AuditLog, AuditWriteError, MemorySink
from gateway.calls.results import ExecResult
from gateway.calls.service import ExecutionService
from gateway.errors import EngineError, FileError, InvalidArgument, PolicyDenied, QuotaExceeded, SandboxError
from gateway.sandboxes.broker import Broker
from policy import Principal
from policy.engine import PolicyEngine
from tests.unit.broker_support import events, make_policy, removal_reasons, until
from tests.unit.fake_backend import FakeBackend, Gate, Reply, held

pytestmark = pytest.mark.anyio
ALICE = Principal("alice", tenant="acme")


def service_for(broker: Broker, exec_path: str = "agent", **default: Any) -> ExecutionService:
    engine = PolicyEngine(make_policy(exec_path, default=default))
    return ExecutionService(engine, broker, broker.audit)


@pytest.fixture
def service(broker: Broker, exec_path: str) -> ExecutionService:
    return service_for(broker, exec_path)


# -- policy first -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("principal", "tool", "code", "timeout_s", "reason"),
    [
        pytest.param(
            Principal("s", profile="strict"), "execute_bash", "true", None, "tool-not-allowed", id="tool"
        ),
        pytest.param(ALICE, "execute_bash", "true", 3600, "timeout-above-max", id="timeout"),
        pytest.param(ALICE, "execute_bash", "true", -1, "timeout-invalid", id="negative-timeout"),
        pytest.param(ALICE, "execute_python", "x" * 300_000, None, "input-too-large", id="input"),
        pytest.param(
            Principal("n", profile="nonexistent"),
            "execute_bash",
            "true",
            None,
            "unknown-profile",
            id="profile",
        ),
    ],
)
async def test_a_denied_call_never_reaches_the_backend_and_is_audited(
    service: ExecutionService,
    fake: FakeBackend,
    sink: MemorySink,
    *,
    principal: Principal,
    tool: str,
    code: str,
    timeout_s: float | None,
    reason: str,
) -> None:
    with pytest.raises(PolicyDenied) as denied:
        await service.execute(principal, tool, code, timeout_s)
    assert denied.value.code == reason
    assert fake.calls == [], "nothing reached the engine"
    (decision,) = events(sink, "policy.decision")
    assert decision["decision"]["result"] == "deny" and decision["decision"]["reasons"] == [reason]
    assert decision["actor"]["principal"] == principal.id and decision["tool"] == tool
    assert decision["policy_digest"] == service.engine.digest
    assert events(sink, "exec.start") == []


async def test_an_allowed_call_is_audited_from_decision_to_finish(
    service: ExecutionService, fake: FakeBackend, sink: MemorySink
) -> None:
    fake.handler = lambda command: Reply(exit_code=3, stdout=b"out\n", stderr=b"err\n")
    result = await service.execute(
        ALICE, "execute_bash", "echo out; echo err >&2; exit 3", source_ip="10.1.2.3"
    )
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert not (result.timed_out or result.truncated or result.oom_killed or result.sandbox_replaced)

    trail = events(sink)
    kinds = [e["event"] for e in trail]
    assert kinds.index("policy.decision") < kinds.index("exec.start") < kinds.index("docker.exec")
    assert kinds.index("docker.exec") < kinds.index("exec.finish") == len(kinds) - 1
    (start,) = events(sink, "exec.start")
    (finish,) = events(sink, "exec.finish")
    request_ids = {e.get("request_id") for e in trail}
    assert len(request_ids) == 1 and None not in request_ids, "every event of the call carries its request id"
    assert start["code"].keys() == {"hmac_sha256"}, "the code is kept as an HMAC only"
    assert "echo out" not in str(sink.lines)
    assert start["limits"]["timeout_s"] == 30 and start["limits"]["input_bytes"] == 30
    assert finish["outcome"]["exit_code"] == 3 and finish["outcome"]["status"] == "ok"
    assert finish["outcome"]["stdout_bytes"] == 4 and finish["outcome"]["stderr_bytes"] == 4
    assert finish["actor"] == {
        "principal": "alice",
        "tenant": "acme",
        "auth_method": "token",
        "source_ip": "10.1.2.3",
    }
    assert fake.ran("bash")[0].code == "echo out; echo err >&2; exit 3", "the code reached the sandbox intact"


async def test_a_failing_backend_ends_the_call_with_its_code_on_record(
    service: ExecutionService, fake: FakeBackend, sink: MemorySink
) -> None:
    fake.missing_images.add("mcp-code-executor:latest")
    with pytest.raises(SandboxError) as missing:
        await service.execute(ALICE, "execute_bash", "true")
    assert missing.value.code == "image-missing"
    fake.missing_images.clear()
    fake.fail("create", EngineError("cannot reach the Docker engine"))
    with pytest.raises(EngineError):
        await service.execute(ALICE, "execute_bash", "true")
    finishes = events(sink, "exec.finish")
    assert [(f["outcome"]["status"], f["outcome"]["error"]) for f in finishes] == [
        ("error", "image-missing"),
        ("error", "engine-unavailable"),
    ]


async def test_without_an_audit_trail_nothing_runs(broker: Broker, fake: FakeBackend) -> None:
    failing = MemorySink()
    failing.fail = True
    service = ExecutionService(PolicyEngine(make_policy()), broker, AuditLog([failing]))
    with pytest.raises(AuditWriteError):
        await service.execute(ALICE, "execute_bash", "touch /workspace/x")
    assert fake.calls == []


# -- arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "code"),
    [
        pytest.param("execute_bash", "", id="empty"),
        pytest.param("execute_bash", "  \n\t", id="blank"),
        pytest.param("execute_python", 42, id="not-a-string"),
        pytest.param("execute_bash", ["ls"], id="a-list"),
        pytest.param("execute_bash", "echo \x00", id="nul-byte"),
        pytest.param("execute_ruby", "puts 1", id="unknown-tool"),
    ],
)
async def test_invalid_code_is_refused_before_the_policy_and_the_backend(
    service: ExecutionService, fake: FakeBackend, sink: MemorySink, tool: str, code: object
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await service.execute(ALICE, tool, code)
    assert refused.value.code == "invalid-argument"
    assert fake.calls == [] and events(sink, "policy.decision") == []
    (rejected,) = events(sink, "tool.rejected")
    assert rejected["outcome"]["error"] == "invalid-argument" and rejected["tool"] == tool
    assert rejected["detail"]["message"] == refused.value.message


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param(lambda s: s.write_file(ALICE, "a\x00b", "x"), "NUL", id="nul-path"),
        pytest.param(lambda s: s.write_file(ALICE, 7, "x"), "path must be a string", id="path-type"),
        pytest.param(lambda s: s.write_file(ALICE, "a" * 5000, "x"), "longer than 4096", id="long-path"),
        pytest.param(lambda s: s.write_file(ALICE, "f", "!!", "base64"), "not valid base64", id="base64"),
        pytest.param(lambda s: s.write_file(ALICE, "f", "x", "latin-1"), "encoding", id="write-encoding"),
        pytest.param(lambda s: s.read_file(ALICE, "f", "utf-16"), "encoding", id="read-encoding"),
        pytest.param(lambda s: s.read_file(ALICE, "f", "utf-8", -1), "max_bytes", id="max-bytes"),
        pytest.param(lambda s: s.admin_remove(ALICE, ""), "principal", id="admin-target"),
    ],
)
async def test_invalid_file_and_admin_arguments_are_refused_with_their_reason(
    service: ExecutionService, fake: FakeBackend, call: Any, message: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await call(service)
    assert refused.value.code == "invalid-argument" and message in refused.value.message
    assert fake.calls == []


# -- budgets ------------------------------------------------------------------------------------


async def test_the_tenant_concurrency_cap_refuses_at_once_and_says_so(
    broker: Broker, fake: FakeBackend, sink: MemorySink
) -> None:
    policy = make_policy(
        default={"exec": {"max_concurrent": 1, "max_concurrent_per_tenant": 2}},
        **{"data-science": {"exec": {"max_concurrent": 1}}},
    )
    service = ExecutionService(PolicyEngine(policy), broker, broker.audit)
    gate = Gate()
    fake.handler = held(gate)
    results: list[ExecResult] = []

    async def hold(who: str) -> None:
        results.append(await service.execute(Principal(who, tenant="acme"), "execute_bash", "hold"))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(hold, "a")
        tasks.start_soon(hold, "b")
        await until(lambda: fake.active == 2, what="two held calls")
        with pytest.raises(QuotaExceeded) as refused:
            await service.execute(Principal("c", tenant="acme"), "execute_bash", "true")
        assert refused.value.code == "tenant-concurrency-quota"
        assert broker.sandbox_of(Principal("c", tenant="acme")) is None, "refused before the broker"
        other = await service.execute(Principal("c", tenant="globex"), "execute_bash", "free")
        assert other.stdout == "free\n", "another tenant has its own budget"
        gate.open()
    assert len(results) == 2
    (budget,) = events(sink, "budget.refused")
    assert budget["limits"]["limit"] == "tenant-concurrency" and budget["actor"]["tenant"] == "acme"
    assert budget["detail"]["cap"] == 2
    # Freed again: the same principal gets in.
    assert (await service.execute(Principal("c", tenant="acme"), "execute_bash", "now")).stdout == "now\n"


@pytest.mark.parametrize("enforced", [True, False])
async def test_the_request_rate_is_applied_after_the_decision(
    broker: Broker, fake: FakeBackend, sink: MemorySink, enforced: bool
) -> None:
    engine = PolicyEngine(make_policy(default={"rate_limits": {"requests": "2/minute"}}))
    service = ExecutionService(engine, broker, broker.audit, enforce_request_rate=enforced)
    await service.execute(ALICE, "execute_bash", "1")
    await service.execute(ALICE, "execute_bash", "2")
    if not enforced:  # the HTTP front door counts requests itself
        await service.execute(ALICE, "execute_bash", "3")
        return
    with pytest.raises(QuotaExceeded) as refused:
        await service.execute(ALICE, "execute_bash", "3")
    assert refused.value.code == "rate-limited"
    assert [c.code for c in fake.ran("bash")] == ["1", "2"]
    (hit,) = events(sink, "ratelimit.hit")
    assert hit["limits"]["limit"] == "requests" and hit["actor"]["principal"] == "alice"
    assert (await service.execute(Principal("bob"), "execute_bash", "4")).exit_code == 0


# -- results ------------------------------------------------------------------------------------


async def test_output_over_the_cap_is_cut_and_counted(
    broker: Broker, fake: FakeBackend, sink: MemorySink, exec_path: str
) -> None:
    service = service_for(broker, exec_path, exec={"max_output_bytes": "1k"})
    fake.handler = lambda command: Reply(stdout=b"y\n" * 2500, stderr=b"done\n")
    result = await service.execute(ALICE, "execute_bash", "yes | head -c 5000; echo done >&2")
    assert result.truncated and len(result.stdout) == 1024 and result.stderr == "done\n"
    (finish,) = events(sink, "exec.finish")
    assert finish["outcome"]["stdout_bytes"] == 5000 and finish["outcome"]["truncated"] is True


async def test_a_deadline_reads_as_timed_out(
    service: ExecutionService, fake: FakeBackend, sink: MemorySink
) -> None:
    fake.handler = lambda command: Reply(exit_code=None, stdout=b"before\n", deadline_hit=True)
    result = await service.execute(ALICE, "execute_bash", "echo before; sleep 999", timeout_s=2)
    assert result.timed_out and result.exit_code is None and result.stdout == "before\n"
    assert fake.ran("bash")[0].timeout_s == 2, "the call's own timeout bounds the command"
    (finish,) = events(sink, "exec.finish")
    assert finish["outcome"]["timed_out"] is True


async def test_a_replaced_sandbox_and_an_oom_kill_reach_the_result(
    service: ExecutionService, broker: Broker, fake: FakeBackend
) -> None:
    await service.execute(ALICE, "execute_bash", "true")
    sandbox = broker.sandbox_of(ALICE)
    assert sandbox is not None
    fake.vanish(sandbox.container_id)
    fake.handler = lambda command: Reply(exit_code=137, oom_kill=True)
    result = await service.execute(ALICE, "execute_python", "x = bytearray(2 * 1024**3)")
    assert result.sandbox_replaced and result.oom_killed and result.exit_code == 137
    assert fake.ran("python")[0].code == "x = bytearray(2 * 1024**3)"


# -- files --------------------------------------------------------------------------------------


async def test_files_written_are_read_and_listed_in_the_principals_own_workspace(
    service: ExecutionService, fake: FakeBackend, sink: MemorySink
) -> None:
    written = await service.write_file(ALICE, "notes/a.txt", "héllo")
    assert (written.path, written.size) == ("/workspace/notes/a.txt", 6)
    binary = await service.write_file(
        ALICE, "/workspace/b.bin", base64.b64encode(b"\x00\xff").decode(), "base64"
    )
    assert binary.size == 2
    read = await service.read_file(ALICE, "notes/a.txt")
    assert (read.content, read.size, read.truncated, read.encoding) == ("héllo", 6, False, "utf-8")
    cut = await service.read_file(ALICE, "b.bin", "base64", max_bytes=1)
    assert (base64.b64decode(cut.content), cut.truncated) == (b"\x00", True)
    listing = await service.list_files(ALICE)
    assert [(e.name, e.type) for e in listing.entries] == [("b.bin", "file"), ("notes", "dir")]
    with pytest.raises(FileError) as missing:
        await service.read_file(Principal("bob", tenant="acme"), "notes/a.txt")
    assert missing.value.code == "not-found", "bob's workspace is his own"
    finishes = [(e["outcome"]["status"], e["tool"]) for e in events(sink, "file.finish")]
    assert finishes[:5] == [
        ("ok", "write_file"),
        ("ok", "write_file"),
        ("ok", "read_file"),
        ("ok", "read_file"),
        ("ok", "list_files"),
    ]
    assert finishes[5] == ("error", "read_file")


async def test_a_path_outside_the_workspace_is_a_refusal(service: ExecutionService, sink: MemorySink) -> None:
    for path in ("/etc/passwd", "../etc/passwd"):
        with pytest.raises(FileError) as refused:
            await service.read_file(ALICE, path)
        assert refused.value.code == "path-outside-workspace"
    finishes = events(sink, "file.finish")
    assert [(e["outcome"]["status"], e["outcome"]["error"]) for e in finishes] == [
        ("rejected", "path-outside-workspace")
    ] * 2
    assert finishes[0]["detail"]["path"] == "/etc/passwd"


# -- info, reset, admin -------------------------------------------------------------------------


async def test_info_tells_the_profile_and_whether_the_sandbox_is_up_to_date(
    broker: Broker, fake: FakeBackend
) -> None:
    service = service_for(broker)
    before = await service.info(ALICE)
    assert before.profile == "default" and before.sandbox is None and before.tenant == "acme"
    assert before.memory_bytes == 512 * 1024**2 and before.max_timeout_s == 30
    await service.execute(ALICE, "execute_bash", "true")
    sandbox = broker.sandbox_of(ALICE)
    assert sandbox is not None
    now = await service.info(ALICE)
    assert now.sandbox is not None and now.sandbox.up_to_date
    assert now.sandbox.container_id == sandbox.container_id[:12]
    assert 0 < now.sandbox.idle_expires_in_s <= 1800

    service.replace_engine(PolicyEngine(make_policy(default={"sandbox": {"pids_limit": 64}})))
    stale = await service.info(ALICE)
    assert stale.sandbox is not None and not stale.sandbox.up_to_date
    assert stale.pids_limit == 64
    assert len(fake.containers()) == 1, "info creates nothing"


async def test_reset_removes_the_callers_sandbox_only(
    service: ExecutionService, broker: Broker, fake: FakeBackend, sink: MemorySink
) -> None:
    bob = Principal("bob", tenant="acme")
    await service.execute(ALICE, "execute_bash", "true")
    await service.execute(bob, "execute_bash", "true")
    alice_box = broker.sandbox_of(ALICE)
    assert alice_box is not None
    assert (await service.reset(ALICE)).reset
    assert not (await service.reset(ALICE)).reset, "nothing left to reset"
    assert broker.sandbox_of(ALICE) is None and broker.sandbox_of(bob) is not None
    assert removal_reasons(sink) == {alice_box.container_id: "reset"}


async def test_admins_see_and_remove_their_own_tenants_sandboxes_only(
    service: ExecutionService, broker: Broker, sink: MemorySink
) -> None:
    admin = Principal("ops", tenant="acme", profile="tenant-admin")
    await service.execute(Principal("bob", tenant="acme"), "execute_bash", "true")
    await service.execute(Principal("bob", tenant="globex"), "execute_bash", "true")
    listed = await service.admin_list(admin)
    assert listed.tenant == "acme" and [s.principal for s in listed.sandboxes] == ["bob"]

    assert (await service.admin_remove(admin, "bob")).reset
    assert broker.sandbox_of(Principal("bob", tenant="acme")) is None
    assert broker.sandbox_of(Principal("bob", tenant="globex")) is not None, "never another tenant's"
    (event,) = events(sink, "sandbox.admin_remove")
    assert event["detail"]["target_principal"] == "bob" and event["actor"]["principal"] == "ops"

    with pytest.raises(PolicyDenied) as denied:
        await service.admin_list(Principal("bob", tenant="acme"))
    assert denied.value.code == "tool-not-allowed"


async def test_a_policy_reload_retires_a_pool_that_is_no_longer_wanted(
    broker: Broker, fake: FakeBackend, sink: MemorySink
) -> None:
    service = service_for(broker, lifecycle={"warm_pool": 1})
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(broker.maintain_pool)
        await until(lambda: len(broker.pool.sandboxes) == 1, what="the pool")
        (pooled,) = broker.pool.sandboxes
        service.replace_engine(PolicyEngine(make_policy(default={"lifecycle": {"warm_pool": 0}})))
        await until(lambda: fake.containers() == [], what="the pool to be retired")
        tasks.cancel_scope.cancel()
    assert removal_reasons(sink)[pooled.container_id] == "pool-retired"
