"""Raw `docker exec` through the Docker SDK (`exec_run`), with no gateway in between.

The container is made from the same create body the gateway sends on its `exec` path (the default
profile's hardening: read-only root, no network, cap-drop ALL, seccomp, limits, an init running
`sleep infinity` as nobody), and each command runs as the sandbox user in /workspace, like a call.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator
from typing import Any

import docker
import yaml

from bench.gateways import PROFILE, bench_policy
from gateway.backend.create_body import LABEL_PREFIX, USER_LABEL, create_body
from gateway.uids import DEFAULT_UID_RANGE, UidRange
from policy.loader import load_policy_text

__all__ = ["RAW_LABEL", "RawEngine"]

#: Raw benchmark containers carry the project's `managed` label too, so `make clean-sandboxes`
#: finds any that an interrupted run left behind.
RAW_LABEL = f"{LABEL_PREFIX}.bench"


def _spec() -> Any:
    policy = load_policy_text(yaml.safe_dump(bench_policy("exec", 0)), "<bench>")
    return policy.profiles[PROFILE].sandbox


class RawEngine:
    """One Docker SDK client (proxy or unix socket) and the containers it made."""

    def __init__(self, base_url: str, run_id: str) -> None:
        self.base_url = base_url
        self.run_id = run_id
        # The one API version the socket proxy serves (no unversioned /version to negotiate with).
        self.client = docker.DockerClient(base_url=base_url, version="1.41", timeout=60)
        self.spec = _spec()
        self.image = self.spec.image_names()[0]
        self._made: list[str] = []

    def version(self) -> dict[str, Any]:
        return dict(self.client.version())

    def create(self) -> Any:
        """Create and start a hardened container; returns the SDK Container."""
        body = create_body(
            self.spec,
            uid=UidRange.parse(DEFAULT_UID_RANGE).pick(),
            image=self.image,
            labels={f"{LABEL_PREFIX}.managed": "true", RAW_LABEL: self.run_id},
        )
        name = f"sgw-{secrets.token_hex(8)}"  # a sandbox name: the proxy accepts no other
        created = self.client.api.create_container_from_config(body, name=name)
        self._made.append(created["Id"])
        self.client.api.start(created["Id"])
        return self.client.containers.get(created["Id"])

    def exec_run(self, container: Any, command: str) -> tuple[int, bytes]:
        user = container.labels[USER_LABEL]  # the sandbox's own uid:gid
        result = container.exec_run(["bash", "-c", command], user=user, workdir=self.spec.workdir)
        return int(result.exit_code), bytes(result.output)

    def remove(self, container_id: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.client.api.remove_container(container_id, force=True, v=True)
        with contextlib.suppress(ValueError):
            self._made.remove(container_id)

    @contextlib.contextmanager
    def container(self) -> Iterator[Any]:
        made = self.create()
        try:
            yield made
        finally:
            self.remove(made.id)

    def first_call_ms(self, command: str) -> tuple[float, int, bytes]:
        """create + start + exec_run, timed together: a new container's first command."""
        started = time.perf_counter()
        made = self.create()
        try:
            code, output = self.exec_run(made, command)
            elapsed = (time.perf_counter() - started) * 1000
        finally:
            self.remove(made.id)
        return elapsed, code, output

    def cleanup(self) -> int:
        """Remove every container of this run (also ones whose removal was interrupted)."""
        rows = self.client.api.containers(all=True, filters={"label": f"{RAW_LABEL}={self.run_id}"})
        for row in rows:
            self.remove(row["Id"])
        for left in list(self._made):
            self.remove(left)
        return len(rows)

    def close(self) -> None:
        self.client.close()
