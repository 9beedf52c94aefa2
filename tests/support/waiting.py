"""Waiting for a condition instead of sleeping: `eventually` retries a check until it passes or its
deadline comes, then fails with what the check last said.

A check passes when it returns a truthy value (which `eventually` returns); it is tried again when
it returns a falsy one or raises one of `retry_on` (AssertionError unless told otherwise, so a check
may be written with `assert`). Anything else it raises ends the wait at once: that is how a check
says "this will never pass" (a process that exited, say).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypedDict, TypeVar, Unpack, overload

import anyio

__all__ = ["EventuallyFailed", "Wait", "eventually", "eventually_async"]

T = TypeVar("T")

#: How long a wait lasts, and how often it looks, unless told otherwise.
TIMEOUT_S = 10.0
INTERVAL_S = 0.1


class EventuallyFailed(AssertionError):
    """A check that did not pass before its deadline (an AssertionError, so pytest reports it as a
    failed assertion, with the check's last error or value in the message)."""


class Wait(TypedDict, total=False):
    """How a wait goes, all optional: `timeout_s` (TIMEOUT_S), `interval_s` between tries
    (INTERVAL_S), `retry_on`: what a try may raise and still be tried again (AssertionError), and
    `message`: what did not happen, for the failure (else the check's name)."""

    timeout_s: float
    interval_s: float
    retry_on: tuple[type[BaseException], ...]
    message: str | None


class _Attempts:
    """A wait's settings, and what it has seen so far for its failure message."""

    def __init__(self, check: Callable[..., object], wait: Wait) -> None:
        self.timeout_s = wait.get("timeout_s", TIMEOUT_S)
        self.interval_s = wait.get("interval_s", INTERVAL_S)
        self.retry_on = wait.get("retry_on", (AssertionError,))
        self.what = wait.get("message") or f"{getattr(check, '__qualname__', repr(check))} did not pass"
        self.tries = 0
        self.error: BaseException | None = None
        self.value: object = None

    def passed(self, value: object) -> bool:
        """Whether a try's `value` passes; if not, it is remembered for the failure message."""
        self.tries += 1
        self.error, self.value = None, value
        return bool(value)

    def raised(self, error: BaseException) -> None:
        self.tries += 1
        self.error = error

    def give_up(self, *, interrupted: bool = False) -> EventuallyFailed:
        if interrupted:
            last = "the last try was still running at the deadline"
        elif self.error is not None:
            last = f"last error: {type(self.error).__name__}: {self.error}"
        else:
            last = f"last value: {self.value!r}"
        tries = f"{self.tries} tr{'y' if self.tries == 1 else 'ies'}"
        failure = EventuallyFailed(f"{self.what} within {self.timeout_s:g} s ({tries}; {last})")
        failure.__cause__ = self.error
        return failure


def eventually(check: Callable[[], T], **wait: Unpack[Wait]) -> T:
    """Call `check` every `interval_s` until it returns a truthy value, and return that value. It is
    tried at least once, and once more at the deadline; a try is never interrupted. At the deadline,
    raise EventuallyFailed naming `message` (or the check) and the last error or value."""
    attempts = _Attempts(check, wait)
    deadline = time.monotonic() + attempts.timeout_s
    while True:
        try:
            if attempts.passed(value := check()):
                return value
        except attempts.retry_on as exc:
            attempts.raised(exc)
        left = deadline - time.monotonic()
        if left <= 0:
            raise attempts.give_up()
        time.sleep(min(attempts.interval_s, left))


@overload
async def eventually_async(check: Callable[[], Awaitable[T]], **wait: Unpack[Wait]) -> T: ...
@overload
async def eventually_async(check: Callable[[], T], **wait: Unpack[Wait]) -> T: ...
async def eventually_async(check: Callable[[], Any], **wait: Unpack[Wait]) -> Any:
    """`eventually` for async code: the check may be a coroutine function or a plain one, and the
    wait sleeps without blocking the event loop. The deadline is a hard one: a try still running
    when it comes is cancelled."""
    attempts = _Attempts(check, wait)
    running = False
    with anyio.move_on_after(attempts.timeout_s):
        while True:
            running = True
            try:
                value = check()
                if inspect.isawaitable(value):
                    value = await value
                if attempts.passed(value):
                    return value
            except attempts.retry_on as exc:
                attempts.raised(exc)
            running = False
            await anyio.sleep(attempts.interval_s)
    raise attempts.give_up(interrupted=running)
