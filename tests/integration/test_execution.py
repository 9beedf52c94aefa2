"""Running code under limits on the real engine: timeouts, output caps, faults, concurrency, spans, audit."""

from __future__ import annotations

from collections.abc import Mapping

import anyio
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util.types import AnyValue

from audit import AuditLog, MemorySink
from gateway.backend.docker_engine import DockerBackend
from gateway.calls.service import ExecutionService
from gateway.errors import InvalidArgument, PolicyDenied, QuotaExceeded
from gateway.sandboxes.broker import Broker
from policy import Principal, load_policy, load_policy_text
from policy.engine import PolicyEngine
from tests.conftest import FIRST_CALL_SPANS, FIRST_CALL_SPANS_EXEC, policy_with_exec_path
from tests.support import audit_events
from tests.support.sandboxes import sandbox_of

pytestmark = pytest.mark.anyio
ALICE = Principal("alice")


@pytest.fixture
def service(broker: Broker, audit_sink: MemorySink, exec_path: str) -> ExecutionService:
    """Every test of this module runs on both exec paths (agent and `docker exec`)."""
    return ExecutionService(PolicyEngine(policy_with_exec_path(exec_path)), broker, broker.audit)


def attributes(span: ReadableSpan) -> Mapping[str, AnyValue]:
    assert span.attributes is not None, span.name
    return span.attributes


async def test_files_persist_between_calls_of_one_principal(service: ExecutionService) -> None:
    await service.execute(ALICE, "execute_bash", "echo kept > /workspace/note")
    result = await service.execute(ALICE, "execute_python", "print(open('/workspace/note').read().strip())")
    assert result.stdout == "kept\n"


async def test_principals_do_not_share_sandboxes(service: ExecutionService) -> None:
    await service.execute(ALICE, "execute_bash", "echo mine > /workspace/secret")
    result = await service.execute(Principal("bob"), "execute_bash", "cat /workspace/secret")
    assert result.exit_code == 1
    assert "No such file" in result.stderr


async def test_sleep_past_the_timeout_is_stopped_and_the_sandbox_survives(service: ExecutionService) -> None:
    result = await service.execute(ALICE, "execute_bash", "echo before; sleep 999", timeout_s=2)
    assert result.timed_out
    assert result.stdout == "before\n"
    assert 2000 <= result.duration_ms < 9000
    again = await service.execute(ALICE, "execute_bash", "echo alive")
    assert (again.exit_code, again.stdout, again.timed_out) == (0, "alive\n", False)


async def test_a_process_ignoring_sigterm_is_killed(service: ExecutionService) -> None:
    result = await service.execute(ALICE, "execute_bash", "trap '' TERM; sleep 999", timeout_s=1)
    assert result.timed_out
    assert result.exit_code == 137


async def test_background_children_die_with_the_command(service: ExecutionService) -> None:
    await service.execute(ALICE, "execute_bash", "sleep 900 & sleep 901 & sleep 999", timeout_s=1)
    result = await service.execute(ALICE, "execute_bash", "ps -eo args | grep -c '^sleep 9' || true")
    assert result.stdout == "0\n"


async def test_flooding_output_is_capped_and_flagged(
    service: ExecutionService, audit_sink: MemorySink
) -> None:
    result = await service.execute(ALICE, "execute_bash", "yes | head -c 5000000; echo done >&2")
    assert result.truncated
    assert len(result.stdout.encode()) == 1024 * 1024
    assert result.stderr == "done\n"
    service.audit.flush()  # exec.finish is written off the call's path
    finish = audit_events(audit_sink, "exec.finish")[-1]
    assert finish["outcome"]["stdout_bytes"] == 5_000_000


async def test_yes_until_the_timeout_keeps_gateway_memory_bounded(service: ExecutionService) -> None:
    result = await service.execute(ALICE, "execute_bash", "yes", timeout_s=2)
    assert result.timed_out and result.truncated
    assert len(result.stdout) == 1024 * 1024


async def test_a_command_that_kills_its_own_shell(service: ExecutionService) -> None:
    result = await service.execute(ALICE, "execute_bash", "kill -9 $$")
    assert result.exit_code == 137 and not result.timed_out
    assert (await service.execute(ALICE, "execute_bash", "echo fine")).stdout == "fine\n"


async def test_code_cannot_kill_its_own_sandbox(service: ExecutionService, broker: Broker) -> None:
    await service.execute(ALICE, "execute_bash", "echo kept > /workspace/f; sleep 300 & kill -9 -1")
    container = sandbox_of(broker, ALICE).container_id
    result = await service.execute(
        ALICE, "execute_bash", "cat /workspace/f; pgrep -u 1000 -x sleep || echo none"
    )
    assert result.stdout == "kept\nnone\n", "the sandbox survived; only the caller's own processes died"
    assert sandbox_of(broker, ALICE).container_id == container


async def test_a_sandbox_killed_from_outside_is_replaced(
    service: ExecutionService, broker: Broker, backend: DockerBackend
) -> None:
    await service.execute(ALICE, "execute_bash", "true")
    sandbox = sandbox_of(broker, ALICE)
    await anyio.to_thread.run_sync(backend.remove, sandbox.container_id)
    result = await service.execute(ALICE, "execute_bash", "echo new")
    assert result.stdout == "new\n"
    assert result.sandbox_replaced, "the call says its sandbox is a new one"
    assert sandbox_of(broker, ALICE).container_id != sandbox.container_id
    again = await service.execute(ALICE, "execute_bash", "true")
    assert not again.sandbox_replaced


@pytest.mark.parametrize(
    ("code", "error"),
    [
        pytest.param("", InvalidArgument, id="empty"),
        pytest.param("   \n", InvalidArgument, id="blank"),
        pytest.param(42, InvalidArgument, id="not-a-string"),
        pytest.param("echo \x00", InvalidArgument, id="nul-byte"),
    ],
)
async def test_bad_input_is_refused_before_anything_runs(
    service: ExecutionService, broker: Broker, code: object, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await service.execute(ALICE, "execute_bash", code)
    assert broker.sandbox_of(ALICE) is None


async def test_denied_calls_create_nothing_and_are_audited(
    service: ExecutionService, broker: Broker, audit_sink: MemorySink
) -> None:
    with pytest.raises(PolicyDenied) as info:
        await service.execute(ALICE, "execute_bash", "true", timeout_s=3600)
    assert info.value.code == "timeout-above-max"
    assert broker.sandbox_of(ALICE) is None
    decision = audit_events(audit_sink, "policy.decision")[-1]
    assert decision["decision"]["result"] == "deny"
    assert decision["decision"]["reasons"] == ["timeout-above-max"]
    assert decision["policy_digest"] == service.engine.digest


async def test_concurrent_calls_of_one_principal_are_safe_and_bounded(broker: Broker) -> None:
    text = load_policy().model_dump(mode="json")
    text["profiles"]["default"]["exec"]["max_concurrent"] = 2
    import yaml

    service = ExecutionService(PolicyEngine(load_policy_text(yaml.safe_dump(text))), broker, broker.audit)
    outcomes: list[object] = []

    async def one(i: int) -> None:
        try:
            outcomes.append(await service.execute(ALICE, "execute_bash", f"sleep 1; echo {i}"))
        except QuotaExceeded as exc:
            outcomes.append(exc)

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(one, i)
    done = [o for o in outcomes if not isinstance(o, Exception)]
    refused = [o for o in outcomes if isinstance(o, QuotaExceeded)]
    assert len(done) == 2 and len(refused) == 2
    assert all(r.code == "concurrent-exec-quota" for r in refused)
    assert (
        len(
            await anyio.to_thread.run_sync(
                broker.backend.list, {"sandbox-gateway.gateway": broker.gateway_id}
            )
        )
        == 1
    )


async def test_every_docker_operation_has_a_span_and_an_audit_event(
    service: ExecutionService, span_exporter: InMemorySpanExporter, audit_sink: MemorySink, exec_path: str
) -> None:
    span_exporter.clear()
    await service.execute(Principal("traced"), "execute_bash", "true")
    spans = {s.name: s for s in span_exporter.get_finished_spans()}
    assert set(spans) == (FIRST_CALL_SPANS if exec_path == "agent" else FIRST_CALL_SPANS_EXEC)
    assert attributes(spans["docker.exec"])["sandbox_gateway.exec_path"] == exec_path
    if exec_path == "exec":
        for child in ("docker.exec_create", "docker.exec_start", "docker.exec_stream", "docker.exec_inspect"):
            parent, exec_span = spans[child].parent, spans["docker.exec"].context
            assert parent is not None and exec_span is not None and parent.span_id == exec_span.span_id
    container = attributes(spans["docker.exec"])["sandbox_gateway.container_id"]
    assert attributes(spans["docker.create"])["sandbox_gateway.container_id"] == container
    assert attributes(spans["docker.exec"])["sandbox_gateway.principal"] == "traced"
    service.audit.flush()  # docker.exec and exec.finish are written off the call's path
    kinds = [e["event"] for e in audit_events(audit_sink)]
    for op in (
        "docker.list",
        "docker.create",
        "docker.start",
        "docker.exec",
        *(["docker.attach"] if exec_path == "agent" else []),
        "policy.decision",
        "exec.start",
        "exec.finish",
        "sandbox.create",
    ):
        assert op in kinds
    finish = audit_events(audit_sink, "exec.finish")[-1]
    assert finish["actor"]["principal"] == "traced" and finish["tool"] == "execute_bash"
    assert finish["outcome"]["exit_code"] == 0 and finish["request_id"]


async def test_fail_closed_audit_refuses_before_anything_runs(broker: Broker) -> None:
    from audit import AuditWriteError

    sink = MemorySink()
    sink.fail = True
    service = ExecutionService(PolicyEngine(load_policy()), broker, AuditLog([sink]))
    with pytest.raises(AuditWriteError):
        await service.execute(ALICE, "execute_bash", "touch /workspace/x")
    assert broker.sandbox_of(ALICE) is None


async def test_a_sandbox_killed_by_the_engine_is_replaced(
    service: ExecutionService, broker: Broker, backend: DockerBackend
) -> None:
    await service.execute(ALICE, "execute_bash", "true")
    sandbox = sandbox_of(broker, ALICE)
    await anyio.to_thread.run_sync(backend._api.kill, sandbox.container_id)
    result = await service.execute(ALICE, "execute_bash", "echo replaced")
    assert result.stdout == "replaced\n"
    assert sandbox_of(broker, ALICE).container_id != sandbox.container_id


async def test_a_memory_bomb_is_reported_as_oom_killed(
    service: ExecutionService, audit_sink: MemorySink
) -> None:
    result = await service.execute(ALICE, "execute_python", "x = bytearray(2 * 1024**3)")
    assert result.exit_code == 137 and result.oom_killed and not result.timed_out
    assert (await service.execute(ALICE, "execute_bash", "echo after")).stdout == "after\n"
    plain_kill = await service.execute(ALICE, "execute_bash", "kill -9 $$")
    assert plain_kill.exit_code == 137 and not plain_kill.oom_killed
    service.audit.flush()
    finish = audit_events(audit_sink, "exec.finish")
    assert [e["outcome"]["oom_killed"] for e in finish] == [True, False, False]


async def test_long_commands_report_their_output_so_far(service: ExecutionService) -> None:
    reports: list[tuple[float, str]] = []

    async def progress(output_bytes: float, latest: str) -> None:
        reports.append((output_bytes, latest))

    command = "for i in 1 2 3; do echo step $i; sleep 1.3; done"
    result = await service.execute(ALICE, "execute_bash", command, timeout_s=10, on_progress=progress)
    assert result.stdout == "step 1\nstep 2\nstep 3\n"
    assert len(reports) >= 2, reports
    assert reports[0][1].startswith("step 1\n")
    assert [r[0] for r in reports] == sorted({r[0] for r in reports}), "only new output is reported"
    assert reports[-1][1].endswith("step 3\n") or reports[-1][1].endswith("step 2\n")


async def test_a_quiet_command_sends_no_progress(service: ExecutionService) -> None:
    reports: list[tuple[float, str]] = []

    async def progress(output_bytes: float, latest: str) -> None:
        reports.append((output_bytes, latest))

    result = await service.execute(ALICE, "execute_bash", "sleep 1.5", timeout_s=10, on_progress=progress)
    assert result.exit_code == 0 and reports == []
