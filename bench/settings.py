"""The benchmark's command line: what to run and how many samples (see `python -m bench --help`)."""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path

from gateway.config import DEFAULT_DOCKER_HOST

__all__ = ["PARTS", "PROXY_URL", "UNIX_SOCKET", "Settings", "parse"]

PROXY_URL = DEFAULT_DOCKER_HOST
UNIX_SOCKET = "/var/run/docker.sock"
#: raw: docker exec rows; llm-sandbox: its comparison rows; gateways: the headline gateways (no span
#: exporter); stages: a gateway with spans exported, for the per-stage breakdown.
PARTS = ("raw", "llm-sandbox", "gateways", "stages")


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
    parts: tuple[str, ...] = PARTS
    llm_sandbox_python: str | None = None

    def calls_each(self, level: int) -> int:
        return max(self.min_calls_each, math.ceil(self.throughput_total / level))


def _parts(text: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(set(chosen) - set(PARTS))
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"parts are {', '.join(PARTS)}; not {', '.join(unknown) or 'none'}")
    return tuple(part for part in PARTS if part in chosen)


def parse(argv: list[str] | None) -> tuple[Settings, Path | None]:
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
    add(
        "--parts",
        type=_parts,
        default=PARTS,
        help=f"what to run, comma-separated (default all: {','.join(PARTS)}); rows of the others "
        "are printed as not run",
    )
    add(
        "--llm-sandbox-python",
        help="an interpreter that can import llm_sandbox and docker, for the comparison rows "
        "(default $SGW_BENCH_LLM_SANDBOX_PYTHON, else this one; skipped when it cannot)",
    )
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
        parts=args.parts,
        llm_sandbox_python=args.llm_sandbox_python,
    )
    return settings, args.json
