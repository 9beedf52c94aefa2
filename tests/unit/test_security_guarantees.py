"""SECURITY.md's guarantees each name the tests that prove them; those tests must exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_ROW = re.compile(r"^\| (\d+) \|(.*)\|(.*)\|\s*$")
_FILE = re.compile(r"`(tests/[\w/]+\.py)((?:::\w+)?)`|`::(\w+)`")


def _rows() -> list[tuple[int, str]]:
    rows = []
    for line in (ROOT / "SECURITY.md").read_text().splitlines():
        match = _ROW.match(line)
        if match:
            rows.append((int(match.group(1)), match.group(3)))
    return rows


def test_the_guarantees_are_numbered_without_gaps_or_repeats() -> None:
    numbers = sorted(number for number, _ in _rows())
    assert numbers == list(range(1, len(numbers) + 1))


@pytest.mark.parametrize(("number", "cell"), _rows(), ids=[str(n) for n, _ in _rows()])
def test_each_guarantee_names_tests_that_exist(number: int, cell: str) -> None:
    current: Path | None = None
    named = 0
    for match in _FILE.finditer(cell):
        path, function, bare = match.group(1), match.group(2), match.group(3)
        if path is not None:
            current = ROOT / path
            assert current.is_file(), f"guarantee {number}: {path} does not exist"
            named += 1
        name = (function or "").removeprefix("::") or bare
        if name:
            assert current is not None, f"guarantee {number}: ::{name} names no file"
            assert re.search(rf"def {name}\(", current.read_text()), (
                f"guarantee {number}: {name} not in {current}"
            )
    assert named or re.search(r"\bP\d\b", cell), f"guarantee {number} names no test file (nor a P row)"
