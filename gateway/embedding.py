"""The embedding API: `DockerExecutionClient`, for Python programs that run code without MCP.

It goes through the same policy, audit and tracing as the MCP tools, on a core built by the same
composition root (gateway/wiring.py) as the server's:

    client = DockerExecutionClient()
    exit_code, stdout, stderr = await client.execute_bash("alice", "python3 -c 'print(1)'")
    client.cleanup_all()
"""

from __future__ import annotations

import os
from pathlib import Path

from audit import AuditLog, StreamSink
from audit.sinks import AuditSink
from gateway.auth.tokens import validate_principal_id
from gateway.calls.python_results import PythonResult
from gateway.calls.results import ExecResult
from gateway.config import DEFAULT_DOCKER_HOST, DEFAULT_IMAGE, ENV_DOCKER_HOST, Settings, check_docker_host
from gateway.errors import ConfigError
from gateway.wiring import build_core
from policy import Principal, load_policy
from policy.engine import PolicyEngine

__all__ = ["DockerExecutionClient"]


class DockerExecutionClient:
    """Per-user sandboxes behind the gateway's policy, for direct use from Python."""

    def __init__(
        self,
        image_name: str = DEFAULT_IMAGE,
        tools_path: str | Path | None = None,
        skills_path: str | Path | None = None,
        *,
        docker_host: str | None = None,
        allow_raw_socket: bool = False,
        policy_file: str | Path | None = None,
        profile: str = "default",
        audit_sinks: list[AuditSink] | None = None,
        gateway_id: str = "embedded",
    ) -> None:
        url = docker_host or os.environ.get(ENV_DOCKER_HOST) or DEFAULT_DOCKER_HOST
        check_docker_host(url, allow_raw_socket=allow_raw_socket)
        self.image_name = image_name
        self.profile = profile
        engine = PolicyEngine(load_policy(policy_file))
        spec_profile = engine.policy.profiles.get(profile)
        if spec_profile is None:
            raise ConfigError(f"the policy has no profile {profile!r}")
        if image_name not in spec_profile.sandbox.images:
            raise ConfigError(
                f"image {image_name!r} is not allowed by profile {profile!r}; "
                f"add it to the profile's images ({list(spec_profile.sandbox.images)})"
            )
        tools = Path(tools_path) if tools_path is not None else None
        skills = Path(skills_path) if skills_path is not None else None
        for name, path in (("tools", tools), ("skills", skills)):
            if path is not None and not path.is_dir():
                raise ConfigError(f"the {name} directory {path} does not exist")
        settings = Settings(
            docker_host=url,
            allow_raw_socket=allow_raw_socket,
            image=image_name,
            gateway_id=validate_principal_id(gateway_id, "gateway id"),
            tools_path=tools,
            skills_path=skills,
        )
        audit = AuditLog(audit_sinks if audit_sinks is not None else [StreamSink()])
        self.core = build_core(settings, engine, audit)
        self.audit = self.core.audit
        self.backend = self.core.backend
        self.broker = self.core.broker
        self.service = self.core.service

    def _principal(self, user_id: str) -> Principal:
        return Principal(
            id=validate_principal_id(user_id, "user_id"), profile=self.profile, auth_method="embedded"
        )

    async def run(self, user_id: str, tool: str, code: str, timeout_s: float | None = None) -> ExecResult:
        """The full structured result of one call."""
        return await self.service.execute(self._principal(user_id), tool, code, timeout_s)

    async def execute_bash(
        self, user_id: str, command: str, timeout_s: float | None = None
    ) -> tuple[int, str, str]:
        """Run a bash command in `user_id`'s sandbox: (exit_code, stdout, stderr); -1 if no status."""
        result = await self.run(user_id, "execute_bash", command, timeout_s)
        return (-1 if result.exit_code is None else result.exit_code), result.stdout, result.stderr

    async def execute_python(
        self, user_id: str, code: str, timeout_s: float | None = None
    ) -> tuple[int, str, str]:
        """Run Python code in `user_id`'s sandbox: (exit_code, stdout, stderr); -1 if no status."""
        result = await self.run(user_id, "execute_python", code, timeout_s)
        return (-1 if result.exit_code is None else result.exit_code), result.stdout, result.stderr

    async def run_python(self, user_id: str, code: str, timeout_s: float | None = None) -> PythonResult:
        """Run `code` in `user_id`'s long-lived interpreter (variables live across calls); the result
        describes each image in `outputs`; `run_python_images` also returns their bytes."""
        result, _ = await self.service.run_python(self._principal(user_id), code, timeout_s)
        return result

    async def run_python_images(
        self, user_id: str, code: str, timeout_s: float | None = None
    ) -> tuple[PythonResult, list[bytes]]:
        """As run_python, with the PNG bytes of each image output, in order."""
        result, outcome = await self.service.run_python(self._principal(user_id), code, timeout_s)
        return result, [rich.data for rich in outcome.rich if isinstance(rich.data, bytes)]

    async def acleanup_all(self) -> int:
        """Remove every sandbox this client created, off the event loop. Returns how many."""
        return await self.broker.cleanup_all()

    def cleanup_all(self) -> int:
        """Remove every sandbox this client created (blocking, as in the seed's example). Returns how many."""
        return self.broker.cleanup_all_sync()

    def close(self) -> None:
        """Close the engine connection, then write the audit events still queued (AuditWriteError if
        some were lost: the audit log then holds an `audit.gap` once it can write again)."""
        self.backend.close()
        self.audit.flush()
