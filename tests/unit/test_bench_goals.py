"""The benchmark's goal lines and its streaming row's checks (pure logic, no engine)."""

from __future__ import annotations

import math

from bench.goals import GOALS, goal_lines, verdict
from bench.report import FAST, FIRST, RAW_PROXY, first_variant, throughput_workload
from bench.stats import Series
from bench.streaming import KEPT_BYTES, STREAM, mb_per_s, stream_problem, stream_samples


def _series(workload: str, variant: str, *latencies: float, wall_s: float = 1.0, errors: int = 0) -> Series:
    one = Series(workload, variant, latencies_ms=list(latencies), wall_s=wall_s)
    for _ in range(errors):
        one.error("boom")
    return one


def test_a_verdict_follows_the_bound_direction_and_nan_is_not_measured() -> None:
    assert verdict(5.0, 5.0, at_least=False) == "met"
    assert verdict(5.1, 5.0, at_least=False) == "missed"
    assert verdict(8.0, 8.0, at_least=True) == "met"
    assert verdict(7.9, 8.0, at_least=True) == "missed"
    assert verdict(math.nan, 8.0, at_least=True) == "not measured"


def test_each_goal_is_worked_out_from_its_rows_and_the_stage_breakdown() -> None:
    series = [
        _series("true", FAST, 4.0, 5.0, 6.0),
        _series("true", RAW_PROXY, 40.0, 50.0, 60.0),
        _series(FIRST, first_variant(FAST, True), 30.0),
        _series(STREAM, FAST, 500.0),
        _series(throughput_workload(32), FAST, *([1.0] * 450), wall_s=1.0),
    ]
    stages = {"execute_bash true": {"stages": {"gateway": {"p50_us": 1500}}}}
    lines, out = goal_lines(series, (1, 32), {"stages": stages})
    figures = {key: out[key]["value"] for key in GOALS}
    assert figures == {
        "warm_true_p50_ms": 5.0,
        "raw_proxy_over_fast_p50": 10.0,
        "gateway_own_p50_ms": 1.5,
        "calls_per_s_at_32": 450.0,
        "first_call_warm_pool_p50_ms": 30.0,
        "stream_mb_per_s": 200.0,
    }
    verdicts = {key: out[key]["verdict"] for key in GOALS}
    assert verdicts == dict.fromkeys(GOALS, "met") | {"first_call_warm_pool_p50_ms": "missed"}
    assert all(line.endswith((": met", ": missed")) for line in lines[: len(GOALS)]), lines
    assert "30.0 ms (goal <= 25 ms): missed" in lines[4]


def test_throughput_with_an_error_or_without_32_principals_is_not_measured() -> None:
    failed = [_series(throughput_workload(32), FAST, *([1.0] * 450), errors=1)]
    _, out = goal_lines(failed, (32,), {})
    assert out["calls_per_s_at_32"]["verdict"] == "not measured"
    _, out = goal_lines([_series(throughput_workload(8), FAST, 1.0)], (8,), {})
    assert out["calls_per_s_at_32"]["verdict"] == "not measured"
    assert out["gateway_own_p50_ms"]["verdict"] == "not measured"  # no stage breakdown in this run


def test_the_stream_is_100_mb_over_the_call_time() -> None:
    assert mb_per_s(1000.0) == 100.0
    assert math.isnan(mb_per_s(math.nan)) and math.isnan(mb_per_s(0.0))
    assert [stream_samples(n) for n in (3, 50, 200, 1000)] == [2, 5, 20, 20]


def test_a_stream_result_must_be_exactly_the_capped_prefix() -> None:
    good = {"exit_code": 0, "stdout": "a" * KEPT_BYTES, "truncated": True, "stderr": ""}
    assert stream_problem(good, is_error=False) is None
    assert stream_problem(good, is_error=True) == "tool error"
    assert "exit code 1" in str(stream_problem(good | {"exit_code": 1}, is_error=False))
    for bad in (
        {"truncated": False},
        {"stdout": "a" * (KEPT_BYTES - 1)},
        {"stdout": "a" * (KEPT_BYTES - 1) + "b"},
        {"stdout": ""},
    ):
        assert "not the capped prefix" in str(stream_problem(good | bad, is_error=False)), bad
