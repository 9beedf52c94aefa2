"""run_python end to end: a real gateway process on the shared engine (through the socket proxy), the
SDK client over streamable HTTP, the default sandbox image.

State lives across calls; a timeout interrupts and keeps it; code that will not stop, an OOM or a
reset lose it, and the next call says why; each principal has an interpreter of its own; what the
interpreter sends is checked before it reaches the client; every call is audited.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.types import ImageContent

from tests.e2e.conftest import Gateway, mcp_client
from tests.support import audit_events, eventually

pytestmark = pytest.mark.anyio

#: A 3x2 PNG made with the standard library, as an object's _repr_png_ would return it.
_TINY_PNG = """
import struct, zlib
def _chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
class Tiny:
    def _repr_png_(self):
        raw = b''.join(b'\\x00' + b'\\xff\\x00\\x00' * 3 for _ in range(2))
        ihdr = struct.pack('>IIBBBBB', 3, 2, 8, 2, 0, 0, 0)
        body = _chunk(b'IHDR', ihdr) + _chunk(b'IDAT', zlib.compress(raw)) + _chunk(b'IEND', b'')
        return b'\\x89PNG\\r\\n\\x1a\\n' + body
    def _repr_markdown_(self):
        return '**tiny**'
"""


async def run(client: Client, code: str, **arguments: Any) -> tuple[dict[str, Any], list[ImageContent]]:
    answer = await client.call_tool("run_python", {"code": code, **arguments})
    assert not answer.is_error, answer.content
    assert answer.structured_content is not None
    images = [block for block in answer.content if isinstance(block, ImageContent)]
    return answer.structured_content, images


async def test_run_python_is_listed_with_its_output_schema(gateway: Gateway) -> None:
    async with mcp_client(gateway.url, gateway.tokens["alice"]) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    schema = tools["run_python"].output_schema or {}
    assert {"value", "error", "outputs", "state_lost", "interrupted", "new_interpreter"} <= set(
        schema["properties"]
    )


async def test_a_variable_set_in_one_call_is_read_in_the_next(gateway: Gateway) -> None:
    async with mcp_client(gateway.url, gateway.tokens["alice"]) as client:
        await run(client, "reset = 1")  # whatever an earlier test left, from here on it is this state
        first, _ = await run(client, "import math\nx = 41\nprint('set')")
        second, _ = await run(client, "x += 1\nmath.sqrt(x * x)")
    assert first["stdout"] == "set\n" and first["value"] is None and first["error"] is None
    assert second["value"] == "42.0" and second["new_interpreter"] is False
    assert second["state_lost"] is False and second["state_lost_reason"] is None


async def test_an_exception_shows_its_traceback_of_the_codes_own_frames(gateway: Gateway) -> None:
    async with mcp_client(gateway.url, gateway.tokens["alice"]) as client:
        result, _ = await run(client, "def ratio(a, b):\n    return a / b\nratio(1, 0)")
        after, _ = await run(client, "ratio(6, 3)")
    error = result["error"]
    assert error["type"] == "ZeroDivisionError" and error["message"] == "division by zero"
    assert 'File "<cell-' in error["traceback"] and "return a / b" in error["traceback"]
    assert "interpreter.py" not in error["traceback"] and "sgw_agent" not in error["traceback"]
    assert after["value"] == "2.0", "a failed call keeps what it defined"


async def test_a_timeout_interrupts_a_loop_and_the_state_survives(gateway: Gateway) -> None:
    async with mcp_client(gateway.url, gateway.tokens["alice"]) as client:
        await run(client, "n = 0")
        stopped, _ = await run(client, "while True:\n    n += 1", timeout_s=1)
        after, _ = await run(client, "n > 0")
    assert stopped["timed_out"] is True and stopped["interrupted"] is True
    assert stopped["interpreter_killed"] is False and stopped["error"]["type"] == "KeyboardInterrupt"
    assert after["value"] == "True" and after["state_lost"] is False and after["new_interpreter"] is False


async def test_code_that_ignores_the_interrupt_is_killed_and_the_next_call_says_state_was_lost(
    gateway: Gateway,
) -> None:
    stubborn = "kept = 1\nwhile True:\n    try:\n        while True:\n            pass\n"
    stubborn += "    except KeyboardInterrupt:\n        pass"
    async with mcp_client(gateway.url, gateway.tokens["bob"]) as client:
        killed, _ = await run(client, stubborn, timeout_s=1)
        after, _ = await run(client, "'kept' in globals()")
        later, _ = await run(client, "1 + 1")
    assert killed["timed_out"] is True and killed["interpreter_killed"] is True
    assert after["state_lost"] is True and after["state_lost_reason"] == "timeout"
    assert after["new_interpreter"] is True and after["value"] == "False"
    assert later["state_lost"] is False and later["new_interpreter"] is False


async def test_an_interpreter_killed_for_memory_is_reported_as_oom(gateway: Gateway) -> None:
    hog = "chunks = []\nwhile True:\n    chunks.append(bytearray(64 * 2**20))"
    async with mcp_client(gateway.url, gateway.tokens["bob"]) as client:
        await run(client, "before = 1")
        killed, _ = await run(client, hog, timeout_s=20)
        after, _ = await run(client, "'before' in globals()")
        still, _ = await client.call_tool("execute_bash", {"command": "echo the sandbox lives"}), None
    assert killed["oom_killed"] is True and killed["interpreter_killed"] is True
    assert killed["timed_out"] is False
    assert after["state_lost"] is True and after["state_lost_reason"] == "oom" and after["value"] == "False"
    assert (
        still.structured_content is not None and still.structured_content["stdout"] == "the sandbox lives\n"
    )


async def test_two_principals_interpreters_never_see_each_others_state(gateway: Gateway) -> None:
    async with (
        mcp_client(gateway.url, gateway.tokens["alice"]) as alice,
        mcp_client(gateway.url, gateway.tokens["bob"]) as bob,
    ):
        await run(alice, "secret = 'alice-only'\nimport os\nmine = os.getpid()")
        seen, _ = await run(
            bob, "import os\n'secret' in globals(), len([p for p in os.listdir('/proc') if p.isdigit()])"
        )
        again, _ = await run(alice, "secret")
    assert seen["value"] == "(False, 2)", "bob's sandbox holds its agent and its interpreter, nothing else"
    assert again["value"] == "'alice-only'"


async def test_rich_outputs_come_back_as_images_and_markdown(gateway: Gateway) -> None:
    async with mcp_client(gateway.url, gateway.tokens["alice"]) as client:
        result, images = await run(client, _TINY_PNG + "\nTiny()")
    assert [item["mime"] for item in result["outputs"]] == ["image/png", "text/markdown"]
    assert result["outputs"][0]["width"] == 3 and result["outputs"][0]["height"] == 2
    assert result["outputs"][1]["text"] == "**tiny**"
    assert len(images) == 1 and images[0].mime_type == "image/png"
    png = base64.b64decode(images[0].data)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and struct.unpack(">II", png[16:24]) == (3, 2)


async def test_what_the_interpreter_sends_is_checked_before_the_client_sees_it(gateway: Gateway) -> None:
    lying = "class Fake:\n    def _repr_png_(self):\n        return b'<script>alert(1)</script>'\nFake()"
    # The code owns its interpreter: it can answer in its name (its call id is in its cell's name).
    forged = (
        "import json, os, struct, sys\n"
        "me = int(sys._getframe().f_code.co_filename[len('<cell-'):-1])\n"
        "rich = [{'mime': 'application/x-evil', 'data': 'x'}, {'mime': 'image/png', 'data': 'aGVsbG8='}]\n"
        "data = json.dumps({'id': me, 'value': 'forged', 'rich': rich}).encode()\n"
        "os.write(4, struct.pack('>II', len(data), me) + data)\n"
        "'real'"
    )
    async with mcp_client(gateway.url, gateway.tokens["alice"]) as client:
        refused, images = await run(client, lying)
        forged_result, forged_images = await run(client, forged)
        after, _ = await run(client, "'after'")
    assert images == [] and refused["outputs"] == []
    assert refused["notes"] == ["an image that is not a PNG was refused"]
    assert forged_result["value"] == "forged" and forged_result["outputs"] == [] and forged_images == []
    assert forged_result["notes"] == [
        "an output of type 'application/x-evil' was refused",
        "an image that is not a PNG was refused",
    ]
    assert after["value"] == "'after'", "the real, late answer of the forged call answers no other call"


async def test_reset_sandbox_loses_the_state_and_the_next_call_says_so(gateway: Gateway) -> None:
    async with mcp_client(gateway.url, gateway.tokens["alice"]) as client:
        await run(client, "before_reset = 1")
        await client.call_tool("reset_sandbox", {})
        after, _ = await run(client, "'before_reset' in globals()")
    assert after["value"] == "False" and after["new_interpreter"] is True
    assert after["state_lost"] is True and after["state_lost_reason"] == "sandbox-removed"


async def test_every_call_is_audited_with_its_interpreter_facts(gateway: Gateway) -> None:
    def python_finishes() -> list[dict[str, Any]]:
        return [e for e in audit_events(gateway.audit_log, "exec.finish") if e.get("tool") == "run_python"]

    before = len(python_finishes())
    async with mcp_client(gateway.url, gateway.tokens["alice"]) as client:
        await run(client, "audited = 'yes'\n1 / 0")
    eventually(lambda: len(python_finishes()) > before)  # exec.finish is written off the call's path
    finishes = python_finishes()
    last = finishes[-1]
    assert last["outcome"]["status"] == "ok" and last["interpreter"]["error_type"] == "ZeroDivisionError"
    assert last["actor"]["principal"] == "alice"
    assert any(e.get("tool") == "run_python" for e in audit_events(gateway.audit_log, "docker.python"))
    starts = [e for e in audit_events(gateway.audit_log, "exec.start") if e.get("tool") == "run_python"]
    assert "hmac_sha256" in starts[-1]["code"], "the code is in the log as the policy says (an HMAC)"


async def test_a_client_asking_for_progress_gets_the_output_so_far(gateway: Gateway) -> None:
    notes: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        notes.append((progress, message))

    code = "import time\nfor i in (1, 2, 3):\n    print('step', i)\n    time.sleep(1.3)"
    async with mcp_client(gateway.url, gateway.tokens["alice"]) as client:
        answer = await client.call_tool("run_python", {"code": code}, progress_callback=on_progress)
    assert answer.structured_content is not None
    assert answer.structured_content["stdout"] == "step 1\nstep 2\nstep 3\n"
    assert len(notes) >= 2 and notes[0] == (len("step 1\n"), "step 1\n")


async def test_a_call_queued_behind_a_killed_one_runs_in_a_fresh_interpreter_that_is_not_reaped(
    gateway: Gateway,
) -> None:
    stubborn = "while True:\n    try:\n        while True:\n            pass\n"
    stubborn += "    except KeyboardInterrupt:\n        pass"
    results: dict[str, dict[str, Any]] = {}

    async def call(client: Client, name: str, code: str, timeout_s: float) -> None:
        results[name], _ = await run(client, code, timeout_s=timeout_s)

    async with mcp_client(gateway.url, gateway.tokens["bob"]) as client, anyio.create_task_group() as group:
        group.start_soon(call, client, "stubborn", stubborn, 1)
        await anyio.sleep(0.3)
        group.start_soon(call, client, "queued", "import time\ntime.sleep(1)\n'done'", 20)
    assert results["stubborn"]["interpreter_killed"] is True
    queued = results["queued"]
    assert queued["value"] == "'done'" and queued["interpreter_killed"] is False
    assert queued["new_interpreter"] is True and queued["state_lost_reason"] == "timeout"
