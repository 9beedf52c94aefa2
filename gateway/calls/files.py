"""Workspace file operations, run inside the sandbox as the sandbox user (stdlib only).

They travel the same exec path as code, so the socket proxy needs nothing more. Paths are confined
to /workspace: traversal, absolute paths elsewhere, symlinks resolving outside and NUL bytes are
refused with a clear error code.

The helper runs isolated from what the code in the sandbox can write: `python3 -I -S` imports only
the standard library of the read-only root (no working directory, PYTHONPATH or site-packages on its
path, no PYTHON* variable read), and it works from `/`, so nothing placed in /workspace (a json.py,
a sitecustomize.py...) or on /skills changes what it does.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from gateway.backend.commands import split_chunks
from gateway.errors import GatewayError

__all__ = ["WORKSPACE", "FileError", "file_argv", "parse_file_result"]

WORKSPACE = "/workspace"

_HELPER = r"""
import os
os.chdir("/")
import base64, errno, json, sys
ROOT = "/workspace"
def done(**fields):
    print(json.dumps(fields))
    sys.exit(0)
op, raw = sys.argv[1], sys.argv[2]
if raw in ("", "."):
    raw = ROOT
if os.path.isabs(raw) and raw != ROOT and not raw.startswith(ROOT + "/"):
    done(error="path-outside-workspace", message="only paths under /workspace are reachable")
target = os.path.normpath(os.path.join(ROOT, raw))
if target != ROOT and not target.startswith(ROOT + "/"):
    done(error="path-outside-workspace", message="the path leaves /workspace")
real = os.path.realpath(target)
if real != ROOT and not real.startswith(ROOT + "/"):
    done(error="path-outside-workspace", message="the path resolves outside /workspace (symlink)")
try:
    if op == "write":
        data = base64.b64decode("".join(sys.argv[3:]))
        if os.path.isdir(real):
            done(error="is-a-directory", message="the path is a directory")
        parent = os.path.dirname(real)
        os.makedirs(parent, exist_ok=True)
        temporary = os.path.join(parent, ".sgw-" + os.urandom(6).hex())
        with open(temporary, "wb") as handle:
            handle.write(data)
        os.replace(temporary, real)
        done(size=len(data), path=real)
    elif op == "read":
        cap = int(sys.argv[3])
        if os.path.isdir(real):
            done(error="is-a-directory", message="the path is a directory; use list_files")
        with open(real, "rb") as handle:
            data = handle.read(cap + 1)
            size = os.fstat(handle.fileno()).st_size
        done(size=size, data=base64.b64encode(data[:cap]).decode(), truncated=len(data) > cap, path=real)
    elif op == "list":
        entries = []
        with os.scandir(real) as scan:
            for entry in scan:
                info = entry.stat(follow_symlinks=False)
                kind = "symlink" if entry.is_symlink() else "dir" if entry.is_dir() else \
                    "file" if entry.is_file() else "other"
                entries.append({"name": entry.name, "type": kind, "size": info.st_size})
                if len(entries) >= 10000:
                    break
        done(entries=sorted(entries, key=lambda e: e["name"])[:10000], path=real)
except FileNotFoundError:
    done(error="not-found", message="no such file or directory")
except NotADirectoryError:
    done(error="not-a-directory", message="a component of the path is not a directory")
except IsADirectoryError:
    done(error="is-a-directory", message="the path is a directory")
except PermissionError:
    done(error="permission-denied", message="permission denied")
except OSError as exc:
    codes = {errno.ENOSPC: "no-space", errno.EFBIG: "file-too-large", errno.EROFS: "read-only"}
    code = codes.get(exc.errno, "io-error")
    done(error=code, message=os.strerror(exc.errno or 0))
"""


class FileError(GatewayError):
    """A file operation failed inside the sandbox; `code` says why (not-found, path-outside-workspace...)."""

    code = "file-error"


def file_argv(op: str, path: str, timeout_s: float, *, data: bytes = b"", cap: int = 0) -> list[str]:
    """The argv that runs one file operation under `timeout`, like code calls do."""
    extra = (
        split_chunks(base64.b64encode(data).decode()) if op == "write" else [str(cap)] if op == "read" else []
    )
    isolated = ["python3", "-I", "-S", "-c", _HELPER]
    return ["timeout", "--kill-after=2", f"{timeout_s:g}s", *isolated, op, path, *extra]


def parse_file_result(exit_code: int | None, stdout: bytes, stderr: bytes) -> dict[str, Any]:
    """The helper's JSON answer; an error answer or a broken run becomes a FileError."""
    try:
        answer = json.loads(stdout.decode("utf-8", errors="replace").strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise FileError(
            f"the file operation did not complete (exit {exit_code})", code="file-operation-failed"
        ) from exc
    if not isinstance(answer, dict):
        raise FileError("the file operation answered nonsense", code="file-operation-failed")
    if "error" in answer:
        raise FileError(str(answer.get("message", "")), code=str(answer["error"]))
    return answer
