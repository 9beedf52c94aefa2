"""run_python: code in the principal's long-lived interpreter, on the same path as every execution
(policy decision, request rate, tenant budget, `exec.start` and `exec.finish`, span).

Whether earlier variables are gone is told from two sides: the sandbox's agent knows how its
previous interpreter ended; the gateway remembers which sandbox held the principal's interpreter,
so a call in another sandbox (reset, expired, replaced) says the state was lost too.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from gateway.backend.base import OutputCallback
from gateway.backend.commands import MAX_ARGV_BYTES
from gateway.backend.interpreter_results import PythonOutcome
from gateway.calls.inputs import check_code
from gateway.calls.path import CallPath
from gateway.calls.progress import ProgressReport, with_progress
from gateway.calls.python_results import PythonFailure, PythonResult, describe, lost_reason
from gateway.errors import InvalidArgument
from gateway.sandboxes.model import principal_key
from policy import Action, Allowed, Principal

__all__ = ["PythonCalls"]

#: Principals whose interpreter's sandbox is remembered at most (the oldest are forgotten first;
#: a forgotten one's next call still says `new_interpreter`, only not why).
_REMEMBERED = 100_000


class PythonCalls(CallPath):
    """The run_python tool, on top of the call path."""

    #: principal -> (the sandbox its interpreter lives or lived in, how it ended if a call saw it end)
    _homes: OrderedDict[str, tuple[str, str | None]] | None = None

    def _home_of(self) -> OrderedDict[str, tuple[str, str | None]]:
        if self._homes is None:
            self._homes = OrderedDict()
        return self._homes

    async def run_python(
        self,
        principal: Principal,
        code: object,
        timeout_s: float | None = None,
        *,
        source_ip: str | None = None,
        on_progress: ProgressReport | None = None,
    ) -> tuple[PythonResult, PythonOutcome]:
        """Run `code` in the principal's interpreter; the result and the outcome it was made from."""
        async with self._request(principal, "run_python", source_ip):
            text = check_code(code, "code")
            size = len(text.encode())
            action = Action(tool="run_python", input_bytes=size, timeout_s=timeout_s)
            decision = self._decide(principal, action)
            if size > MAX_ARGV_BYTES:
                raise InvalidArgument(
                    f"code of {size} bytes is above the gateway's hard cap of {MAX_ARGV_BYTES}"
                )
            self.audit.emit(
                "exec.start",
                policy_digest=decision.policy_digest,
                timeout_s=decision.timeout_s,
                input_bytes=size,
                max_output_bytes=decision.limits.max_output_bytes,
                image=decision.image,
                code=text,
            )
            started = time.time()
            outcome = await self._run_recorded(principal, decision, text, on_progress)
            with self._end_recorded("run_python", decision):  # the result could not be made
                result = self._result(principal, outcome, started)
            self._python_finished(decision, outcome, result)
            return result, outcome

    async def _run_recorded(
        self, principal: Principal, decision: Allowed, text: str, on_progress: ProgressReport | None
    ) -> PythonOutcome:
        """The call; however it fails, its `exec.finish` is written."""

        async def run(on_output: OutputCallback | None) -> PythonOutcome:
            call = lambda: self.broker.run_python(principal, decision, text, on_output)  # noqa: E731
            return await self._budgeted(principal, decision, call)

        with self._end_recorded("run_python", decision):
            return await with_progress(on_progress, run)

    def _lost(self, key: str, outcome: PythonOutcome) -> str | None:
        """Why the variables of earlier calls are gone, or None when they are not (or there were none)."""
        homes = self._home_of()
        home, ended = homes.pop(key, (None, None))
        here = outcome.container_id
        homes[key] = (here, lost_reason(outcome.end, outcome.oom_killed) if outcome.end is not None else None)
        while len(homes) > _REMEMBERED:
            homes.popitem(last=False)
        if not outcome.new_interpreter:
            return None
        if outcome.previous_end is not None:  # as the call it ended in said, when the gateway saw that
            return (
                ended if home == here and ended else lost_reason(outcome.previous_end, outcome.previous_oom)
            )
        if home is not None and home != here:
            return "sandbox-replaced" if outcome.sandbox_replaced else "sandbox-removed"
        return None

    def _result(self, principal: Principal, outcome: PythonOutcome, started: float) -> PythonResult:
        reason = self._lost(principal_key(principal), outcome)
        error = outcome.error
        end = outcome.end
        return PythonResult(
            stdout=outcome.stdout.decode("utf-8", errors="replace"),
            stderr=outcome.stderr.decode("utf-8", errors="replace"),
            value=outcome.value,
            error=PythonFailure(type=error.type, message=error.message, traceback=error.traceback)
            if error is not None
            else None,
            outputs=describe(outcome),
            duration_ms=round(outcome.duration_ms, 2),
            truncated=outcome.truncated,
            timed_out=outcome.interrupted or outcome.deadline_hit,
            interrupted=outcome.interrupted and end is None,
            interpreter_killed=end is not None or outcome.sandbox_lost,
            oom_killed=outcome.oom_killed,
            new_interpreter=outcome.new_interpreter,
            state_lost=reason is not None,
            state_lost_reason=reason,
            memory_kb=outcome.memory_kb,
            sandbox_replaced=outcome.sandbox_replaced,
            egress_refused=self._egress_refused(principal, started),
            notes=list(outcome.refused),
        )

    def _python_finished(self, decision: Allowed, outcome: PythonOutcome, result: PythonResult) -> None:
        label = "timeout" if result.timed_out else ("oom" if result.oom_killed else "ok")
        self.metrics.tool_calls.add(1, {"tool": "run_python", "outcome": label})
        self.metrics.exec_duration.record(result.duration_ms, {"tool": "run_python"})
        images = [item for item in result.outputs if item.mime == "image/png"]
        interpreter: dict[str, Any] = {
            "interpreter_new": result.new_interpreter,
            "state_lost_reason": result.state_lost_reason,
            "interrupted": result.interrupted,
            "interpreter_ended": outcome.end.reason if outcome.end is not None else None,
            "images": len(images),
            "rich_bytes": sum(item.bytes for item in result.outputs),
            "memory_kb": result.memory_kb,
        }
        self._finished(
            decision,
            outcome,
            exit_code=outcome.exit_code,
            timed_out=result.timed_out,
            truncated=result.truncated,
            duration_ms=result.duration_ms,
            error_type=result.error.type if result.error is not None else None,
            **interpreter,
        )
