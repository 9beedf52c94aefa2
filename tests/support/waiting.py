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
from typing import Any, TypeVar, overload

import anyio

__all__ = ["EventuallyFailed", "eventually", "eventually_async"]

T = TypeVar("T")

#: How long a wait lasts, and how often it looks, unless told otherwise.
TIMEOUT_S = 10.0
INTERVAL_S = 0.1


class EventuallyFailed(AssertionError):
    """A check that did not pass before its deadline (an AssertionError, so pytest reports it as a
    failed assertion, with the check's last error or value in the message)."""


class _Attempts:
    """What a wait has seen so far, for its failure message."""

    def __init__(self, check: Callable[..., object], message: str | None, timeout_s: float) -> None:
        self.what = message or f"{getattr(check, '__qualname__', repr(check))} did not pass"
        self.timeout_s = timeout_s
        self.tries = 0
        self.error: BaseException | None = None
        self.value: object = None

    def failed(self, value: object) -> None:
        self.tries += 1
        self.error, self.value = None, value

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


def eventually(
    check: Callable[[], T],
    *,
    timeout_s: float = TIMEOUT_S,
    interval_s: float = INTERVAL_S,
    retry_on: tuple[type[BaseException], ...] = (AssertionError,),
    message: str | None = None,
) -> T:
    """Call `check` every `interval_s` until it returns a truthy value, and return that value. It is
    tried at least once, and once more at the deadline; a try is never interrupted. At the deadline,
    raise EventuallyFailed naming `message` (or the check) and the last error or value."""
    attempts = _Attempts(check, message, timeout_s)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = check()
        except retry_on as exc:
            attempts.raised(exc)
        else:
            if value:
                return value
            attempts.failed(value)
        left = deadline - time.monotonic()
        if left <= 0:
            raise attempts.give_up()
        time.sleep(min(interval_s, left))


@overload
async def eventually_async(
    check: Callable[[], Awaitable[T]],
    *,
    timeout_s: float = ...,
    interval_s: float = ...,
    retry_on: tuple[type[BaseException], ...] = ...,
    message: str | None = ...,
) -> T: ...
@overload
async def eventually_async(
    check: Callable[[], T],
    *,
    timeout_s: float = ...,
    interval_s: float = ...,
    retry_on: tuple[type[BaseException], ...] = ...,
    message: str | None = ...,
) -> T: ...
async def eventually_async(
    check: Callable[[], Any],
    *,
    timeout_s: float = TIMEOUT_S,
    interval_s: float = INTERVAL_S,
    retry_on: tuple[type[BaseException], ...] = (AssertionError,),
    message: str | None = None,
) -> Any:
    """`eventually` for async code: the check may be a coroutine function or a plain one, and the
    wait sleeps without blocking the event loop. The deadline is a hard one: a try still running
    when it comes is cancelled."""
    attempts = _Attempts(check, message, timeout_s)
    running = False
    with anyio.move_on_after(timeout_s):
        while True:
            running = True
            try:
                value = check()
                if inspect.isawaitable(value):
                    value = await value
            except retry_on as exc:
                attempts.raised(exc)
            else:
                if value:
                    return value
                attempts.failed(value)
            running = False
            await anyio.sleep(interval_s)
    raise attempts.give_up(interrupted=running)
