"""Run every variant side by side on one engine and print the tables (see `python -m bench --help`).

Order: raw `exec_run` through the socket proxy and the unix socket; llm-sandbox's session when an
interpreter has it; then, per exec path (agent, exec), a gateway with a warm pool (warm calls,
`sandbox_info`, first calls, throughput, bystanders); last, a gateway with its spans exported, for
the per-stage breakdown. `--parts` picks some of these. Every container is removed at the end, also
after an error or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import signal
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import anyio

from bench import comparison, report
from bench.calls import WORKLOADS
from bench.gateways import (
    NOPOOL,
    PROFILE,
    AuditTail,
    BenchGateway,
    start_gateway,
    stop_gateway,
)
from bench.machine import describe
from bench.otlp import TraceReceiver
from bench.output import ordered_rows, print_results, write_json
from bench.phases import gateway_phase, progress, raw_first, raw_warm, unix_skipped
from bench.raw import RAW_LABEL, RawEngine
from bench.settings import Settings, parse
from bench.stage_phase import stage_breakdown, start_stage_gateway
from bench.stats import Series
from gateway.backend.create_body import LABEL_PREFIX

__all__ = ["main"]

T = TypeVar("T")


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
        self.skip_unix = ""

    def gateway(self, path: str, exec_path: str) -> BenchGateway:
        settings = self.settings
        principals = {f"warm-{i}": PROFILE for i in range(len(WORKLOADS))} | {
            "info": PROFILE,
            "stateful": PROFILE,
            "stream": PROFILE,
        }
        for i in range(settings.first_calls):
            principals |= {f"first-pool-{i}": PROFILE, f"first-nopool-{i}": NOPOOL}
        principals |= {f"tp-{i}": PROFILE for i in range(max(settings.levels))}
        principals |= {f"nb-{i}": PROFILE for i in range(settings.neighbours)} | {"bystander": PROFILE}
        progress(f"starting a gateway: {path}, warm pool of {settings.warm_pool}")
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
        settings, parts = self.settings, self.settings.parts
        proxy = RawEngine(settings.docker_host, self.run_id)
        self.engines.append(proxy)  # also the client that sweeps the gateways' sandboxes at the end
        if "raw" in parts:
            progress(f"raw exec_run through {settings.docker_host}")
            self.series += raw_warm(proxy, report.RAW_PROXY, settings.samples)
            progress("raw create+start+exec_run through the proxy")
            self.series.append(raw_first(proxy, settings.first_calls))
        unix = self._unix_engine()
        if "raw" in parts and unix is not None:
            progress(f"raw exec_run through {unix.base_url}")
            self.series += raw_warm(unix, report.RAW_UNIX, settings.samples)
        if "llm-sandbox" in parts:
            self._llm_sandbox(unix)
        if "gateways" in parts:
            for path, exec_path in ((report.FAST, "agent"), (report.FALLBACK, "exec")):
                gateway = self.gateway(path, exec_path)
                tail = AuditTail(gateway.audit_log)
                try:
                    self.series += (
                        self._phase(gateway_phase, gateway, tail, settings, path, self.extras) or []
                    )
                finally:
                    self._stop(gateway)
        if "stages" in parts:
            self._stages()

    def _unix_engine(self) -> RawEngine | None:
        """A client on the engine's own socket (raw rows, llm-sandbox rows), or None with the raw
        unix rows noted as skipped."""
        socket_path = self.settings.unix_socket
        if not socket_path or not os.access(socket_path, os.R_OK | os.W_OK):
            self.skip_unix = "--unix-socket ''" if not socket_path else f"no access to {socket_path}"
            self.series += unix_skipped(self.skip_unix)
            return None
        unix = RawEngine(f"unix://{socket_path}", self.run_id)
        self.engines.append(unix)  # its clean-up also finds llm-sandbox's container (same labels)
        return unix

    def _llm_sandbox(self, unix: RawEngine | None) -> None:
        if unix is None:
            self.series += comparison.skipped(self.skip_unix)
            return
        python = comparison.interpreter(self.settings.llm_sandbox_python)
        progress(f"llm-sandbox session through {unix.base_url} ({python})")
        rows, version = comparison.llm_sandbox_rows(
            python,
            image=unix.image,
            socket_path=self.settings.unix_socket,
            samples=self.settings.samples,
            labels={f"{LABEL_PREFIX}.managed": "true", RAW_LABEL: self.run_id},
        )
        self.series += rows
        self.extras["llm_sandbox"] = {"python": python, "version": version, "image": unix.image}
        if version is None:
            progress(rows[0].note)

    def _stages(self) -> None:
        gateway_id = f"bench-{self.run_id}-stages"
        self.gateway_ids.append(gateway_id)  # swept at the end even if the start is interrupted
        with TraceReceiver() as receiver:
            progress(f"starting a gateway with spans exported to {receiver.endpoint}")
            gateway = start_stage_gateway(
                self.workdir / "stages",
                receiver,
                gateway_id=gateway_id,
                docker_host=self.settings.docker_host,
            )
            self.gateways.append(gateway)
            try:
                progress(f"per-stage breakdown, {self.settings.samples} calls per workload")
                stages = self._phase(stage_breakdown, gateway, receiver, self.settings.samples)
            finally:
                self._stop(gateway)  # while the receiver still listens: the last spans are flushed
        if stages is not None:
            self.extras["stages"] = stages

    def _phase(self, phase: Callable[..., Awaitable[T]], *args: Any) -> T | None:
        result = anyio.run(_cancellable, phase, *args)
        if _Phase.interrupted:
            raise KeyboardInterrupt
        return result

    @staticmethod
    def _stop(gateway: BenchGateway) -> None:
        progress(f"stopping the gateway ({gateway.label})")
        if not stop_gateway(gateway):
            progress(f"the gateway ({gateway.label}) did not stop on SIGTERM and was killed")

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


async def _cancellable(phase: Callable[..., Awaitable[T]], *args: Any) -> T | None:
    """The phase's result, or None when it was cancelled."""
    with anyio.CancelScope() as scope:
        _Phase.scope, _Phase.loop = scope, asyncio.get_running_loop()
        try:
            return await phase(*args)
        finally:
            _Phase.scope = None
    return None


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
    settings, json_path = parse(argv)
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
        progress("interrupted: cleaning up")
    except Exception as exc:  # noqa: BLE001 - the top boundary: report, clean up, fail
        status = f"failed: {type(exc).__name__}: {exc}"
        progress(status)
    finally:
        forced = run.close()
        for line in forced:
            progress(line)
    ordered = ordered_rows(run.series, settings.levels)
    goals = print_results(settings, machine, ordered, run.extras)
    errors = sum(len(one.errors) for one in ordered)
    errors += sum(one.get("errors", 0) for one in (run.extras.get("stages") or {}).values())
    if status != "ok":
        print(f"run {status}")
    if json_path is not None:
        write_json(
            json_path,
            run_id=run.run_id,
            status=status,
            machine=machine,
            settings=settings,
            gateway_ids=run.gateway_ids,
            ordered=ordered,
            goals=goals,
            extras=run.extras,
            forced=forced,
        )
    if forced:
        print("cleaned up after the run: " + "; ".join(forced))
    if status == "ok" and errors == 0 and not forced:
        shutil.rmtree(run.workdir, ignore_errors=True)
        return 0
    print(f"gateway logs and audit files kept in {run.workdir}")
    return 130 if status == "interrupted" else 1
