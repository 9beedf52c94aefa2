"""Host health on a clock the test moves: unknown until a host answers, suspect (not placeable) at
its first failure, down only after `down_after_s` of silence, up again when it answers; each move is
returned once."""

from __future__ import annotations

from gateway.fleet.health import Health
from tests.unit.fleet_support import FakeClock


def health(*names: str, down_after_s: float = 5.0) -> tuple[Health, FakeClock]:
    clock = FakeClock()
    watched = Health(down_after_s, clock)
    watched.track(list(names))
    return watched, clock


def test_a_new_host_is_unknown_and_not_placeable() -> None:
    h, clock = health("a")
    state = h.of("a")
    assert state is not None
    assert (state.state, state.suspect, state.last_ok, state.errors) == ("unknown", False, None, 0)
    assert (state.added, state.since) == (clock.now, clock.now)
    assert not h.placeable("a") and not h.is_down("a")


def test_an_answer_makes_it_up_and_placeable_once() -> None:
    h, clock = health("a")
    clock.advance(1)
    assert h.ok("a") == "up"
    state = h.of("a")
    assert state is not None and state.last_ok == clock.now and state.since == clock.now
    assert h.placeable("a")
    clock.advance(1)
    assert h.ok("a") is None, "up to up is no move"
    assert state.since == clock.now - 1
    assert state.last_ok == clock.now


def test_two_failures_in_a_row_make_an_up_host_suspect_but_keep_it_up() -> None:
    h, clock = health("a")
    h.ok("a")
    clock.advance(4.9)
    assert h.failed("a", "connection refused") is None
    assert h.placeable("a"), "one failure may be a busy machine's slow answer"
    assert h.failed("a", "connection refused", probe=False) is None
    state = h.of("a")
    assert state is not None
    assert (state.state, state.suspect, state.errors, state.last_error) == (
        "up",
        True,
        2,
        "connection refused",
    )
    assert not h.placeable("a") and not h.is_down("a")


def test_only_a_probe_moves_a_host_down() -> None:
    h, clock = health("a", down_after_s=5)
    h.ok("a")
    clock.advance(6)
    assert h.failed("a", "refused", probe=False) is None
    assert not h.is_down("a")
    assert h.failed("a", "refused") == "down"


def test_an_answer_clears_suspect_without_a_move() -> None:
    h, clock = health("a")
    h.ok("a")
    h.failed("a", "x")
    clock.advance(1)
    assert h.ok("a") is None
    assert h.placeable("a")
    state = h.of("a")
    assert state is not None and state.errors == 1, "errors are counted, not reset"


def test_down_after_down_after_s_of_silence_since_the_last_answer() -> None:
    h, clock = health("a", down_after_s=5)
    h.ok("a")
    clock.advance(3)
    assert h.failed("a", "x") is None
    clock.advance(1.999)
    assert h.failed("a", "x") is None
    clock.advance(0.001)
    assert h.failed("a", "timed out") == "down"
    state = h.of("a")
    assert state is not None and (state.state, state.since) == ("down", clock.now)
    assert h.is_down("a") and not h.placeable("a")
    clock.advance(10)
    assert h.failed("a", "x") is None, "down is returned once"
    assert state.since == clock.now - 10


def test_a_late_answer_restarts_the_silence() -> None:
    h, clock = health("a", down_after_s=5)
    h.ok("a")
    clock.advance(4)
    h.ok("a")
    clock.advance(4)
    assert h.failed("a", "x") is None, "4 s since the last answer, not 8 since the first"


def test_a_host_that_never_answered_is_down_that_long_after_it_was_added() -> None:
    h, clock = health("a", down_after_s=5)
    clock.advance(4)
    assert h.failed("a", "refused") is None
    state = h.of("a")
    assert state is not None and state.state == "unknown" and state.failing == 1
    clock.advance(1)
    assert h.failed("a", "refused") == "down"
    assert h.is_down("a")


def test_a_host_added_later_counts_its_silence_from_then() -> None:
    h, clock = health("a", down_after_s=5)
    clock.advance(100)
    h.track(["a", "b"])
    assert h.failed("b", "refused") is None
    clock.advance(5)
    assert h.failed("b", "refused") == "down"


def test_an_answer_from_down_is_up_once() -> None:
    h, clock = health("a", down_after_s=1)
    h.ok("a")
    clock.advance(2)
    assert h.failed("a", "x") == "down"
    clock.advance(1)
    assert h.ok("a") == "up"
    state = h.of("a")
    assert state is not None and (state.state, state.suspect, state.since) == ("up", False, clock.now)
    assert h.placeable("a") and not h.is_down("a")
    assert h.ok("a") is None


def test_a_long_error_is_kept_short() -> None:
    h, _ = health("a")
    h.failed("a", "e" * 5000)
    state = h.of("a")
    assert state is not None and state.last_error == "e" * 300


def test_track_keeps_the_state_of_kept_hosts_and_drops_removed_ones() -> None:
    h, clock = health("a", "b", down_after_s=1)
    h.ok("a")
    clock.advance(2)
    h.failed("b", "x")
    kept_a, kept_b = h.of("a"), h.of("b")
    assert kept_b is not None and kept_b.state == "down"
    clock.advance(5)
    h.track(["b", "a", "c"])
    assert h.of("a") is kept_a and h.of("b") is kept_b
    assert kept_b.state == "down" and h.is_down("b")
    added = h.of("c")
    assert added is not None and (added.state, added.added) == ("unknown", clock.now)
    h.track(["c"])
    assert h.of("a") is None and h.of("b") is None
    assert [s.name for s in h.all()] == ["c"]
    assert h.ok("a") is None and h.failed("b", "x") is None, "a host no longer tracked is ignored"
    assert not h.placeable("a") and not h.is_down("b")


def test_a_host_dropped_and_added_again_starts_over() -> None:
    h, clock = health("a", down_after_s=1)
    h.ok("a")
    h.track([])
    clock.advance(3)
    h.track(["a"])
    state = h.of("a")
    assert state is not None and (state.state, state.last_ok, state.added) == ("unknown", None, clock.now)


def test_unknown_names_are_neither_up_nor_down() -> None:
    h, _ = health()
    assert h.of("x") is None and h.all() == []
    assert not h.placeable("x") and not h.is_down("x")
