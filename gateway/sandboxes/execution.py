"""Running one command in a sandbox, and telling what became of the sandbox afterwards.

A SIGKILLed command is checked against the sandbox cgroup's OOM-kill counter; a command that ran
into its timeout is followed by killing whatever escaped its process group; a sandbox that died
during the call, or cannot even run that clean-up, is reported lost.
"""

from __future__ import annotations

import dataclasses
import re
import time

import anyio

from gateway.backend.base import ExecOutcome, ExecRequest, OutputCallback, ToolCallHandler, internal_request
from gateway.backend.interpreter_results import PythonOutcome, PythonRequest
from gateway.backend.ops import DockerOps
from gateway.errors import AgentBroken, GatewayError, InterpreterBusy, PolicyDenied
from gateway.sandboxes.model import Sandbox
from policy import Allowed, Decision

__all__ = ["SIGKILLED", "Execution", "Outcome", "Request", "allowed"]

#: What runs in a sandbox: a command, or run_python code in its interpreter; and what comes back.
Request = ExecRequest | PythonRequest
Outcome = ExecOutcome | PythonOutcome
#: How an interpreter that the agent itself ended (at the call's end) leaves strays to kill.
_KILLED_BY_AGENT = frozenset({"killed-after-timeout", "deadline"})
#: The least time a run_python call gets after waiting for the one before it; less is refused.
_LEAST_S = 0.5

SIGKILLED = 128 + 9
_OOM_KILL = re.compile(r"^oom_kill (\d+)$", re.MULTILINE)
_OOM_FILES = ["/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"]


class Execution:
    """Commands in sandboxes, each a span and an audit event (`docker.exec`)."""

    def __init__(self, ops: DockerOps) -> None:
        self._ops = ops

    @staticmethod
    def command(
        grant: Allowed, argv: list[str], env: list[str], tool_calls: ToolCallHandler | None
    ) -> ExecRequest:
        """A command under the grant's exec limits; `tool_calls` serves its code-mode calls."""
        return ExecRequest(
            argv=argv,
            workdir=grant.spec.workdir,
            env=env,
            timeout_s=grant.timeout_s,
            max_output_bytes=grant.limits.max_output_bytes,
            tool_calls=tool_calls,
        )

    @staticmethod
    def python(grant: Allowed, code: str, env: list[str]) -> PythonRequest:
        """run_python `code` under the grant's exec limits and its profile's interpreter bounds."""
        bounds = grant.interpreter
        return PythonRequest(
            code=code,
            workdir=grant.spec.workdir,
            env=env,
            timeout_s=grant.timeout_s,
            max_output_bytes=grant.limits.max_output_bytes,
            interrupt_grace_s=bounds.interrupt_grace_s,
            idle_timeout_s=bounds.idle_timeout_s,
            caps=bounds.caps(),
        )

    async def run(
        self, sandbox: Sandbox, request: Request, on_output: OutputCallback | None = None, **attrs: str
    ) -> Outcome:
        """One command through the sandbox's executor, as the sandbox's own uid; or one run_python
        call in its interpreter, after the calls before it (InterpreterBusy if they hold it longer
        than this call's timeout)."""
        executor = sandbox.executor
        where = {"container_id": sandbox.container_id, "exec_path": executor.path, **attrs}
        if isinstance(request, ExecRequest):
            request = dataclasses.replace(request, user=sandbox.user)
            return await self._ops.timed("exec", executor.run, request, on_output, **where)
        got, started = True, time.monotonic()
        try:
            sandbox.interpreter_lock.acquire_nowait()
        except anyio.WouldBlock:
            got = False
            with anyio.move_on_after(max(0.0, request.timeout_s - _LEAST_S)):
                await sandbox.interpreter_lock.acquire()
                got = True
        waited = time.monotonic() - started if got else 0.0
        if not got:
            raise InterpreterBusy(
                f"your earlier run_python call still runs after this call's {request.timeout_s:g} s timeout"
            )
        try:  # the wait is part of the call's own timeout
            left = min(request.timeout_s, max(request.timeout_s - waited, _LEAST_S))
            request = dataclasses.replace(request, timeout_s=left)
            outcome = await self._ops.timed("python", executor.run_python, request, on_output, **where)
            outcome = dataclasses.replace(outcome, container_id=sandbox.container_id)
            if not outcome.sandbox_lost:  # its clean-up, before the next call may start an interpreter
                outcome = await self._python_verdict(sandbox, outcome)
        finally:
            sandbox.interpreter_lock.release()
        return outcome

    async def verdict(self, sandbox: Sandbox, request: Request, outcome: Outcome) -> tuple[Outcome, bool]:
        """What the call did to its sandbox: (the outcome, marked OOM-killed where the kernel did it;
        whether the sandbox is unusable now and must be replaced)."""
        if isinstance(outcome, PythonOutcome):  # judged in `run`, under the interpreter's lock
            return outcome, outcome.sandbox_unusable
        if outcome.exit_code == SIGKILLED:
            outcome = await self._with_oom_verdict(sandbox, outcome)
        if outcome.deadline_hit or outcome.duration_ms >= request.timeout_s * 1000:
            return outcome, not await self._reap_strays(sandbox)
        return outcome, False

    async def _python_verdict(self, sandbox: Sandbox, outcome: PythonOutcome) -> PythonOutcome:
        """The agent tells whether the OOM killer ended the interpreter (and the sandbox's count,
        the baseline of the commands' own check); one the agent killed may have left strays."""
        if outcome.oom_kills is not None:
            sandbox.oom_kills = outcome.oom_kills
        end, previous = outcome.end, outcome.previous_end
        outcome = dataclasses.replace(
            outcome,
            oom_killed=end is not None and end.oom,
            previous_oom=previous is not None and previous.oom,
        )
        if outcome.deadline_hit or (end is not None and end.reason in _KILLED_BY_AGENT):
            return dataclasses.replace(outcome, sandbox_unusable=not await self._reap_strays(sandbox))
        return outcome

    async def _reap_strays(self, sandbox: Sandbox) -> bool:
        """After a timeout, kill what escaped the command's process group (a fork bomb's stragglers,
        setsid'd children): every process of the sandbox's uid. PID 1 is out of reach of that
        signal. False when even that could not run (no pid left): the sandbox is unusable."""
        executor = sandbox.executor
        try:
            code = await self._ops.timed(
                "exec",
                executor.reap,
                container_id=sandbox.container_id,
                exec_path=executor.path,
                purpose="reap-strays",
            )
        except GatewayError:
            code = None
        # kill -1 exits 1 when it found nothing to kill, 0 when it killed something.
        return code in (0, 1)

    async def _with_oom_verdict(self, sandbox: Sandbox, outcome: ExecOutcome) -> ExecOutcome:
        """A SIGKILLed call: ask the sandbox's cgroup whether the OOM killer did it."""
        try:
            count = await self.oom_count(sandbox)
        except GatewayError:
            return outcome
        if count is None or count <= sandbox.oom_kills:
            return outcome
        sandbox.oom_kills = count
        return dataclasses.replace(outcome, oom_killed=True)

    async def oom_count(self, sandbox: Sandbox) -> int | None:
        """The sandbox cgroup's OOM-kill counter (cgroup v2 or v1), or None where it cannot be read."""
        outcome = await self.run(sandbox, internal_request(["cat", *_OOM_FILES], 4096), purpose="oom-check")
        match = _OOM_KILL.search(outcome.stdout.decode(errors="replace"))
        return int(match.group(1)) if match else None

    async def oom_baseline(self, sandbox: Sandbox) -> None:
        """Count the OOM kills so far (an adopted sandbox's earlier ones are not a later call's)."""
        try:
            sandbox.oom_kills = await self.oom_count(sandbox) or 0
        except GatewayError:
            return


def allowed(decision: Decision) -> Allowed:
    """Nothing reaches Docker without an allowed Decision (checked here too, not only by type)."""
    if not isinstance(decision, Allowed):
        raise PolicyDenied("no allowed decision for this call", code="not-allowed")
    return decision


def connection_broke() -> AgentBroken:
    """The stream to a still-running sandbox broke during a call: its result is unknown."""
    return AgentBroken(
        "the connection to the sandbox broke off during the call (engine or socket proxy restarted?); "
        "the command's result is unknown"
    )
