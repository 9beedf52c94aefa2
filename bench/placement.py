"""How evenly fleet placement spreads sandboxes and how many move when a host joins or leaves: a
simulation of `gateway.fleet.placement` over many hosts and principals, with no engine.

    python -m bench.placement [--hosts 1000] [--principals 100000] [--seed N] [--json FILE]
    (make bench-placement)

First the vectorised score (`bench.rendezvous`) is checked against the gateway's own functions;
the run stops if they ever disagree. Then, over `--hosts` hosts and `--principals` names:

  balance   static equal weights; free-capacity weights, placed one after another (each placement
            takes one unit of the chosen host's free capacity), on their own and with the gateway's
            bounded loads (factor `placement.BALANCE`); heterogeneous capacities (half the hosts C,
            half 2C), static capacity weights and the gateway's placement. Capacity is 1.5x the even share.
  churn     static equal weights: a host joins (which names move, and where to), a host leaves
            (which names move); naive `hash % N` placement alongside, for reference.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench.rendezvous import Fleet, best, check, chunks, hashes, host_names, principal_names
from gateway.fleet.placement import BALANCE

__all__ = ["balance", "churn", "main", "simulate"]

Ints = NDArray[np.int64]
HEADROOM = 1.5  # capacity per host, as a multiple of the even share


def balance(scenario: str, counts: Ints, expected: NDArray[np.float64]) -> dict[str, Any]:
    """Per-host counts against each host's expected count (its share of the weight)."""
    deviation = (counts - expected) / expected
    return {
        "scenario": scenario,
        "hosts": len(counts),
        "expected_per_host": float(expected.mean()),
        "min": int(counts.min()),
        "max": int(counts.max()),
        "mean": float(counts.mean()),
        "stddev": float(counts.std()),
        "stddev_pct": float(100 * deviation.std()),
        "max_dev_pct": float(100 * np.abs(deviation).max()),
        "min_dev_pct": float(100 * deviation.min()),
        "max_over_pct": float(100 * deviation.max()),
    }


def churn(case: str, before: Ints, after: Ints, hosts_after: int, *, note: str, ok: bool) -> dict[str, Any]:
    moved = int(np.count_nonzero(before != after))
    fraction = moved / len(before)
    return {
        "case": case,
        "principals": len(before),
        "moved": moved,
        "fraction": fraction,
        "times_one_over_n": fraction * hosts_after,
        "n": hosts_after,
        "note": note,
        "ok": ok,
    }


def simulate(hosts: int, principals: int, seed: int, chunk: int = 2048) -> dict[str, Any]:
    """Every scenario; the figures as one JSON-ready document (timings included)."""
    started = time.perf_counter()
    equivalence = check(seed)
    if not equivalence["equal"]:
        raise RuntimeError(f"the vectorised score disagrees with gateway.fleet.placement: {equivalence}")
    checked = time.perf_counter()
    rng = np.random.default_rng(seed)
    leaving = int(rng.integers(hosts))
    name_hashes = hashes(principal_names(principals, seed))
    host_hashes = hashes(host_names(hosts + 1, seed))  # the last one is the host that joins
    even = principals / hosts
    equal_capacity = np.full(hosts, math.ceil(HEADROOM * even), dtype=np.int64)
    small = math.ceil(even)  # half the hosts `small`, half twice that: 1.5x the even share in all
    mixed_capacity = np.where(np.arange(hosts) % 2 == 0, small, 2 * small).astype(np.int64)
    fleets = {
        "free": Fleet(equal_capacity),
        "gateway": Fleet(equal_capacity, factor=BALANCE),
        "mixed_gateway": Fleet(mixed_capacity, factor=BALANCE),
    }
    ones = np.ones(hosts + 1)
    without = ones.copy()
    without[leaving] = 0.0  # a weight of 0 never wins: the host is gone
    static, joined, left, mixed_static = (np.empty(principals, dtype=np.int64) for _ in range(4))
    for start, logs in chunks(name_hashes, host_hashes, chunk):
        rows = slice(start, start + len(logs))
        base = logs[:, :hosts]
        static[rows] = best(base, ones[:hosts])
        joined[rows] = best(logs, ones)
        left[rows] = best(base, without[:hosts])
        mixed_static[rows] = best(base, mixed_capacity.astype(np.float64))
        for row in base:
            for fleet in fleets.values():
                fleet.place(row)
    simulated = time.perf_counter()

    def counts(chosen: Ints) -> Ints:
        return np.bincount(chosen, minlength=hosts).astype(np.int64)

    flat = np.full(hosts, even)
    by_capacity = principals * mixed_capacity / mixed_capacity.sum()
    halves = {f"capacity {small}": mixed_capacity == small, f"capacity {2 * small}": mixed_capacity != small}
    rows_out = [
        balance("static, equal weights", counts(static), flat),
        balance(f"free capacity ({equal_capacity[0]}/host), sequential", fleets["free"].used, flat),
        balance(f"free capacity + bounded loads {BALANCE} (gateway)", fleets["gateway"].used, flat),
    ]
    shares: dict[str, Any] = {}
    for label, used in (
        ("static capacity weights", counts(mixed_static)),
        ("gateway", fleets["mixed_gateway"].used),
    ):
        for half, mask in halves.items():
            rows_out.append(balance(f"heterogeneous, {label}: {half}", used[mask], by_capacity[mask]))
        large = float(used[mixed_capacity != small].sum() / principals)
        shares[label] = {
            "share_on_large_hosts": large,
            "expected": float(by_capacity[mixed_capacity != small].sum() / principals),
        }

    on_leaving = static == leaving
    moved_to_new = joined[static != joined]
    only_leaving = bool(np.array_equal(static != left, on_leaving))
    modulo = (name_hashes % np.uint64(hosts)).astype(np.int64)
    modulo_joined = (name_hashes % np.uint64(hosts + 1)).astype(np.int64)
    staying = np.array([j for j in range(hosts) if j != leaving], dtype=np.int64)
    modulo_left = staying[(name_hashes % np.uint64(hosts - 1)).astype(np.int64)]
    elsewhere = int(np.count_nonzero(moved_to_new != hosts))
    joins = f"all to the new host: {elsewhere == 0} ({elsewhere} elsewhere)"
    leaves = f"exactly the leaving host's {int(on_leaving.sum())}: {only_leaving}"
    churn_rows = [
        churn("rendezvous: a host joins", static, joined, hosts + 1, note=joins, ok=elsewhere == 0),
        churn("rendezvous: a host leaves", static, left, hosts, note=leaves, ok=only_leaving),
        churn(
            "modulo: a host joins",
            modulo,
            modulo_joined,
            hosts + 1,
            note="hash % (N+1) for hash % N",
            ok=True,
        ),
        churn(
            "modulo: a host leaves", modulo, modulo_left, hosts, note="hash % (N-1) over the rest", ok=True
        ),
    ]
    return {
        "settings": {"hosts": hosts, "principals": principals, "seed": seed, "leaving_host": leaving},
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__},
        "equivalence": equivalence,
        "balance": rows_out,
        "capacity_shares": shares,
        "churn": churn_rows,
        "seconds": {
            "check": checked - started,
            "simulation": simulated - checked,
            "total": time.perf_counter() - started,
        },
    }


def render(document: dict[str, Any]) -> str:
    """The figures as a readable text table."""
    settings, eq, seconds = document["settings"], document["equivalence"], document["seconds"]
    machine = document["machine"]
    lines = [
        f"placement simulation: {settings['hosts']} hosts, {settings['principals']} principals, "
        f"seed {settings['seed']}; {machine['cores']} cores, Python {machine['python']}, "
        f"numpy {machine['numpy']}",
        f"check against gateway.fleet.placement: best host of {eq['names']} names over {eq['hosts']} hosts "
        f"(equal and random weights) {eq['best_host_mismatches']} mismatches, largest score difference "
        f"{eq['max_score_relative_difference']:.1e} (relative); {eq['sequence_placements']} placements in "
        f"sequence with bounded loads {eq['sequence_mismatches']} mismatches",
        "",
        f"{'balance (principals per host)':<52} {'hosts':>5} {'even':>7} {'min':>5} {'max':>5} {'mean':>7} "
        f"{'stddev':>7} {'sd %':>6} {'low %':>7} {'high %':>7} {'max dev %':>9}",
    ]
    for row in document["balance"]:
        lines.append(
            f"{row['scenario']:<52} {row['hosts']:>5} {row['expected_per_host']:>7.1f} {row['min']:>5} "
            f"{row['max']:>5} {row['mean']:>7.1f} {row['stddev']:>7.2f} {row['stddev_pct']:>6.2f} "
            f"{row['min_dev_pct']:>+7.1f} {row['max_over_pct']:>+7.1f} {row['max_dev_pct']:>9.1f}"
        )
    lines.append(
        "  even: each host's expected count (its share of the capacity); sd/low/high/max dev: the count's "
        "deviation from it, in %"
    )
    shares = document["capacity_shares"]
    lines.append(
        "  share on the larger hosts: "
        + ", ".join(
            f"{label} {100 * share['share_on_large_hosts']:.2f}% (expected {100 * share['expected']:.2f}%)"
            for label, share in shares.items()
        )
    )
    lines += ["", f"{'churn':<28} {'moved':>7} {'fraction':>9} {'x 1/N':>8} {'N':>5}  note"]
    for row in document["churn"]:
        lines.append(
            f"{row['case']:<28} {row['moved']:>7} {row['fraction']:>9.5f} {row['times_one_over_n']:>8.2f} "
            f"{row['n']:>5}  {row['note']}{'' if row['ok'] else '  (NOT AS EXPECTED)'}"
        )
    lines += [
        "",
        f"time: check {seconds['check']:.1f} s, simulation {seconds['simulation']:.1f} s, "
        f"total {seconds['total']:.1f} s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.placement", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--hosts", type=int, default=1000, help="hosts in the fleet (default 1000)")
    parser.add_argument("--principals", type=int, default=100_000, help="names to place (default 100000)")
    parser.add_argument("--seed", type=int, default=0, help="names the hosts and principals (default 0)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.hosts < 2 or args.principals < 1:
        parser.error("needs at least 2 hosts and 1 principal")
    document = simulate(args.hosts, args.principals, args.seed)
    print(render(document))
    if args.json is not None:
        args.json.write_text(json.dumps(document, indent=2))
    return 0 if all(row["ok"] for row in document["churn"]) else 1


if __name__ == "__main__":
    sys.exit(main())
