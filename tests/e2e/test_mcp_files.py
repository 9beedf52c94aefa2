"""write_file, read_file and list_files over MCP: confined to /workspace, binary safe, capped."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tests.e2e.conftest import Gateway, mcp_client

pytestmark = pytest.mark.anyio


async def tool(gateway: Gateway, who: str, name: str, **arguments: Any) -> Any:
    async with mcp_client(gateway.url, gateway.tokens[who]) as client:
        return await client.call_tool(name, arguments)


async def test_write_read_and_list_round_trip_text_and_binary(gateway: Gateway) -> None:
    blob = bytes(range(256)) * 4
    assert (
        await tool(gateway, "alice", "write_file", path="notes/a.txt", content="héllo\n")
    ).structured_content == {"path": "/workspace/notes/a.txt", "size": 7}
    await tool(
        gateway,
        "alice",
        "write_file",
        path="/workspace/bin.dat",
        content=base64.b64encode(blob).decode(),
        encoding="base64",
    )
    text = (await tool(gateway, "alice", "read_file", path="notes/a.txt")).structured_content
    binary = (await tool(gateway, "alice", "read_file", path="bin.dat", encoding="base64")).structured_content
    assert (text["content"], text["size"], text["truncated"]) == ("héllo\n", 7, False)
    assert base64.b64decode(binary["content"]) == blob and binary["size"] == 1024
    listing = (await tool(gateway, "alice", "list_files", path="/workspace")).structured_content
    names = {e["name"]: e for e in listing["entries"]}
    assert names["notes"]["type"] == "dir" and names["bin.dat"] == {
        "name": "bin.dat",
        "type": "file",
        "size": 1024,
    }
    shell = (
        await tool(gateway, "alice", "execute_bash", command="cat /workspace/notes/a.txt")
    ).structured_content
    assert shell["stdout"] == "héllo\n", "files tools and code see the same workspace"


async def test_read_caps_and_truncates(gateway: Gateway) -> None:
    await tool(gateway, "alice", "write_file", path="big.txt", content="x" * 10_000)
    part = (await tool(gateway, "alice", "read_file", path="big.txt", max_bytes=100)).structured_content
    assert (len(part["content"]), part["size"], part["truncated"]) == (100, 10_000, True)


@pytest.mark.parametrize(
    ("name", "arguments", "code"),
    [
        pytest.param("read_file", {"path": "../etc/passwd"}, "path-outside-workspace", id="traversal"),
        pytest.param("read_file", {"path": "/etc/passwd"}, "path-outside-workspace", id="absolute-elsewhere"),
        pytest.param(
            "write_file", {"path": "/tmp/x", "content": "x"}, "path-outside-workspace", id="write-outside"
        ),
        pytest.param("read_file", {"path": "nope.txt"}, "not-found", id="missing"),
        pytest.param("read_file", {"path": "/workspace"}, "is-a-directory", id="read-a-directory"),
        pytest.param("read_file", {"path": "a\x00b"}, "invalid-argument", id="nul-byte"),
        pytest.param(
            "write_file",
            {"path": "x", "content": "%%%", "encoding": "base64"},
            "invalid-argument",
            id="bad-base64",
        ),
        pytest.param(
            "read_file", {"path": "x", "encoding": "latin-1"}, "invalid-argument", id="bad-encoding"
        ),
        pytest.param(
            "write_file", {"path": "big", "content": "x" * 300_000}, "input-too-large", id="too-large"
        ),
    ],
)
async def test_bad_paths_and_arguments_get_clear_errors(
    gateway: Gateway, name: str, arguments: dict[str, Any], code: str
) -> None:
    result = await tool(gateway, "alice", name, **arguments)
    assert result.is_error and code in result.content[0].text


async def test_a_symlink_pointing_out_of_the_workspace_is_refused(gateway: Gateway) -> None:
    await tool(gateway, "alice", "execute_bash", command="ln -sf /etc /workspace/escape")
    result = await tool(gateway, "alice", "read_file", path="escape/passwd")
    assert result.is_error and "path-outside-workspace" in result.content[0].text


async def test_files_of_one_principal_are_not_visible_to_another(gateway: Gateway) -> None:
    await tool(gateway, "alice", "write_file", path="private.txt", content="alice only")
    result = await tool(gateway, "bob", "read_file", path="private.txt")
    assert result.is_error and "not-found" in result.content[0].text
