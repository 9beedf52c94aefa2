"""The benchmark's optional parts: `--parts`, and llm-sandbox's comparison rows from its probe's output."""

from __future__ import annotations

import sys

import pytest

from bench import comparison, report
from bench.output import ordered_rows
from bench.settings import PARTS, parse


def test_parts_default_to_everything_and_keep_their_order() -> None:
    assert parse([])[0].parts == PARTS
    assert parse(["--parts", "stages,raw"])[0].parts == ("raw", "stages")


def test_an_unknown_part_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse(["--parts", "raw,nothing"])
    assert "nothing" in capsys.readouterr().err


def test_the_probe_document_becomes_the_table_rows() -> None:
    document = {
        "version": "9.9",
        "rows": {
            "true": {"latencies_ms": [3.0, 1.0, 2.0], "errors": []},
            "print(1)": {"latencies_ms": [5.0], "errors": ["exit code 1, stdout ''"]},
        },
    }
    true, python = comparison.rows_from(document)
    assert (true.workload, true.variant) == ("true", comparison.LLM_SANDBOX)
    assert true.summary()["p50_ms"] == 2.0 and true.summary()["errors"] == 0
    assert python.workload == "python3 -c 'print(1)'" and python.errors == ["exit code 1, stdout ''"]
    assert "llm-sandbox 9.9" in true.note and 'run("print(1)")' in python.note


def test_a_missing_probe_row_is_an_error() -> None:
    true, python = comparison.rows_from({"version": "1", "rows": {"true": {"latencies_ms": [1.0]}}})
    assert not true.errors and python.errors == ["the probe returned no 'print(1)' row"]


def test_without_llm_sandbox_the_rows_are_skipped_with_a_note() -> None:
    if comparison.llm_sandbox_version(sys.executable) is not None:
        pytest.skip("llm-sandbox is installed next to the project here")
    rows, version = comparison.llm_sandbox_rows(
        sys.executable, image="unused", socket_path="/nonexistent", samples=1, labels={}
    )
    assert version is None
    assert [row.note.startswith("skipped: llm-sandbox") for row in rows] == [True, True]
    assert all(not row.latencies_ms and not row.errors for row in rows)


def test_the_llm_sandbox_rows_are_in_the_table_next_to_the_raw_rows() -> None:
    rows = report.expected_rows((1,))
    assert rows[:5] == [
        ("true", report.RAW_PROXY),
        ("true", report.RAW_UNIX),
        ("true", comparison.LLM_SANDBOX),
        ("true", report.FAST),
        ("true", report.FALLBACK),
    ]
    assert ("1 MB output", comparison.LLM_SANDBOX) not in rows
    assert [row.note for row in ordered_rows([], (1,))] == ["not run"] * len(rows)
