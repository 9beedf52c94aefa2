"""Weighted rendezvous placement: the same answer everywhere, shares that follow the weights, and
only the names that must move move when a host joins or leaves. The statistical bounds are five
standard deviations of a binomial share, so a correct implementation fails them about once in
three million runs, and the inputs are fixed names (the hash is deterministic): no test is flaky."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from gateway.fleet.placement import Candidate, choose, mix64, rank, score, stable_hash

ROOT = Path(__file__).resolve().parents[2]
NAMES = [f"sgw-{i:06x}" for i in range(30_000)]


def equal(*hosts: str) -> list[Candidate]:
    return [Candidate(h, 10.0) for h in hosts]


def five_sigma(p: float, n: int) -> float:
    return 5 * math.sqrt(p * (1 - p) / n)


def best(names: list[str], candidates: list[Candidate]) -> dict[str, str | None]:
    return {n: choose(n, candidates) for n in names}


# -- determinism ---------------------------------------------------------------------------------


def test_stable_hash_is_blake2b_of_the_text_not_pythons_hash() -> None:
    expected = int.from_bytes(hashlib.blake2b(b"gpu-1", digest_size=8).digest(), "big")
    assert stable_hash("gpu-1") == expected
    assert 0 <= stable_hash("") < 2**64
    assert stable_hash("a") != stable_hash("b")


def test_mix64_stays_in_64_bits_and_mixes() -> None:
    values = [mix64(v) for v in (1, 2, 3, 2**63, 2**64 - 1)]
    assert all(0 <= v < 2**64 for v in values)
    assert len(set(values)) == len(values)
    assert mix64(0) == 0  # splitmix's finaliser fixes 0: `score` keeps u > 0 all the same


def test_scores_are_positive_and_finite_even_at_the_extremes() -> None:
    for name_hash, host_hash in ((0, 0), (2**64 - 1, 0), (12345, 12345), (1, 2**63)):
        value = score(name_hash, host_hash, 1.0)
        assert 0 < value < math.inf
    assert score(7, 9, 3.0) == pytest.approx(3 * score(7, 9, 1.0))


def test_the_same_name_ranks_the_hosts_the_same_way_on_every_call() -> None:
    hosts = [Candidate("a", 1), Candidate("b", 5), Candidate("c", 2.5), Candidate("d", 7)]
    first = [rank(n, hosts) for n in NAMES[:500]]
    assert [rank(n, hosts) for n in NAMES[:500]] == first
    assert [rank(n, list(reversed(hosts))) for n in NAMES[:500]] == first, "the order of candidates is moot"
    assert all(sorted(r) == ["a", "b", "c", "d"] for r in first)
    assert len({r[0] for r in first}) == 4


_CHILD = """
import json, sys
from gateway.fleet.placement import Candidate, rank
hosts = [Candidate("a", 1), Candidate("b", 5), Candidate("c", 2.5), Candidate("d", 7)]
print(json.dumps([rank(f"sgw-{i:06x}", hosts) for i in range(200)]))
"""


@pytest.mark.parametrize("seed", ["0", "1", "4242"])
def test_another_process_with_another_hash_seed_ranks_the_same(seed: str) -> None:
    hosts = [Candidate("a", 1), Candidate("b", 5), Candidate("c", 2.5), Candidate("d", 7)]
    here = [rank(n, hosts) for n in NAMES[:200]]
    env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == here


# -- weights -------------------------------------------------------------------------------------


def test_shares_follow_the_weights() -> None:
    hosts = [Candidate("one", 1.0), Candidate("two", 2.0), Candidate("three", 3.0)]
    counts = Counter(choose(n, hosts) for n in NAMES)
    n = len(NAMES)
    for host, p in (("one", 1 / 6), ("two", 2 / 6), ("three", 3 / 6)):
        share = counts[host] / n
        assert abs(share - p) <= five_sigma(p, n), f"{host}: {share:.4f} vs {p:.4f}"


def test_the_weights_scale_free() -> None:
    """Only the ratio of weights matters: free capacities 10:20:30 place as 1:2:3."""
    small = [Candidate("one", 1.0), Candidate("two", 2.0), Candidate("three", 3.0)]
    large = [Candidate("one", 10.0), Candidate("two", 20.0), Candidate("three", 30.0)]
    assert [choose(n, small) for n in NAMES[:2000]] == [choose(n, large) for n in NAMES[:2000]]


def test_a_host_with_no_weight_is_never_chosen() -> None:
    hosts = [Candidate("full", 0.0), Candidate("a", 1.0), Candidate("minus", -3.0), Candidate("b", 1.0)]
    chosen = {choose(n, hosts) for n in NAMES[:5000]}
    assert chosen == {"a", "b"}
    assert all("full" not in rank(n, hosts) and "minus" not in rank(n, hosts) for n in NAMES[:200])


def test_no_candidate_chooses_nothing() -> None:
    assert choose("sgw-1", []) is None
    assert rank("sgw-1", []) == []
    assert choose("sgw-1", [Candidate("full", 0.0)]) is None


def test_a_tiny_weight_still_wins_sometimes() -> None:
    hosts = [Candidate("big", 1000.0), Candidate("tiny", 1.0)]
    counts = Counter(choose(n, hosts) for n in NAMES)
    p = 1 / 1001
    assert abs(counts["tiny"] / len(NAMES) - p) <= five_sigma(p, len(NAMES))
    assert counts["tiny"] > 0


# -- hosts joining and leaving -------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True])
def test_a_new_host_takes_names_only_to_itself(weighted: bool) -> None:
    before_hosts = [Candidate(f"h{i}", float(i + 1) if weighted else 1.0) for i in range(5)]
    after_hosts = [*before_hosts, Candidate("new", 3.0 if weighted else 1.0)]
    before, after = best(NAMES[:10_000], before_hosts), best(NAMES[:10_000], after_hosts)
    moved = [n for n in before if before[n] != after[n]]
    assert moved, "the new host takes some names"
    assert all(after[n] == "new" for n in moved)
    assert {n for n in after if after[n] == "new"} == set(moved)


def test_a_host_that_leaves_moves_only_its_own_names_each_to_its_next_best() -> None:
    hosts = [Candidate(f"h{i}", float(1 + i % 3)) for i in range(6)]
    without = [c for c in hosts if c.name != "h2"]
    for name in NAMES[:10_000]:
        ranked, after = rank(name, hosts), choose(name, without)
        if ranked[0] == "h2":
            assert after == ranked[1]
        else:
            assert after == ranked[0]


def test_about_one_name_in_n_moves_when_the_nth_host_joins() -> None:
    nine = equal(*(f"h{i}" for i in range(9)))
    ten = [*nine, Candidate("h9", 10.0)]
    before, after = best(NAMES, nine), best(NAMES, ten)
    moved = sum(1 for n in NAMES if before[n] != after[n]) / len(NAMES)
    assert abs(moved - 0.1) <= five_sigma(0.1, len(NAMES)), moved


def test_about_one_name_in_n_moves_when_one_of_n_hosts_leaves() -> None:
    ten = equal(*(f"h{i}" for i in range(10)))
    nine = ten[1:]
    before, after = best(NAMES, ten), best(NAMES, nine)
    moved = sum(1 for n in NAMES if before[n] != after[n]) / len(NAMES)
    assert abs(moved - 0.1) <= five_sigma(0.1, len(NAMES)), moved


def test_a_weight_change_on_one_host_moves_names_only_to_or_from_it() -> None:
    hosts = equal("a", "b", "c", "d")
    heavier = [Candidate("a", 20.0), *hosts[1:]]
    before, after = best(NAMES[:10_000], hosts), best(NAMES[:10_000], heavier)
    moved = [n for n in before if before[n] != after[n]]
    assert moved and all(after[n] == "a" for n in moved), "a heavier host only gains names"
