"""The gateway's clients to upstream MCP servers, against two real ones (no Docker): notes over
streamable HTTP behind a bearer token or OAuth, calc over stdio, started by the client itself."""

from __future__ import annotations

import inspect
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from gateway.cli import main
from gateway.errors import (
    InvalidArgument,
    UpstreamFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamUnknown,
)
from gateway.upstream import Upstreams, load_upstreams
from tests.support.net import free_port
from tests.support.upstreams import (
    NOTES_TOOLS,
    RunningUpstreams,
    calc_entry,
    notes_entry,
    notes_server,
    running_upstreams,
    write_upstreams,
)
from tests.support.waiting import eventually, eventually_async

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningUpstreams]:
    with running_upstreams(tmp_path_factory.mktemp("upstreams")) as servers:
        yield servers


def _alive(pid: int) -> bool:
    """Whether a process (even a zombie nobody reaped) has this pid."""
    return Path(f"/proc/{pid}").exists()


def _children_running(script: str) -> list[int]:
    """Processes below this one (a stdio server runs under the gateway's stdio_guard) whose command
    line names `script`."""
    parents, named = {}, []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, ppid = int(stat.parent.name), int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        parents[pid] = ppid
        if script in cmdline:
            named.append(pid)

    def below_us(pid: int) -> bool:
        for _ in range(8):
            pid = parents.get(pid, 0)
            if pid == os.getpid():
                return True
        return False

    return sorted(pid for pid in named if below_us(pid))


async def _pid(upstreams: Upstreams) -> int:
    result = await upstreams.call("calc", "pid", {}, timeout_s=10)
    assert result.structured is not None
    return int(result.structured["result"])


async def test_tools_are_listed_and_called_on_both_transports(running: RunningUpstreams) -> None:
    async with Upstreams(load_upstreams(running.file)) as upstreams:
        assert upstreams.servers() == ["notes", "calc"]
        assert upstreams.connected("notes") and upstreams.connected("calc")
        notes = await upstreams.list_tools("notes")
        assert [t.name for t in notes] == NOTES_TOOLS  # add_tool is not exposed
        search = notes[0]
        assert search.server == "notes" and search.description.startswith("Search notes by words")
        assert search.input_schema["required"] == ["query"] and search.output_schema is not None
        calc = {t.name for t in await upstreams.list_tools("calc")}
        assert {"add", "multiply", "stats"} <= calc

        found = await upstreams.call("notes", "search_notes", {"query": "gateway", "limit": 1}, timeout_s=10)
        assert not found.is_error and found.structured == {"result": [{"id": "n2", "title": "Meeting notes"}]}
        note = await upstreams.call("notes", "read_note", {"id": "n3"}, timeout_s=10)
        assert note.structured == {
            "id": "n3",
            "title": "Gateway ideas",
            "body": "upstream tools in the sandbox",
        }
        assert note.content[0]["type"] == "text" and '"title": "Gateway ideas"' in note.text
        as_json = {"content": note.content, "structuredContent": note.structured, "isError": False}
        assert note.size == len(json.dumps(as_json, ensure_ascii=False, separators=(",", ":")).encode())
        leak = await upstreams.call("notes", "leak_secret", {}, timeout_s=10)
        assert "AKIAABCDEFGHIJKLMNOP" in leak.text
        stats = await upstreams.call("calc", "stats", {"values": [1, 2, 6]}, timeout_s=10)
        assert stats.structured == {"mean": 3.0, "min": 1.0, "max": 6.0}
        product = await upstreams.call("calc", "multiply", {"a": 6, "b": 7}, timeout_s=10)
        assert product.structured == {"result": 42.0}


async def test_an_error_result_is_returned_not_raised(running: RunningUpstreams) -> None:
    async with Upstreams(load_upstreams(running.file)) as upstreams:
        failed = await upstreams.call("notes", "fail", {}, timeout_s=10)
        assert failed.is_error and "this tool always fails" in failed.text and failed.structured is None
        invalid = await upstreams.call("calc", "add", {"a": 1, "b": "two"}, timeout_s=10)
        assert invalid.is_error


@pytest.mark.parametrize("auth", ["wrong-token", "none"])
async def test_without_the_right_bearer_token_the_server_is_unavailable(
    running: RunningUpstreams, tmp_path: Path, auth: str, caplog: pytest.LogCaptureFixture
) -> None:
    file = write_upstreams(tmp_path / "up.yaml", {"notes": notes_entry(running.notes, auth=auth)})  # type: ignore[arg-type]
    caplog.set_level(logging.DEBUG)
    async with Upstreams(load_upstreams(file)) as upstreams:
        assert not upstreams.connected("notes")
        with pytest.raises(UpstreamUnavailable) as refused:
            await upstreams.list_tools("notes")
        assert "refused the gateway's credentials (HTTP 401)" in refused.value.message
        assert refused.value.code == "upstream-unavailable"
    for secret in ("not-the-token", running.notes.token_file.read_text().strip()):
        assert secret not in caplog.text and secret not in refused.value.message


async def test_a_timeout_cancels_the_call_and_the_session_stays_usable(running: RunningUpstreams) -> None:
    async with Upstreams(load_upstreams(running.file)) as upstreams:
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout) as late:
            await upstreams.call("notes", "slow", {"seconds": 30}, timeout_s=0.5)
        assert time.monotonic() - started < 5 and late.value.code == "upstream-timeout"
        assert upstreams.connected("notes")
        assert (await upstreams.call("notes", "slow", {"seconds": 0.1}, timeout_s=10)).text == "slept 0.1"


async def test_the_files_timeout_bounds_a_larger_one_asked_for(
    running: RunningUpstreams, tmp_path: Path
) -> None:
    file = write_upstreams(tmp_path / "up.yaml", {"notes": notes_entry(running.notes, timeout_s=1)})
    async with Upstreams(load_upstreams(file)) as upstreams:
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout, match="longer than 1 s"):
            await upstreams.call("notes", "slow", {"seconds": 60}, timeout_s=3600)
        assert time.monotonic() - started < 5


async def test_a_server_that_never_answers_costs_a_call_its_timeout(tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/mcp"
        file = write_upstreams(
            tmp_path / "up.yaml", {"notes": {"transport": "http", "url": url, "tools": "*"}}
        )
        upstreams = Upstreams(load_upstreams(file))
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await upstreams.call("notes", "read_note", {"id": "n1"}, timeout_s=1)
        await upstreams.aclose()
        assert time.monotonic() - started < 5


async def test_a_killed_stdio_server_is_restarted_on_the_next_call(running: RunningUpstreams) -> None:
    async with Upstreams(load_upstreams(running.file)) as upstreams:
        first = await _pid(upstreams)
        os.kill(first, signal.SIGKILL)
        await eventually_async(
            lambda: not upstreams.connected("calc"), message="the client did not see the end"
        )
        second = await _pid(upstreams)
        assert second != first and _alive(second)
        eventually(lambda: not _alive(first), message="the killed server was not reaped")
        assert (await upstreams.call("calc", "add", {"a": 2, "b": 3}, timeout_s=10)).structured == {
            "result": 5.0
        }


async def test_aclose_leaves_no_process_behind(running: RunningUpstreams) -> None:
    upstreams = Upstreams(load_upstreams(running.file))
    await upstreams.start()
    pid = await _pid(upstreams)
    assert pid in _children_running("calc_server.py")
    await upstreams.aclose()
    assert not _alive(pid), "the stdio server is still there (running or a zombie)"
    assert _children_running("calc_server.py") == []
    with pytest.raises(UpstreamUnavailable):
        await upstreams.call("calc", "add", {"a": 1, "b": 1}, timeout_s=5)


async def test_what_is_not_exposed_is_refused_before_any_traffic(tmp_path: Path) -> None:
    nothing_listens = f"http://127.0.0.1:{free_port()}/mcp"
    file = write_upstreams(
        tmp_path / "up.yaml",
        {
            "notes": {"transport": "http", "url": nothing_listens, "tools": ["search_notes"]},
            "calc": calc_entry(tools=["add"]),
        },
    )
    upstreams = Upstreams(load_upstreams(file))  # not even started
    for server, tool in [("notes", "delete_all"), ("calc", "multiply"), ("nope", "add"), ("calc", "x\ny")]:
        with pytest.raises(UpstreamUnknown) as unknown:
            await upstreams.call(server, tool, {}, timeout_s=5)
        assert unknown.value.code == "upstream-unknown"
    with pytest.raises(UpstreamUnknown):
        await upstreams.list_tools("nope")
    with pytest.raises(InvalidArgument):
        await upstreams.call("calc", "add", ["not", "an", "object"], timeout_s=5)  # type: ignore[arg-type]
    assert not upstreams.connected("notes") and not upstreams.connected("calc")
    assert _children_running("calc_server.py") == []
    await upstreams.aclose()


async def test_concurrent_calls_share_one_session(running: RunningUpstreams) -> None:
    async with Upstreams(load_upstreams(running.file)) as upstreams:
        pid = await _pid(upstreams)
        results: dict[int, float] = {}

        async def add(i: int) -> None:
            result = await upstreams.call("calc", "add", {"a": i, "b": 0.5}, timeout_s=10)
            assert result.structured is not None
            results[i] = result.structured["result"]

        async def sleep() -> None:
            assert (await upstreams.call("notes", "slow", {"seconds": 1}, timeout_s=10)).text == "slept 1.0"

        started = time.monotonic()
        async with anyio.create_task_group() as group:
            for i in range(20):
                group.start_soon(add, i)
            for _ in range(5):
                group.start_soon(sleep)
        assert results == {i: i + 0.5 for i in range(20)}
        assert time.monotonic() - started < 4, "the five 1 s calls did not run at once"
        assert await _pid(upstreams) == pid


async def test_oauth_client_credentials_are_fetched_cached_and_refreshed_on_401(tmp_path: Path) -> None:
    with running_upstreams(tmp_path, notes_auth="oauth") as servers:
        stats = f"{servers.notes.base}/admin/stats"
        async with Upstreams(load_upstreams(servers.file)) as upstreams:
            for _ in range(3):
                assert (await upstreams.call("notes", "read_note", {"id": "n1"}, timeout_s=10)).structured
            assert httpx.get(stats).json() == {"token_requests": 1}
            httpx.post(f"{servers.notes.base}/admin/revoke")
            assert (await upstreams.call("notes", "read_note", {"id": "n2"}, timeout_s=10)).structured
            assert httpx.get(stats).json() == {"token_requests": 2}


async def test_the_stdio_server_gets_only_its_configured_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SGW_TEST_GATEWAY_SECRET", "must-not-leak")
    monkeypatch.setenv("CALC_KEY_SOURCE", "from-the-gateway-env")
    env = {"FILES_ROOT": "/srv/files", "CALC_KEY": {"env": "CALC_KEY_SOURCE"}}
    file = write_upstreams(tmp_path / "up.yaml", {"calc": calc_entry(env=env, cwd=str(tmp_path))})
    async with Upstreams(load_upstreams(file)) as upstreams:
        result = await upstreams.call("calc", "environment", {}, timeout_s=10)
    seen = result.structured or {}
    assert seen["FILES_ROOT"] == "/srv/files" and seen["CALC_KEY"] == "from-the-gateway-env"
    sdk_defaults = {"HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG"}
    assert set(seen) - sdk_defaults - {"FILES_ROOT", "CALC_KEY"} <= {"LC_CTYPE"}  # Python may set LC_CTYPE
    assert "SGW_TEST_GATEWAY_SECRET" not in seen


async def test_a_tool_list_change_reaches_the_hook(tmp_path: Path) -> None:
    with running_upstreams(tmp_path, notes_tools="*") as servers:
        changed: list[str] = []

        async def hook(server: str) -> None:
            changed.append(server)

        async with Upstreams(load_upstreams(servers.file), on_tools_changed=hook) as upstreams:
            await upstreams.call("notes", "add_tool", {"name": "echo_added"}, timeout_s=10)
            await eventually_async(lambda: changed == ["notes"], message="on_tools_changed was not called")
            assert "echo_added" in {t.name for t in await upstreams.list_tools("notes")}
            echoed = await upstreams.call("notes", "echo_added", {"text": "hi"}, timeout_s=10)
            assert echoed.text == "hi"


async def test_an_unreachable_server_is_retried_and_a_restarted_one_reconnects(tmp_path: Path) -> None:
    port = free_port()
    with notes_server(tmp_path / "first", port=port) as first:
        token = first.token_file.read_text().strip()
        file = write_upstreams(tmp_path / "up.yaml", {"notes": notes_entry(first), "calc": calc_entry()})
    async with Upstreams(load_upstreams(file)) as upstreams:  # notes is down: not fatal
        assert not upstreams.connected("notes") and upstreams.connected("calc")
        with pytest.raises(UpstreamUnavailable, match=r"cannot connect to the upstream|next try in"):
            await upstreams.call("notes", "read_note", {"id": "n1"}, timeout_s=5)

        async def reads() -> bool:
            return bool((await upstreams.call("notes", "read_note", {"id": "n1"}, timeout_s=5)).structured)

        with notes_server(tmp_path / "second", port=port, token=token):
            await eventually_async(reads, timeout_s=20, retry_on=(UpstreamUnavailable,))
        with pytest.raises(UpstreamUnavailable):  # the server is gone: the session broke
            await upstreams.call("notes", "read_note", {"id": "n1"}, timeout_s=5)
        with notes_server(tmp_path / "third", port=port, token=token):
            await eventually_async(reads, timeout_s=40, retry_on=(UpstreamUnavailable,))


async def test_a_result_over_the_size_cap_is_refused(
    running: RunningUpstreams, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.upstream.clients.MAX_RESULT_BYTES", 100)
    async with Upstreams(load_upstreams(running.file)) as upstreams:
        with pytest.raises(UpstreamFailed, match="more than the 100 allowed"):
            await upstreams.call("notes", "read_note", {"id": "n1"}, timeout_s=10)
        assert (await upstreams.call("calc", "add", {"a": 1, "b": 1}, timeout_s=10)).size < 100


def test_tools_generate_writes_modules_from_the_real_servers(
    running: RunningUpstreams, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tools"
    assert main(["tools", "generate", "--upstreams", str(running.file), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "notes: 5 tool(s): fail, leak_secret, read_note, search_notes, slow" in printed
    source = (out / "notes" / "search_notes.py").read_text()
    assert "def search_notes(*, query: str, limit: int | None = None) -> Any:" in source
    assert "def stats(*, values: list[float]) -> Any:" in (out / "calc" / "stats.py").read_text()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["tools", "generate", "--upstreams", str(running.file), "--out", str(out)]) == 0
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert inspect.cleandoc(source.split('"""')[1]).startswith("Search notes by words")


def test_tools_generate_says_which_server_it_could_not_list(
    running: RunningUpstreams, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = write_upstreams(tmp_path / "up.yaml", {"notes": notes_entry(running.notes, auth="none")})
    assert main(["tools", "generate", "--upstreams", str(file), "--out", str(tmp_path / "out")]) == 1
    assert "notes: unavailable, its modules were kept" in capsys.readouterr().err
