"""Shared fixtures: the real engine behind the socket proxy, brokers that clean up after themselves."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from audit import AuditLog, MemorySink
from policy import Policy, load_policy

if TYPE_CHECKING:
    from gateway.backend.docker_engine import DockerBackend
    from gateway.sandboxes.broker import Broker

#: The socket proxy started by `make setup` (override to test another deployment).
PROXY_URL = os.environ.get("SGW_TEST_DOCKER_HOST", "unix:///run/sandbox-gateway/docker-proxy.sock")
IMAGE = os.environ.get("MCP_EXECUTOR_IMAGE", "mcp-code-executor:latest")
LABEL = "sandbox-gateway"

_EXPORTER = InMemorySpanExporter()

#: The spans of a principal's first call on the agent path: find/adopt, resolve the image, create,
#: start, attach to the agent, run.
FIRST_CALL_SPANS = frozenset(
    {"docker.list", "docker.inspect_image", "docker.create", "docker.start", "docker.attach", "docker.exec"}
)
#: The same on the `docker exec` path: no attach; exec is made of create, start, reading its output
#: stream (on the sandbox's own threads) and inspect.
FIRST_CALL_SPANS_EXEC = (FIRST_CALL_SPANS - {"docker.attach"}) | {
    "docker.exec_create",
    "docker.exec_start",
    "docker.exec_stream",
    "docker.exec_inspect",
}
#: A first call served from a warm pool: the pooled sandbox is renamed to its principal's, then runs.
FIRST_CALL_SPANS_POOLED = frozenset({"docker.rename", "docker.exec"})
#: Both ways a command can reach a sandbox; behavioural tests run on each.
EXEC_PATHS = ("agent", "exec")


def policy_with_exec_path(exec_path: str) -> Policy:
    """The shipped policy with every profile switched to one exec path."""
    base = load_policy()
    profiles = {
        name: profile.model_copy(
            update={"sandbox": profile.sandbox.model_copy(update={"exec_path": exec_path})}
        )
        for name, profile in base.profiles.items()
    }
    return base.model_copy(update={"profiles": profiles})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        if "e2e" in parts:
            item.add_marker(pytest.mark.e2e)
        if "deploy" in parts:
            item.add_marker(pytest.mark.deploy)
        if "browser" in parts:
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(params=EXEC_PATHS)
def exec_path(request: pytest.FixtureRequest) -> str:
    """Run the test once through the sandbox agent and once through `docker exec`."""
    return str(request.param)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def span_exporter() -> InMemorySpanExporter:
    """One SDK provider per test process, exporting into memory."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    return _EXPORTER


@pytest.fixture(scope="session")
def backend() -> Iterator[DockerBackend]:
    """The Docker backend through the socket proxy; fails loudly (never skips) when it is missing."""
    from gateway.backend.docker_engine import DockerBackend
    from gateway.errors import EngineError

    docker_backend = DockerBackend(PROXY_URL)
    try:
        docker_backend.ping()
    except EngineError as exc:
        pytest.fail(f"no engine behind the socket proxy at {PROXY_URL}: {exc}. Run `make setup` first.")
    assert docker_backend.image_present(IMAGE), f"sandbox image {IMAGE} missing; run `make setup`"
    yield docker_backend
    docker_backend.close()


def mountable_dir(prefix: str) -> Path:
    """A new directory the socket proxy lets sandboxes mount at /tools or /skills: below setup's
    mount root (root's alone), never a world-writable temporary directory."""
    from gateway.setup.state import SetupPaths

    path = SetupPaths.from_env().mount_root / f"{prefix}-{uuid.uuid4().hex[:8]}"
    path.mkdir(mode=0o755)
    return path


@pytest.fixture
def mount_dir() -> Iterator[Path]:
    """A directory the proxy lets be mounted (see `mountable_dir`), removed afterwards."""
    path = mountable_dir("test")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def audit_sink() -> MemorySink:
    return MemorySink()


@pytest.fixture
def broker(
    backend: DockerBackend, audit_sink: MemorySink, span_exporter: InMemorySpanExporter
) -> Iterator[Broker]:
    """A broker with its own gateway id; after the test no container of it may remain."""
    from gateway.sandboxes.broker import Broker

    gateway_id = f"test-{uuid.uuid4().hex[:12]}"
    the_broker = Broker(backend, AuditLog([audit_sink]), gateway_id=gateway_id)
    yield the_broker
    the_broker.cleanup_all_sync()
    left = backend.list({f"{LABEL}.gateway": gateway_id})
    assert left == [], f"containers leaked: {left}"
