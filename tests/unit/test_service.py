"""ExecutionService on the in-memory backend: policy first (a denial never reaches the backend, and is
audited), the audit trail of a call, refused arguments with clear codes, tenant budgets, the
request rate, results as the client sees them, and the file and admin calls."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from audit import AuditLog, AuditWriteError, MemorySink
from gateway.auth.tokens import TokenStore
from gateway.calls.results import ExecResult
from gateway.calls.service import ExecutionService
from gateway.cli import main
from gateway.errors import EngineError, FileError, InvalidArgument, PolicyDenied, QuotaExceeded, SandboxError
from gateway.sandboxes.broker import Broker
from policy import Principal, load_policy
from policy.engine import PolicyEngine
from tests.unit.broker_support import events, make_policy, removal_reasons, until
from tests.unit.fake_backend import FakeBackend, Gate, Reply, held

pytestmark = pytest.mark.anyio
ALICE = Principal("alice", tenant="acme")
ADMIN = Principal("ops", tenant="acme", profile="tenant-admin")


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

    service.audit.flush()  # exec.finish and docker.exec are written off the call's path
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
    service.audit.flush()
    (finish,) = events(sink, "exec.finish")
    assert finish["outcome"]["stdout_bytes"] == 5000 and finish["outcome"]["truncated"] is True


async def test_a_deadline_reads_as_timed_out(
    service: ExecutionService, fake: FakeBackend, sink: MemorySink
) -> None:
    fake.handler = lambda command: Reply(exit_code=None, stdout=b"before\n", deadline_hit=True)
    result = await service.execute(ALICE, "execute_bash", "echo before; sleep 999", timeout_s=2)
    assert result.timed_out and result.exit_code is None and result.stdout == "before\n"
    assert fake.ran("bash")[0].timeout_s == 2, "the call's own timeout bounds the command"
    service.audit.flush()
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


# -- admin_policy -------------------------------------------------------------------------------


def directory(tmp_path: Path) -> TokenStore:
    """Credentials of two tenants: dana (data-science) and sam (strict) in acme, bob in globex."""
    store = TokenStore(tmp_path / "tokens.jsonl")
    store.create("dana", profile="data-science", tenant="acme")
    store.create("sam", profile="strict", tenant="acme")
    store.create("bob", profile="default", tenant="globex")
    return store


async def test_admin_policy_shows_the_policy_in_force_and_each_profiles_limits(
    broker: Broker, fake: FakeBackend, sink: MemorySink
) -> None:
    engine = PolicyEngine(make_policy())
    service = ExecutionService(engine, broker, broker.audit)
    seen = await service.admin_policy(ADMIN)
    assert seen.tenant == "acme" and seen.policy_digest == engine.digest and seen.decision is None
    profiles = {p.name: p for p in seen.profiles}
    assert set(profiles) == set(engine.policy.profiles)
    assert profiles["default"].exec.max_timeout_s == 30 and profiles["default"].rate_limits.requests
    assert (
        profiles["strict"].sandbox.runtime == "runsc"
        and profiles["strict"].sandbox.memory_bytes == 256 * 1024**2
    )
    assert profiles["strict"].lifecycle.idle_ttl_s == 600, "extends resolved: the effective values"
    assert (
        "admin_policy" in profiles["tenant-admin"].tools and "admin_policy" not in profiles["default"].tools
    )
    (decision,) = events(sink, "policy.decision")
    assert decision["actor"]["principal"] == "ops" and decision["tool"] == "admin_policy"
    assert decision["decision"]["result"] == "allow"
    assert fake.calls == [] and fake.containers() == [], "nothing runs, nothing is made"


async def test_admin_policy_explains_principals_of_the_callers_tenant_only(
    broker: Broker, sink: MemorySink, tmp_path: Path
) -> None:
    service = ExecutionService(
        PolicyEngine(make_policy()), broker, broker.audit, principals=directory(tmp_path)
    )
    dana = (await service.admin_policy(ADMIN, "dana", "execute_python")).decision
    assert dana is not None and dana.allowed and (dana.tenant, dana.profile) == ("acme", "data-science")
    assert dana.effective is not None and dana.effective.timeout_s == 120
    assert dana.effective.sandbox.memory == 4 * 1024**3
    sam = (await service.admin_policy(ADMIN, "sam", "execute_bash")).decision
    assert sam is not None and not sam.allowed and sam.effective is None
    assert (sam.reasons, sam.rule_ids) == (["tool-not-allowed"], ["profiles.strict.tools"])
    assert "not allowed for profile 'strict'" in sam.message
    itself = (await service.admin_policy(ADMIN, "ops", "admin_policy")).decision
    assert itself is not None and itself.allowed and itself.profile == "tenant-admin"

    with pytest.raises(InvalidArgument) as refused:
        await service.admin_policy(ADMIN, "bob", "execute_bash")
    assert "no active credential in your tenant 'acme'" in refused.value.message
    assert "globex" not in refused.value.message, "another tenant's principals are not even named"
    (rejected,) = events(sink, "tool.rejected")
    assert rejected["tool"] == "admin_policy" and rejected["outcome"]["error"] == "invalid-argument"
    assert [e["actor"]["principal"] for e in events(sink, "policy.decision")] == ["ops"] * 4


async def test_admin_policy_without_a_directory_explains_only_the_caller(broker: Broker) -> None:
    service = ExecutionService(PolicyEngine(make_policy()), broker, broker.audit)
    itself = (await service.admin_policy(ADMIN, "ops", "execute_bash")).decision
    assert itself is not None and itself.allowed
    with pytest.raises(InvalidArgument):
        await service.admin_policy(ADMIN, "dana", "execute_bash")


async def test_admin_policy_explains_as_policy_explain_prints(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = directory(tmp_path)
    service = ExecutionService(PolicyEngine(load_policy()), broker, broker.audit, principals=store)
    for name, tool in (("dana", "execute_python"), ("sam", "write_file")):
        seen = await service.admin_policy(ADMIN, name, tool)
        assert seen.decision is not None
        main(["policy", "explain", "--principal", name, "--tool", tool, "--tokens", str(store.path)])
        printed = json.loads(capsys.readouterr().out)
        answered = {k: v for k, v in seen.decision.model_dump(mode="json").items() if v is not None}
        assert answered == printed, "the CLI leaves out `effective` when the call is denied"


@pytest.mark.parametrize(
    ("principal", "tool", "message"),
    [
        pytest.param("dana", None, "both", id="principal-only"),
        pytest.param(None, "execute_bash", "both", id="tool-only"),
        pytest.param("not a name", "execute_bash", "principal must be", id="principal-spelling"),
        pytest.param(7, "execute_bash", "principal must be", id="principal-type"),
        pytest.param("dana", "rm_rf", "tool must be one of", id="unknown-tool"),
    ],
)
async def test_admin_policy_refuses_bad_arguments_before_deciding(
    broker: Broker, sink: MemorySink, principal: object, tool: object, message: str
) -> None:
    service = ExecutionService(PolicyEngine(make_policy()), broker, broker.audit)
    with pytest.raises(InvalidArgument) as refused:
        await service.admin_policy(ADMIN, principal, tool)
    assert message in refused.value.message
    assert events(sink, "policy.decision") == []
    (rejected,) = events(sink, "tool.rejected")
    assert rejected["tool"] == "admin_policy" and rejected["detail"]["message"] == refused.value.message


async def test_admin_policy_needs_a_profile_that_lists_it(broker: Broker, sink: MemorySink) -> None:
    service = ExecutionService(PolicyEngine(make_policy()), broker, broker.audit)
    with pytest.raises(PolicyDenied) as denied:
        await service.admin_policy(ALICE, "alice", "execute_bash")
    assert denied.value.code == "tool-not-allowed"
    (decision,) = events(sink, "policy.decision")
    assert decision["decision"]["result"] == "deny"
