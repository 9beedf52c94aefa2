"""Progress of a running command for MCP clients that ask for it: output so far, every so often.

Output arrives on a worker thread; it is only recorded there (never blocking the command). A task
on the event loop looks at it at a fixed interval and reports what is new.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from gateway.backend.base import OutputCallback

__all__ = ["PROGRESS_INTERVAL_S", "OutputTail", "ProgressReport", "relay_progress", "with_progress"]

T = TypeVar("T")

#: How often a long-running command reports progress (only when it printed something new).
PROGRESS_INTERVAL_S = 1.0
#: How much of the latest output one progress message carries.
TAIL_BYTES = 2048
#: report(bytes of output so far, the latest output as text)
ProgressReport = Callable[[float, str], Awaitable[None]]


class OutputTail:
    """Thread-safe: counts output and keeps its last `keep` bytes (stdout and stderr interleaved)."""

    def __init__(self, keep: int = TAIL_BYTES) -> None:
        self._lock = threading.Lock()
        self._keep = keep
        self._tail = bytearray()
        self.total = 0

    def __call__(self, stream: str, chunk: bytes) -> None:
        with self._lock:
            self.total += len(chunk)
            self._tail += chunk
            del self._tail[: -self._keep]

    def snapshot(self) -> tuple[int, str]:
        with self._lock:
            return self.total, self._tail.decode("utf-8", errors="replace")


async def relay_progress(
    tail: OutputTail, report: ProgressReport, interval_s: float = PROGRESS_INTERVAL_S
) -> None:
    """Report new output every `interval_s` until cancelled; a failed report never stops the command."""
    sent = 0
    while True:
        await anyio.sleep(interval_s)
        total, text = tail.snapshot()
        if total == sent:
            continue
        sent = total
        try:
            await report(float(total), text)
        except Exception:  # noqa: BLE001 - progress is best effort; the call's result is what counts
            return


async def with_progress(
    on_progress: ProgressReport | None, run: Callable[[OutputCallback | None], Awaitable[T]]
) -> T:
    """`run(on_output)`, with its output relayed to `on_progress` while it runs (when there is one)."""
    if on_progress is None:
        return await run(None)
    tail = OutputTail()
    failure: Exception | None = None
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(relay_progress, tail, on_progress)
        try:
            outcome = await run(tail)
        except Exception as exc:  # noqa: BLE001 - re-raised as itself below, not in an exception group
            failure = exc
        finally:
            tasks.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return outcome
