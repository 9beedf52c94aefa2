"""The in-process moving windows behind `memory://` rate limits, on a clock the test moves."""

from __future__ import annotations

import threading

import pytest

from gateway.ratelimit import MovingWindows, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_window_allows_its_amount_then_says_when_the_oldest_hit_leaves_it() -> None:
    clock = Clock()
    windows = MovingWindows(clock)
    for _ in range(3):
        assert windows.hit("requests", "t/alice", "3/minute") is None
        clock.now += 10
    assert windows.hit("requests", "t/alice", "3/minute") == 30.0  # the first hit leaves at +60
    clock.now += 29.5
    assert windows.hit("requests", "t/alice", "3/minute") == 1.0, "never less than one second"
    clock.now += 0.5
    assert windows.hit("requests", "t/alice", "3/minute") is None, "the window moved past the first hit"
    assert windows.hit("requests", "t/alice", "3/minute") == 10.0


def test_refused_hits_are_not_counted() -> None:
    clock = Clock()
    windows = MovingWindows(clock)
    assert windows.hit("k", "a", "1/second") is None
    for _ in range(50):
        assert windows.hit("k", "a", "1/second") == 1.0
    clock.now += 1.0
    assert windows.hit("k", "a", "1/second") is None


def test_spent_asks_without_counting() -> None:
    clock = Clock()
    windows = MovingWindows(clock)
    for _ in range(5):
        assert windows.spent("addr", "10.0.0.1", "2/minute") is None
    assert windows.hit("addr", "10.0.0.1", "2/minute") is None
    assert windows.spent("addr", "10.0.0.1", "2/minute") is None
    assert windows.hit("addr", "10.0.0.1", "2/minute") is None
    assert windows.spent("addr", "10.0.0.1", "2/minute") == 60.0


def test_kinds_keys_and_rates_are_separate_windows() -> None:
    windows = MovingWindows(Clock())
    assert windows.hit("requests", "t/alice", "1/minute") is None
    assert windows.hit("requests", "t/bob", "1/minute") is None
    assert windows.hit("sandbox_creations", "t/alice", "1/minute") is None
    assert windows.hit("requests", "t/alice", "2/minute") is None, "another rate is another window"
    assert windows.hit("requests", "t/alice", "1/minute") is not None


def test_windows_whose_hits_have_left_are_dropped_so_many_keys_do_not_accumulate() -> None:
    clock = Clock()
    windows = MovingWindows(clock)
    for n in range(1000):
        windows.hit("address", f"10.0.{n // 256}.{n % 256}", "5/second")
    assert len(windows) == 1000
    clock.now += 2  # past every window
    for n in range(200):  # a flood of new keys: each call drops more stale windows than it adds
        windows.hit("address", f"10.9.{n // 256}.{n % 256}", "5/second")
    assert len(windows) == 200
    clock.now += 2
    for _ in range(30):
        windows.spent("address", "10.8.8.8", "5/second")  # asking prunes too, and adds nothing
    assert len(windows) == 0


def test_a_window_still_in_use_is_never_dropped() -> None:
    clock = Clock()
    windows = MovingWindows(clock)
    assert windows.hit("requests", "t/alice", "1/hour") is None
    clock.now += 11
    for n in range(50):
        windows.hit("requests", f"t/p{n}", "1/hour")
    assert windows.hit("requests", "t/alice", "1/hour") is not None, "the hour has not passed"
    clock.now += 3600 - 11
    assert windows.hit("requests", "t/alice", "1/hour") is None


def test_hits_from_many_threads_are_all_counted_and_never_over_the_amount() -> None:
    windows = MovingWindows()
    allowed: list[int] = []
    lock = threading.Lock()

    def hammer() -> None:
        mine = sum(windows.hit("requests", "t/alice", "500/hour") is None for _ in range(200))
        with lock:
            allowed.append(mine)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(allowed) == 500


@pytest.mark.parametrize(("rate", "allowed"), [("3/minute", 3), ("3 per minute", 3), ("2/5 seconds", 2)])
def test_the_limiter_reads_the_notation_it_documents(rate: str, allowed: int) -> None:
    limiter = RateLimiter()
    assert [limiter.hit("k", "a", rate) is None for _ in range(allowed + 1)] == [True] * allowed + [False]
