"""What the gateway takes from a run_python RESULT: the agent's summary and the interpreter's answer
are untrusted (the code owns the interpreter), so each field is checked and capped, images must be
real PNGs within the caps, and only allow-listed types pass."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from typing import Any

import pytest

from gateway.backend.interpreter_results import RichOutput, decode_result
from gateway.errors import AgentFailure
from policy.interpreter_model import InterpreterLimits

CAPS = InterpreterLimits(max_images=2, max_image_bytes=400, max_text_chars=50, max_value_chars=20).caps()


def png(width: int = 3, height: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + b"\x00\x00\xff" * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def result(summary: dict[str, Any] | bytes, answer: dict[str, Any] | bytes | None = None) -> bytes:
    line = summary if isinstance(summary, bytes) else json.dumps(summary).encode()
    if answer is None:
        return line + b"\n"
    return line + b"\n" + (answer if isinstance(answer, bytes) else json.dumps(answer).encode())


def answer(**fields: Any) -> dict[str, Any]:
    return {"id": 7, "value": None, "error": None, "rich": [], **fields}


def test_a_plain_answer_is_taken_as_sent() -> None:
    summary, got = decode_result(result({"new": True, "stdout_bytes": 3}, answer(value="42")), 7, CAPS)
    assert summary["new_interpreter"] is True and summary["stdout_bytes"] == 3
    assert summary["previous_end"] is None and summary["end"] is None
    assert got["value"] == "42" and got["error"] is None and got["rich"] == ()


@pytest.mark.parametrize("line", [b"", b"[]", b"not json", b'"x"', b"\xff\xfe"])
def test_a_summary_that_is_not_an_object_fails_the_call_without_running_it_again(line: bytes) -> None:
    with pytest.raises(AgentFailure):
        decode_result(line + b"\n{}", 7, CAPS)


def test_summary_fields_of_the_wrong_type_read_as_their_safe_value() -> None:
    lying = {"new": "yes", "interrupted": 1, "deadline_hit": [], "stdout_bytes": -5, "stderr_bytes": True}
    summary, _ = decode_result(result(lying, answer()), 7, CAPS)
    assert (summary["new_interpreter"], summary["interrupted"], summary["deadline_hit"]) == (
        False,
        False,
        False,
    )
    assert (summary["stdout_bytes"], summary["stderr_bytes"]) == (0, 0)


def test_an_end_with_an_unknown_reason_or_a_wild_status_reads_as_died() -> None:
    summary, got = decode_result(result({"ended": {"reason": "oom<script>", "exit_code": 9999}}), 7, CAPS)
    assert summary["end"].reason == "died" and summary["end"].exit_code is None and got == {}
    summary, _ = decode_result(result({"previous": {"reason": "idle", "exit_code": 137}}), 7, CAPS)
    assert (summary["previous_end"].reason, summary["previous_end"].exit_code) == ("idle", 137)


def test_an_answer_after_an_end_is_ignored() -> None:
    _, got = decode_result(result({"ended": {"reason": "died"}}, answer(value="ghost")), 7, CAPS)
    assert got == {}


@pytest.mark.parametrize("raw", [b"nope", b"[1]", json.dumps(answer(id=8)).encode(), b'{"id": "7"}'])
def test_an_answer_that_is_malformed_or_for_another_call_is_an_error_not_a_value(raw: bytes) -> None:
    _, got = decode_result(result({}, raw), 7, CAPS)
    assert got["error"].type == "InterpreterError" and "value" not in got


def test_values_and_texts_are_capped() -> None:
    rich = [{"mime": "text/markdown", "data": "m" * 500}]
    error = {"type": "E" * 1000, "message": "x" * 10_000, "traceback": 5}
    _, got = decode_result(result({}, answer(value="v" * 1000, rich=rich, error=error)), 7, CAPS)
    assert len(got["value"]) <= 20 + 64 + 1 and len(got["rich"][0].data) <= 50 + 64 + 1
    assert (
        len(got["error"].type) <= 201 and len(got["error"].message) <= 4097 and got["error"].traceback == ""
    )


def test_a_real_png_passes_with_its_size() -> None:
    data = base64.b64encode(png(5, 4)).decode()
    _, got = decode_result(result({}, answer(rich=[{"mime": "image/png", "data": data}])), 7, CAPS)
    assert got["rich"] == (RichOutput("image/png", png(5, 4), 5, 4),) and got["refused"] == ()


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ("not base64!", "not valid base64"),
        (base64.b64encode(b"<svg onload=alert(1)>").decode(), "not a PNG"),
        (base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 30).decode(), "not a PNG"),
        (base64.b64encode(png()[:-12]).decode(), "not a PNG"),
        (base64.b64encode(png()[:40] + b"IEND\xaeB`\x82").decode(), "not a PNG"),
        (12345, "not a PNG"),
    ],
)
def test_an_image_that_is_not_a_png_is_refused(data: object, why: str) -> None:
    _, got = decode_result(result({}, answer(rich=[{"mime": "image/png", "data": data}])), 7, CAPS)
    assert got["rich"] == () and len(got["refused"]) == 1 and why in got["refused"][0]


def test_images_beyond_the_count_or_the_bytes_are_refused() -> None:
    small = base64.b64encode(png()).decode()
    big = base64.b64encode(png(200, 200)).decode()
    rich = [{"mime": "image/png", "data": d} for d in (small, big, small, small)]
    _, got = decode_result(result({}, answer(rich=rich)), 7, CAPS)
    assert [r.width for r in got["rich"]] == [3, 3]
    assert got["refused"] == ("an image above this call's image cap was refused",) * 2


@pytest.mark.parametrize(
    "mime", ["application/javascript", "text/html; charset=x", "IMAGE/PNG", "", "image/jpeg"]
)
def test_types_outside_the_allow_list_are_refused(mime: str) -> None:
    _, got = decode_result(result({}, answer(rich=[{"mime": mime, "data": "x"}])), 7, CAPS)
    assert got["rich"] == () and got["refused"] == (f"an output of type {mime!r} was refused",)


def test_malformed_outputs_are_refused_and_a_flood_is_cut() -> None:
    rich: list[Any] = ["x", {"data": "no mime"}, {"mime": "text/plain", "data": 5}]
    rich += [{"mime": "text/plain", "data": "n"}] * 100
    _, got = decode_result(result({}, answer(rich=rich)), 7, CAPS)
    assert got["refused"][:3] == ("a malformed output was refused",) * 2 + (
        "an output of type 'text/plain' was refused",
    )
    assert len(got["rich"]) == 2 + 32 - 3 and got["refused"][-1] == "69 more outputs were not shown"


def test_only_plain_text_can_be_a_note() -> None:
    rich = [
        {"mime": "text/markdown", "data": "x", "note": True},
        {"mime": "text/plain", "data": "y", "note": True},
    ]
    _, got = decode_result(result({}, answer(rich=rich)), 7, CAPS)
    assert [r.note for r in got["rich"]] == [False, True]


def test_memory_and_oom_come_from_the_agents_summary_never_from_the_answer() -> None:
    summary = {"rss_kb": 2048, "oom_kills": 3, "ended": {"reason": "died", "exit_code": 137, "oom": True}}
    fields, _ = decode_result(result(summary), 7, CAPS)
    assert (fields["memory_kb"], fields["oom_kills"], fields["end"].oom) == (2048, 3, True)
    lying = answer(rss_kb=1, threads=999, oom=True, memory_kb=5)
    fields, got = decode_result(result({"rss_kb": 4096}, lying), 7, CAPS)
    assert fields["memory_kb"] == 4096 and {"memory_kb", "oom_kills", "threads"}.isdisjoint(got)


def test_a_lone_surrogate_is_replaced_so_the_result_can_be_sent() -> None:
    error = {"type": "ValueError", "message": "\udcff", "traceback": "x\ud800"}
    rich = [{"mime": "text/markdown", "data": "| \ud800 |"}]
    _, got = decode_result(result({}, answer(value="'\udcff'", error=error, rich=rich)), 7, CAPS)
    json.dumps([got["value"], got["error"].message, got["error"].traceback, got["rich"][0].data]).encode()
    assert got["error"].message == "?" and got["rich"][0].data == "| ? |"


def test_nesting_deep_enough_to_exhaust_the_parser_is_a_malformed_answer() -> None:
    deep = b'{"id": 7, "value": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    _, got = decode_result(result({}, deep), 7, CAPS)
    assert got["error"].type == "InterpreterError"
    with pytest.raises(AgentFailure):
        decode_result(b"[" * 200_000 + b"\n", 7, CAPS)


def test_text_outputs_together_stay_within_a_total() -> None:
    caps = InterpreterLimits(max_text_chars=400_000).caps()
    rich = [{"mime": "text/html", "data": "h" * 400_000}] * 5
    _, got = decode_result(result({}, answer(rich=rich)), 7, caps)
    assert sum(len(r.data) for r in got["rich"]) <= 1024 * 1024 and len(got["rich"]) == 2
    assert got["refused"] == ("a text output beyond this call's total for text was refused",) * 3
