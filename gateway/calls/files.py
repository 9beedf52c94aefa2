"""Workspace file operations: run inside the sandbox as the sandbox user by the file helper.

The helper (gateway/agent/file_helper.py) is installed in the sandbox image as HELPER_PATH. Its
calls travel the same exec path as code, so the socket proxy needs nothing more. Paths are confined
to /workspace: traversal, absolute paths elsewhere, symlinks resolving outside and NUL bytes are
refused with a clear error code.

The helper runs isolated from what the code in the sandbox can write: `python3 -I -S` imports only
the standard library of the read-only root (no working directory, no script directory, no
PYTHONPATH or site-packages on its path, no PYTHON* variable read), its own file is root-owned and
read-only, and it works from `/`, so nothing placed in /workspace (a json.py, a sitecustomize.py...)
or on /skills changes what it does.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from gateway.backend.commands import split_chunks
from gateway.errors import FileError

__all__ = ["HELPER_PATH", "WORKSPACE", "file_argv", "parse_file_result"]

WORKSPACE = "/workspace"

#: The file helper (gateway/agent/file_helper.py) in the sandbox image, root-owned and read-only.
HELPER_PATH = "/opt/sandbox-gateway/files.py"


def file_argv(op: str, path: str, *, data: bytes = b"", cap: int = 0) -> list[str]:
    """The argv that runs one file operation; its timeout travels in the request, as for code."""
    extra = (
        split_chunks(base64.b64encode(data).decode()) if op == "write" else [str(cap)] if op == "read" else []
    )
    isolated = ["python3", "-I", "-S", HELPER_PATH]
    return [*isolated, op, path, *extra]


def parse_file_result(exit_code: int | None, stdout: bytes, stderr: bytes) -> dict[str, Any]:
    """The helper's JSON answer; an error answer or a broken run becomes a FileError."""
    try:
        answer = json.loads(stdout.decode("utf-8", errors="replace").strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        message = f"the file operation did not complete (exit {exit_code})"
        if f"can't open file '{HELPER_PATH}'".encode() in stderr:  # an image built elsewhere
            message = f"python3 cannot open {HELPER_PATH}: rebuild the image with `sandbox-gateway setup`"
        raise FileError(message, code="file-operation-failed") from exc
    if not isinstance(answer, dict):
        raise FileError("the file operation answered nonsense", code="file-operation-failed")
    if "error" in answer:
        raise FileError(str(answer.get("message", "")), code=str(answer["error"]))
    return answer
