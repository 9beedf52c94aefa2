"""The seed's embedding API: DockerExecutionClient.execute_bash / cleanup_all, through the same policy."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit import MemorySink
from gateway.backend.docker_engine import DockerBackend
from gateway.embedding import DockerExecutionClient
from gateway.errors import ConfigError, PolicyDenied
from tests.conftest import PROXY_URL

pytestmark = pytest.mark.anyio

#: A 1x1 PNG.
_ONE_PIXEL = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)


@pytest.fixture
def client(backend: DockerBackend) -> Iterator[DockerExecutionClient]:
    the_client = DockerExecutionClient(
        docker_host=PROXY_URL, audit_sinks=[MemorySink()], gateway_id=f"embed-{uuid.uuid4().hex[:8]}"
    )
    yield the_client
    the_client.cleanup_all()
    assert backend.list({"sandbox-gateway.gateway": the_client.broker.gateway_id}) == []
    the_client.close()


async def test_the_seed_example_works(client: DockerExecutionClient) -> None:
    code, stdout, stderr = await client.execute_bash(
        "test_user", "python -c 'import sys; print(sys.version)'"
    )
    assert code == 0, stderr
    assert stdout.startswith("3.")
    assert client.cleanup_all() == 1


async def test_python_and_timeouts_through_the_embedding_api(client: DockerExecutionClient) -> None:
    assert await client.execute_python("u1", "print(6 * 7)") == (0, "42\n", "")
    result = await client.run("u1", "execute_bash", "sleep 30", timeout_s=1)
    assert result.timed_out


async def test_run_python_keeps_state_and_returns_images_through_the_embedding_api(
    client: DockerExecutionClient,
) -> None:
    first = await client.run_python("u3", "total = 40")
    second = await client.run_python("u3", "total += 2\ntotal")
    assert first.new_interpreter and not second.new_interpreter and second.value == "42"
    drawing = (
        "import base64\nclass Dot:\n    def _repr_png_(self):\n        return base64.b64decode("
        f"{base64.b64encode(_ONE_PIXEL).decode()!r})\nDot()"
    )
    result, images = await client.run_python_images("u3", drawing)
    assert images == [_ONE_PIXEL] and result.outputs[0].width == 1


async def test_the_policy_applies_to_embedded_calls(client: DockerExecutionClient) -> None:
    with pytest.raises(PolicyDenied):
        await client.execute_bash("u2", "true", timeout_s=10_000)


def test_a_raw_socket_is_refused_unless_allowed() -> None:
    with pytest.raises(ConfigError, match="raw socket"):
        DockerExecutionClient(docker_host="unix:///var/run/docker.sock")


def test_an_image_outside_the_policy_is_refused() -> None:
    with pytest.raises(ConfigError, match="not allowed"):
        DockerExecutionClient(image_name="alpine:latest", docker_host=PROXY_URL)


async def test_tools_and_skills_are_mounted_read_only(mount_dir: Path, backend: DockerBackend) -> None:
    tools, skills = mount_dir / "tools", mount_dir / "skills"
    tools.mkdir(mode=0o755)
    skills.mkdir(mode=0o755)
    (tools / "hello.py").write_text("print('tool')\n")
    (skills / "greet.py").write_text("def greet(name):\n    return f'hi {name}'\n")
    client = DockerExecutionClient(
        tools_path=tools,
        skills_path=skills,
        docker_host=PROXY_URL,
        audit_sinks=[MemorySink()],
        gateway_id=f"embed-{uuid.uuid4().hex[:8]}",
    )
    try:
        assert (await client.execute_bash("u3", "python3 /tools/hello.py"))[1] == "tool\n"
        assert (await client.execute_python("u3", "from greet import greet; print(greet('x'))"))[
            1
        ] == "hi x\n"
        code, _, stderr = await client.execute_bash("u3", "touch /tools/new")
        assert code != 0 and "Read-only" in stderr
    finally:
        client.cleanup_all()
        client.close()
