"""Running one command in a sandbox, and telling what became of the sandbox afterwards.

A SIGKILLed command is checked against the sandbox cgroup's OOM-kill counter; a command that ran
into its timeout is followed by killing whatever escaped its process group; a sandbox that died
during the call, or cannot even run that clean-up, is reported lost.
"""

from __future__ import annotations

import dataclasses
import re

from gateway.backend.base import ExecOutcome, ExecRequest, OutputCallback, internal_request
from gateway.backend.ops import DockerOps
from gateway.errors import AgentBroken, GatewayError
from gateway.sandboxes.model import Sandbox

__all__ = ["SIGKILLED", "Execution"]

SIGKILLED = 128 + 9
_OOM_KILL = re.compile(r"^oom_kill (\d+)$", re.MULTILINE)
_OOM_FILES = ["/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"]


class Execution:
    """Commands in sandboxes, each a span and an audit event (`docker.exec`)."""

    def __init__(self, ops: DockerOps) -> None:
        self._ops = ops

    async def run(
        self, sandbox: Sandbox, request: ExecRequest, on_output: OutputCallback | None = None, **attrs: str
    ) -> ExecOutcome:
        """One command through the sandbox's executor, as the sandbox's own uid."""
        request = dataclasses.replace(request, user=sandbox.user)
        executor = sandbox.executor
        return await self._ops.timed(
            "exec",
            executor.run,
            request,
            on_output,
            container_id=sandbox.container_id,
            exec_path=executor.path,
            **attrs,
        )

    async def verdict(
        self, sandbox: Sandbox, request: ExecRequest, outcome: ExecOutcome
    ) -> tuple[ExecOutcome, bool]:
        """What the call did to its sandbox: (the outcome, marked OOM-killed where the kernel did it;
        whether the sandbox is unusable now and must be replaced)."""
        if outcome.exit_code == SIGKILLED:
            outcome = await self._with_oom_verdict(sandbox, outcome)
        if outcome.deadline_hit or outcome.duration_ms >= request.timeout_s * 1000:
            return outcome, not await self._reap_strays(sandbox)
        return outcome, False

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


def connection_broke() -> AgentBroken:
    """The stream to a still-running sandbox broke during a call: its result is unknown."""
    return AgentBroken(
        "the connection to the sandbox broke off during the call (engine or socket proxy restarted?); "
        "the command's result is unknown"
    )
