"""The benchmark's phases: raw `docker exec` rows, and everything measured through one gateway."""

from __future__ import annotations

import sys
import time
from typing import Any

from bench import calls, report
from bench.calls import WORKLOADS
from bench.gateways import PER_NEIGHBOUR, AuditTail, BenchGateway
from bench.raw import RawEngine
from bench.settings import Settings
from bench.spawn import spawn_cost
from bench.stateful import stateful_calls
from bench.stats import Series
from bench.streaming import stream_calls, stream_samples

__all__ = ["gateway_phase", "progress", "raw_first", "raw_warm", "unix_skipped"]

_STARTED = time.monotonic()


def progress(message: str) -> None:
    print(f"[bench {time.monotonic() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


# -- raw docker exec ------------------------------------------------------------------------------


def raw_warm(engine: RawEngine, variant: str, samples: int) -> list[Series]:
    out = []
    with engine.container() as box:
        for workload, (command, expected) in WORKLOADS.items():
            series = Series(workload, variant)
            for _ in range(3):
                engine.exec_run(box, command)
            started = time.perf_counter()
            for _ in range(samples):
                begun = time.perf_counter()
                try:
                    code, output = engine.exec_run(box, command)
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    series.error(f"{type(exc).__name__}: {exc}")
                    continue
                elapsed = (time.perf_counter() - begun) * 1000
                if code == 0 and output.decode() == expected:
                    series.latencies_ms.append(elapsed)
                else:
                    series.error(f"exit code {code}, {len(output)} bytes of output")
            series.wall_s = time.perf_counter() - started
            out.append(series)
    return out


def raw_first(engine: RawEngine, samples: int) -> Series:
    series = Series(report.FIRST, report.RAW_FIRST)
    started = time.perf_counter()
    for _ in range(samples):
        try:
            elapsed, code, output = engine.first_call_ms("true")
        except Exception as exc:  # noqa: BLE001 - counted and reported
            series.error(f"{type(exc).__name__}: {exc}")
            continue
        if code == 0 and not output:
            series.latencies_ms.append(elapsed)
        else:
            series.error(f"exit code {code}, {len(output)} bytes of output")
    series.wall_s = time.perf_counter() - started
    return series


def unix_skipped(why: str) -> list[Series]:
    return [Series(w, report.RAW_UNIX, note=f"skipped: {why}") for w in WORKLOADS]


# -- gateways -------------------------------------------------------------------------------------


async def gateway_phase(
    gateway: BenchGateway, tail: AuditTail, settings: Settings, path: str, extras: dict[str, Any]
) -> list[Series]:
    out = []
    await tail.wait_pool_ready(gateway.warm_pool)
    for index, workload in enumerate(WORKLOADS):
        progress(f"{path}: {workload}")
        token = gateway.tokens[f"warm-{index}"]
        out.append(
            await calls.warm_calls(gateway, tail, token, workload, variant=path, samples=settings.samples)
        )
    progress(f"{path}: 100 MB of output per call, the output cap applies")
    stream_token = gateway.tokens["stream"]
    out.append(await stream_calls(gateway, tail, stream_token, path, stream_samples(settings.samples)))
    out.append(await calls.info_calls(gateway, gateway.tokens["info"], path, settings.samples))
    if gateway.exec_path == "agent":
        extras["spawn_ms"] = await spawn_cost(gateway, gateway.tokens["info"])
        progress(f"{path}: stateful calls, run_python against execute_python")
        out += await stateful_calls(gateway, tail, gateway.tokens["stateful"], settings.samples)
    for pool in (True, False):
        progress(f"{path}: first calls, {f'warm pool of {gateway.warm_pool}' if pool else 'no pool'}")
        kind = "pool" if pool else "nopool"
        firsts = [gateway.tokens[f"first-{kind}-{i}"] for i in range(settings.first_calls)]
        variant = report.first_variant(path, pool)
        out.append(await calls.first_calls(gateway, tail, firsts, variant, pool=pool))
    for level in settings.levels:
        # Principals carry over from one level to the next: each level starts when all of its
        # principals' sandboxes are running.
        progress(f"{path}: throughput, {level} principals x {settings.calls_each(level)} calls")
        tokens = [gateway.tokens[f"tp-{i}"] for i in range(level)]
        workload = report.throughput_workload(level)
        each = settings.calls_each(level)
        out.append(
            await calls.throughput(gateway, tail, tokens, calls_each=each, workload=workload, variant=path)
        )
    progress(f"{path}: a bystander, {settings.neighbours} neighbours idle then at full load")
    rows = (Series(report.BYSTANDER_ALONE, path), Series(report.BYSTANDER_LOADED, path))
    await calls.bystander(
        gateway,
        gateway.tokens["bystander"],
        [gateway.tokens[f"nb-{i}"] for i in range(settings.neighbours)],
        per_neighbour=PER_NEIGHBOUR,
        samples=settings.samples,
        variants=rows,
    )
    return [*out, *rows]
