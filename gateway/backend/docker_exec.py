"""`docker exec` as an Executor: one exec per command, for sandboxes without an agent.

Create, start and inspect are short calls on the shared, fair worker pool; the output is read on
the sandbox's own stream threads for as long as the command runs, so a long command holds none of
the shared workers. The command runs under coreutils `timeout` (the request's `timeout_s`).
"""

from __future__ import annotations

import dataclasses

import anyio
import anyio.to_thread

from gateway.backend.base import (
    Backend,
    ExecOutcome,
    ExecRequest,
    OutputCallback,
    close_stream,
    internal_request,
)
from gateway.backend.commands import timed_argv
from gateway.backend.interpreter_results import PythonOutcome, PythonRequest
from gateway.backend.ops import DockerOps
from gateway.errors import GatewayError, InterpreterUnavailable

__all__ = ["STREAM_THREADS", "DockerExec"]

#: Threads one sandbox may use at once to read `docker exec` output streams (its own, never shared;
#: the policy's per-principal `max_concurrent` bounds its calls before this does).
STREAM_THREADS = 32


class DockerExec:
    """Runs one sandbox's commands with `docker exec`, as the sandbox's own uid."""

    path = "exec"

    def __init__(self, backend: Backend, ops: DockerOps, container_id: str, user: str) -> None:
        self._backend = backend
        self._ops = ops
        self._container_id = container_id
        self._user = user
        #: The threads that read this sandbox's exec streams while its commands run.
        self._streams = anyio.CapacityLimiter(STREAM_THREADS)

    @property
    def connected(self) -> bool:
        return True

    async def run(self, request: ExecRequest, on_output: OutputCallback | None = None) -> ExecOutcome:
        timed = timed_argv(request.argv, request.timeout_s, request.kill_after_s)
        return await self._exec(dataclasses.replace(request, argv=timed), on_output)

    async def _exec(self, request: ExecRequest, on_output: OutputCallback | None = None) -> ExecOutcome:
        stream = await self._ops.run(self._backend.exec_open, self._container_id, request)
        try:
            pumped = await anyio.to_thread.run_sync(
                self._backend.exec_pump, stream, request, on_output, limiter=self._streams
            )
        except BaseException:
            close_stream(stream.sock, stream.raw)
            raise
        return await self._ops.run(self._backend.exec_result, stream, pumped)

    async def run_python(
        self, request: PythonRequest, on_output: OutputCallback | None = None
    ) -> PythonOutcome:
        raise InterpreterUnavailable("run_python needs the sandbox agent; this profile uses exec_path: exec")

    async def reap(self) -> int | None:
        """`kill -KILL -1` as the sandbox's uid; PID 1 runs as another, so it stays. Not under
        `timeout`, which would be one of the processes it kills (the gateway's deadline bounds it)."""
        try:
            return (await self._exec(internal_request(["kill", "-KILL", "-1"], 1024, self._user))).exit_code
        except GatewayError:
            return None

    def close(self) -> None:
        """Nothing stays open between commands."""
