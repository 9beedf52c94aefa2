"""Real upstream MCP servers for code mode's tests, written with the `mcp` SDK's server API:

- notes (`notes_server.py`): streamable HTTP on a free loopback port, behind a bearer token or an
  OAuth client credentials grant it serves itself; tools search_notes, read_note, slow, leak_secret,
  fail and add_tool (which adds a tool and announces that the list changed).
- calc (`calc_server.py`): stdio, started by the gateway's client; tools add, multiply, stats, plus
  pid and environment, so that a test can kill it or see what it was given.

    with running_upstreams(tmp_path) as running:       # notes runs; upstreams.yaml names both
        async with Upstreams(load_upstreams(running.file)) as upstreams:
            ...
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from tests.support.net import accepts, free_port
from tests.support.processes import end
from tests.support.waiting import eventually

__all__ = [
    "CALC_SERVER",
    "NOTES_SERVER",
    "NOTES_TOOLS",
    "NotesServer",
    "RunningUpstreams",
    "calc_entry",
    "notes_entry",
    "notes_server",
    "running_upstreams",
    "write_upstreams",
]

HERE = Path(__file__).resolve().parent
NOTES_SERVER = HERE / "notes_server.py"
CALC_SERVER = HERE / "calc_server.py"
#: The notes tools the default upstreams file exposes (add_tool is left out unless asked for).
NOTES_TOOLS = ["search_notes", "read_note", "slow", "leak_secret", "fail"]
NotesAuth = Literal["header", "oauth", "none", "wrong-token"]


@dataclass(frozen=True)
class NotesServer:
    """A running notes server: its /mcp URL, base URL, and the credentials it accepts (as files)."""

    url: str
    base: str
    token_file: Path
    client_id: str
    client_secret_file: Path
    process: subprocess.Popen[bytes]
    log: Path


@dataclass(frozen=True)
class RunningUpstreams:
    """The notes server, and an upstreams file (`file`) naming it and calc."""

    notes: NotesServer
    file: Path


def _secret_file(path: Path, value: str) -> Path:
    path.write_text(value + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


@contextlib.contextmanager
def notes_server(
    workdir: Path, *, token_ttl_s: float = 3600, port: int | None = None, token: str | None = None
) -> Iterator[NotesServer]:
    """Start notes_server.py on `port` (else a free loopback one), accepting `token` (else a new
    one); stop it, and wait for it, afterwards."""
    workdir.mkdir(parents=True, exist_ok=True)
    token = token or secrets.token_urlsafe(16)
    client_secret = secrets.token_urlsafe(16)
    port = port or free_port()
    log = workdir / "notes-server.log"
    env = {
        **os.environ,
        "NOTES_TOKEN": token,
        "NOTES_CLIENT_ID": "gateway",
        "NOTES_CLIENT_SECRET": client_secret,
        "NOTES_TOKEN_TTL": str(token_ttl_s),
    }
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(NOTES_SERVER), "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
        )
    try:

        def listening() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"notes server exited: {log.read_text()[-2000:]}")
            return accepts(port)

        eventually(listening, timeout_s=30, message="the notes server did not listen")
        base = f"http://127.0.0.1:{port}"
        yield NotesServer(
            url=f"{base}/mcp",
            base=base,
            token_file=_secret_file(workdir / "notes-token", token),
            client_id="gateway",
            client_secret_file=_secret_file(workdir / "notes-client-secret", client_secret),
            process=process,
            log=log,
        )
    finally:
        end(process)


def notes_entry(
    notes: NotesServer, *, auth: NotesAuth = "header", tools: list[str] | str | None = None, **extra: Any
) -> dict[str, Any]:
    """The notes server's entry in an upstreams file."""
    entry: dict[str, Any] = {"transport": "http", "url": notes.url, "tools": tools or list(NOTES_TOOLS)}
    if auth == "header":
        entry["headers"] = {"Authorization": {"file": str(notes.token_file), "prefix": "Bearer "}}
    elif auth == "wrong-token":
        wrong = _secret_file(notes.token_file.with_name("wrong-token"), "not-the-token")
        entry["headers"] = {"Authorization": {"file": str(wrong), "prefix": "Bearer "}}
    elif auth == "oauth":
        entry["oauth"] = {
            "token_url": f"{notes.base}/token",
            "client_id": notes.client_id,
            "client_secret_file": str(notes.client_secret_file),
            "scope": "notes.read",
            "resource": notes.url,
        }
    return entry | extra


def calc_entry(*, tools: list[str] | str = "*", **extra: Any) -> dict[str, Any]:
    """The calc server's entry: this Python running calc_server.py."""
    return {"transport": "stdio", "command": [sys.executable, str(CALC_SERVER)], "tools": tools} | extra


def write_upstreams(path: Path, servers: dict[str, dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"servers": servers}, sort_keys=False), encoding="utf-8")
    return path


@contextlib.contextmanager
def running_upstreams(
    workdir: Path,
    *,
    notes_auth: NotesAuth = "header",
    notes_tools: list[str] | str | None = None,
    token_ttl_s: float = 3600,
    **notes: Any,
) -> Iterator[RunningUpstreams]:
    """The notes server running, and `workdir/upstreams.yaml` naming it (as `notes`, with `notes`
    as extra keys of its entry) and calc."""
    with notes_server(workdir, token_ttl_s=token_ttl_s) as server:
        file = write_upstreams(
            workdir / "upstreams.yaml",
            {"notes": notes_entry(server, auth=notes_auth, tools=notes_tools, **notes), "calc": calc_entry()},
        )
        yield RunningUpstreams(server, file)
