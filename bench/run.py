"""Run every variant side by side on one engine and print the table (see `python -m bench --help`).

Order: raw `exec_run` through the socket proxy and the unix socket; then, per exec path (agent,
exec), a gateway with a warm pool (warm calls, `sandbox_info`, first calls, throughput) and one
without (first calls). Every container is removed at the end, also after an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import anyio

from bench import calls, report
from bench.calls import WORKLOADS
from bench.gateways import (
    LIFTED,
    NOPOOL,
    PER_NEIGHBOUR,
    PROFILE,
    AuditTail,
    BenchGateway,
    start_gateway,
    stop_gateway,
)
from bench.machine import describe, machine_line
from bench.raw import RawEngine
from bench.stateful import stateful_calls
from bench.stats import Series
from gateway.backend.create_body import LABEL_PREFIX
from gateway.config import DEFAULT_DOCKER_HOST

__all__ = ["main"]

PROXY_URL = DEFAULT_DOCKER_HOST
UNIX_SOCKET = "/var/run/docker.sock"


@dataclass(frozen=True)
class Settings:
    samples: int
    first_calls: int
    throughput_total: int
    min_calls_each: int
    levels: tuple[int, ...]
    warm_pool: int
    neighbours: int
    docker_host: str
    unix_socket: str
    smoke: bool

    def calls_each(self, level: int) -> int:
        return max(self.min_calls_each, math.ceil(self.throughput_total / level))


def _parse(argv: list[str] | None) -> tuple[Settings, Path | None]:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Gateway fast path and fallback next to raw docker exec."
    )
    add = parser.add_argument
    add(
        "--smoke",
        action="store_true",
        default=os.environ.get("SGW_BENCH_SMOKE") == "1",
        help="every variant with a few samples; fails only on errors (also SGW_BENCH_SMOKE=1)",
    )
    add("--samples", type=int, help="timed calls per warm row (default 200; smoke 3)")
    add("--first-calls", type=int, help="new principals per first-call row (default 30; smoke 2)")
    add(
        "--throughput-calls",
        type=int,
        help="calls per throughput row, split over its principals (default 320, at least 20 each; "
        "smoke 2 each)",
    )
    add("--levels", default="1,8,32", help="concurrent principals (default 1,8,32)")
    add("--warm-pool", type=int, default=8, help="warm pool of the benchmark profile (default 8)")
    add(
        "--neighbours",
        type=int,
        help="principals at full load (each its max_concurrent long commands) in the bystander rows "
        "(default 8; smoke 2)",
    )
    add(
        "--docker-host",
        default=os.environ.get("DOCKER_HOST", PROXY_URL),
        help="the socket proxy the gateways and the raw client use",
    )
    add("--unix-socket", default=UNIX_SOCKET, help="engine socket of the raw unix rows ('' skips them)")
    add("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    smoke = bool(args.smoke)
    settings = Settings(
        samples=args.samples or (3 if smoke else 200),
        first_calls=args.first_calls or (2 if smoke else 30),
        throughput_total=args.throughput_calls or (0 if smoke else 320),
        min_calls_each=2 if smoke else 20,
        levels=tuple(int(level) for level in args.levels.split(",")),
        warm_pool=args.warm_pool,
        neighbours=args.neighbours or (2 if smoke else 8),
        docker_host=args.docker_host,
        unix_socket=args.unix_socket,
        smoke=smoke,
    )
    return settings, args.json


_STARTED = time.monotonic()


def _progress(message: str) -> None:
    print(f"[bench {time.monotonic() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


# -- raw docker exec ------------------------------------------------------------------------------


def _raw_warm(engine: RawEngine, variant: str, samples: int) -> list[Series]:
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


def _raw_first(engine: RawEngine, samples: int) -> Series:
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


def _unix_skipped(why: str) -> list[Series]:
    return [Series(w, report.RAW_UNIX, note=f"skipped: {why}") for w in WORKLOADS]


# -- gateways -------------------------------------------------------------------------------------


async def _gateway_phase(
    gateway: BenchGateway, tail: AuditTail, settings: Settings, path: str, extras: dict[str, Any]
) -> list[Series]:
    out = []
    await tail.wait_pool_ready(gateway.warm_pool)
    for index, workload in enumerate(WORKLOADS):
        _progress(f"{path}: {workload}")
        token = gateway.tokens[f"warm-{index}"]
        out.append(
            await calls.warm_calls(gateway, tail, token, workload, variant=path, samples=settings.samples)
        )
    out.append(await calls.info_calls(gateway, gateway.tokens["info"], path, settings.samples))
    if gateway.exec_path == "agent":
        extras["spawn_ms"] = await calls.spawn_cost(gateway, gateway.tokens["info"])
        _progress(f"{path}: stateful calls, run_python against execute_python")
        out += await stateful_calls(gateway, tail, gateway.tokens["stateful"], settings.samples)
    for pool in (True, False):
        _progress(f"{path}: first calls, {f'warm pool of {gateway.warm_pool}' if pool else 'no pool'}")
        kind = "pool" if pool else "nopool"
        firsts = [gateway.tokens[f"first-{kind}-{i}"] for i in range(settings.first_calls)]
        variant = report.first_variant(path, pool)
        out.append(await calls.first_calls(gateway, tail, firsts, variant, pool=pool))
    for level in settings.levels:
        # Principals carry over from one level to the next: each level starts when all of its
        # principals' sandboxes are running.
        _progress(f"{path}: throughput, {level} principals x {settings.calls_each(level)} calls")
        tokens = [gateway.tokens[f"tp-{i}"] for i in range(level)]
        workload = report.throughput_workload(level)
        each = settings.calls_each(level)
        out.append(
            await calls.throughput(gateway, tail, tokens, calls_each=each, workload=workload, variant=path)
        )
    _progress(f"{path}: a bystander, {settings.neighbours} neighbours idle then at full load")
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


class Run:
    """Owns everything the run starts, so that `close` can remove all of it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.run_id = secrets.token_hex(4)
        self.workdir = Path(tempfile.mkdtemp(prefix="sgw-bench-"))
        self.gateways: list[BenchGateway] = []
        self.gateway_ids: list[str] = []
        self.engines: list[RawEngine] = []
        self.series: list[Series] = []
        self.extras: dict[str, Any] = {}

    def gateway(self, path: str, exec_path: str) -> BenchGateway:
        settings = self.settings
        principals = {f"warm-{i}": PROFILE for i in range(len(WORKLOADS))} | {
            "info": PROFILE,
            "stateful": PROFILE,
        }
        for i in range(settings.first_calls):
            principals |= {f"first-pool-{i}": PROFILE, f"first-nopool-{i}": NOPOOL}
        principals |= {f"tp-{i}": PROFILE for i in range(max(settings.levels))}
        principals |= {f"nb-{i}": PROFILE for i in range(settings.neighbours)} | {"bystander": PROFILE}
        _progress(f"starting a gateway: {path}, warm pool of {settings.warm_pool}")
        gateway_id = f"bench-{self.run_id}-{exec_path}"
        self.gateway_ids.append(gateway_id)  # swept at the end even if the start is interrupted
        gateway = start_gateway(
            self.workdir / exec_path,
            label=exec_path,
            exec_path=exec_path,
            warm_pool=settings.warm_pool,
            principals=principals,
            gateway_id=gateway_id,
            docker_host=settings.docker_host,
        )
        self.gateways.append(gateway)
        return gateway

    def measure(self) -> None:
        settings = self.settings
        proxy = RawEngine(settings.docker_host, self.run_id)
        self.engines.append(proxy)
        _progress(f"raw exec_run through {settings.docker_host}")
        self.series += _raw_warm(proxy, report.RAW_PROXY, settings.samples)
        _progress("raw create+start+exec_run through the proxy")
        self.series.append(_raw_first(proxy, settings.first_calls))
        socket_path = settings.unix_socket
        if not socket_path:
            self.series += _unix_skipped("--unix-socket ''")
        elif not os.access(socket_path, os.R_OK | os.W_OK):
            self.series += _unix_skipped(f"no access to {socket_path}")
        else:
            unix = RawEngine(f"unix://{socket_path}", self.run_id)
            self.engines.append(unix)
            _progress(f"raw exec_run through unix://{socket_path}")
            self.series += _raw_warm(unix, report.RAW_UNIX, settings.samples)
        for path, exec_path in ((report.FAST, "agent"), (report.FALLBACK, "exec")):
            gateway = self.gateway(path, exec_path)
            tail = AuditTail(gateway.audit_log)
            try:
                self.series += anyio.run(
                    _cancellable, _gateway_phase, gateway, tail, settings, path, self.extras
                )
                if _Phase.interrupted:
                    raise KeyboardInterrupt
            finally:
                _progress(f"stopping the gateway ({gateway.label})")
                if not stop_gateway(gateway):
                    _progress(f"the gateway ({gateway.label}) did not stop on SIGTERM and was killed")

    def close(self) -> list[str]:
        """Stop every gateway (SIGTERM, wait) and remove every container of this run. Returns
        what had to be cleaned up by force (nothing, normally)."""
        forced = []
        for gateway in self.gateways:
            if not stop_gateway(gateway):
                forced.append(f"gateway {gateway.label} did not stop on SIGTERM and was killed")
            elif gateway.server.process.returncode not in (0, -signal.SIGTERM):
                forced.append(
                    f"gateway {gateway.label} exited with status {gateway.server.process.returncode}"
                )
        if self.engines:
            engine = self.engines[0]
            for gateway_id in self.gateway_ids:
                rows = engine.client.api.containers(
                    all=True, filters={"label": f"{LABEL_PREFIX}.gateway={gateway_id}"}
                )
                for row in rows:
                    engine.remove(row["Id"])
                if rows:
                    forced.append(f"removed {len(rows)} sandbox(es) gateway {gateway_id} left on the engine")
            for one in self.engines:
                left = one.cleanup()
                if left:
                    forced.append(f"removed {left} raw benchmark container(s)")
                one.close()
        return forced


class _Phase:
    """The running async phase, so that an interrupt can cancel it as a whole."""

    scope: anyio.CancelScope | None = None
    loop: asyncio.AbstractEventLoop | None = None
    interrupted = False


async def _cancellable(phase: Any, *args: Any) -> list[Series]:
    with anyio.CancelScope() as scope:
        _Phase.scope, _Phase.loop = scope, asyncio.get_running_loop()
        try:
            return list(await phase(*args))
        finally:
            _Phase.scope = None
    return []


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C and SIGTERM: inside an async phase, cancel its scope (every task ends, sessions
    close), then stop; anywhere else, or a second time, stop at once. The run then cleans up."""
    if _Phase.scope is not None and _Phase.loop is not None and not _Phase.interrupted:
        _Phase.interrupted = True
        _Phase.loop.call_soon_threadsafe(_Phase.scope.cancel)
        return
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # tasks torn down by a forced stop
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    settings, json_path = _parse(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    run = Run(settings)
    status, machine = "ok", {}
    try:
        probe = RawEngine(settings.docker_host, run.run_id)
        machine = describe(probe.version())
        probe.close()
        run.measure()
    except (KeyboardInterrupt, BaseExceptionGroup) as exc:
        if isinstance(exc, BaseExceptionGroup) and exc.subgroup(KeyboardInterrupt) is None:
            raise
        status = "interrupted"
        _progress("interrupted: cleaning up")
    except Exception as exc:  # noqa: BLE001 - the top boundary: report, clean up, fail
        status = f"failed: {type(exc).__name__}: {exc}"
        _progress(status)
    finally:
        forced = run.close()
        for line in forced:
            _progress(line)
    rows = {(s.workload, s.variant): s for s in run.series}
    ordered = [rows.get(key) or Series(*key, note="not run") for key in report.expected_rows(settings.levels)]
    summaries = [s.summary() for s in ordered]
    lines, goals = report.targets(ordered, settings.levels, run.extras.get("spawn_ms"))
    print(machine_line(machine) if machine else "machine: unknown (the engine did not answer)")
    print(
        f"mode: {'smoke' if settings.smoke else 'full'}; {settings.samples} timed calls per warm row, "
        f"{settings.first_calls} new principals per first-call row, throughput "
        + ", ".join(f"{level}x{settings.calls_each(level)}" for level in settings.levels)
        + f" calls; warm pool {settings.warm_pool}"
    )
    print(
        "method: one MCP session per principal, only the tool call timed (after initialize and "
        "tools/list); raw rows "
        "run `bash -c CMD` as 1000:1000 in /workspace, the gateway runs `timeout ... bash -c CMD`; "
        f"raw rows use the same hardened create body; {LIFTED}"
    )
    print()
    print(report.render(summaries))
    print(report.LEGEND)
    print()
    for line in lines:
        print(line)
    errors = sum(len(one.errors) for one in ordered)
    if status != "ok":
        print(f"run {status}")
    if json_path is not None:
        document = {
            "run_id": run.run_id,
            "status": status,
            "machine": machine,
            "settings": settings.__dict__ | {"levels": list(settings.levels)},
            "gateway_ids": run.gateway_ids,
            "rows": summaries,
            "targets": goals,
            "cleanup": forced,
        }
        json_path.write_text(json.dumps(_finite(document), indent=2))
    if forced:
        print("cleaned up after the run: " + "; ".join(forced))
    if status == "ok" and errors == 0 and not forced:
        shutil.rmtree(run.workdir, ignore_errors=True)
        return 0
    print(f"gateway logs and audit files kept in {run.workdir}")
    return 130 if status == "interrupted" else 1


def _finite(value: Any) -> Any:
    """NaN (nothing measured) as null, so the file is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
