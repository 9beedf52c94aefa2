"""The shipped skills/ folder mounted read-only at /skills: listed, published as resources, importable."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.backend.docker_engine import DockerBackend
from tests.conftest import mountable_dir
from tests.e2e.conftest import Gateway, mcp_client, start_gateway, stop_gateway

pytestmark = pytest.mark.anyio
SKILLS = Path(__file__).parents[2] / "skills"


@pytest.fixture(scope="module")
def library_gateway(tmp_path_factory: pytest.TempPathFactory, backend: DockerBackend) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("library")
    tools = mountable_dir("library-tools")
    (tools / "greet.sh").write_text("#!/bin/sh\necho hello from tools\n")
    gateway = start_gateway(tmp, "--skills-dir", str(SKILLS), "--tools-dir", str(tools))
    yield gateway
    stop_gateway(gateway)
    shutil.rmtree(tools)
    assert backend.list({"sandbox-gateway.gateway": gateway.gateway_id}) == []


async def test_skills_and_tools_are_listed_with_summaries(library_gateway: Gateway) -> None:
    async with mcp_client(library_gateway.url, library_gateway.tokens["alice"]) as client:
        skills = (await client.call_tool("list_skills", {})).structured_content
        tools = (await client.call_tool("list_tools", {})).structured_content
    assert skills is not None and tools is not None
    by_path = {e["path"]: e for e in skills["entries"]}
    assert by_path["/skills/textstats.py"]["summary"].startswith("Word, line and character counts")
    assert by_path["/skills/textstats.py"]["uri"] == "skills:///textstats.py"
    assert [e["path"] for e in tools["entries"]] == ["/tools/greet.sh"]


async def test_each_file_is_an_mcp_resource(library_gateway: Gateway) -> None:
    async with mcp_client(library_gateway.url, library_gateway.tokens["alice"]) as client:
        uris = {str(r.uri) for r in (await client.list_resources()).resources}
        content = await client.read_resource("skills:///jsonpath.py")
    assert {"skills:///textstats.py", "skills:///csvtools.py", "tools:///greet.sh"} <= uris
    assert content.contents[0].text == (SKILLS / "jsonpath.py").read_text()  # type: ignore[union-attr]


async def test_sandbox_code_imports_skills_and_cannot_change_them(library_gateway: Gateway) -> None:
    code = (
        "from textstats import summarize\nfrom jsonpath import pick\n"
        "print(summarize('a b a')['top_words'][0], pick({'x': [1, {'y': 2}]}, 'x.1.y'))"
    )
    async with mcp_client(library_gateway.url, library_gateway.tokens["alice"]) as client:
        result = (await client.call_tool("execute_python", {"code": code})).structured_content
        write = await client.call_tool(
            "execute_bash", {"command": "touch /skills/x 2>&1; sh /tools/greet.sh"}
        )
    assert result is not None and result["stdout"] == "('a', 2) 2\n"
    assert write.structured_content is not None
    assert "Read-only file system" in write.structured_content["stdout"]
    assert write.structured_content["stdout"].endswith("hello from tools\n")
