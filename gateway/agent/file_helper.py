#!/usr/bin/env python3
"""Workspace file operations, run inside the sandbox as the sandbox user (standard library only).

Installed read-only in the sandbox image as /opt/sandbox-gateway/files.py and run by the gateway
(gateway/calls/files.py) as `python3 -I -S /opt/sandbox-gateway/files.py OP PATH [ARG...]`:

    write PATH BASE64...   create or replace a file atomically (the base64 data may come in pieces)
    read PATH CAP          at most CAP bytes of a file, with its size and whether it was cut
    list PATH              the entries of a directory (at most MAX_ENTRIES)

It prints one JSON object: the answer, or `error` (a code) and `message`. Paths are confined to
/workspace: traversal, absolute paths elsewhere, symlinks resolving outside, NUL bytes and names the
file system cannot encode are refused. The functions take the root as a parameter, so they can be
run against any directory; the command line always uses /workspace.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import json
import os
import sys

WORKSPACE = "/workspace"
#: A listing stops after this many entries.
MAX_ENTRIES = 10_000
_FAILURES: tuple[tuple[type[OSError], str, str], ...] = (
    (FileNotFoundError, "not-found", "no such file or directory"),
    (NotADirectoryError, "not-a-directory", "a component of the path is not a directory"),
    (IsADirectoryError, "is-a-directory", "the path is a directory"),
    (PermissionError, "permission-denied", "permission denied"),
)
_OS_ERRORS = {errno.ENOSPC: "no-space", errno.EFBIG: "file-too-large", errno.EROFS: "read-only"}

Answer = dict[str, object]


class Refused(Exception):
    """An operation refused before touching the file system, or failed in a way it names itself."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def confine(root: str, raw: str) -> str:
    """The real path that `raw` (relative to `root`, or absolute under it) names; Refused if it is
    not under `root`. `root` must be an absolute path without symlinks."""
    if "\x00" in raw:
        raise Refused("invalid-argument", "the path contains a NUL byte")
    try:
        os.fsencode(raw)
    except UnicodeError as exc:
        raise Refused("invalid-argument", "the path cannot be encoded as a file name") from exc
    if raw in ("", "."):
        raw = root
    if os.path.isabs(raw) and not _under(raw, root):
        raise Refused("path-outside-workspace", f"only paths under {root} are reachable")
    target = os.path.normpath(os.path.join(root, raw))
    if not _under(target, root):
        raise Refused("path-outside-workspace", f"the path leaves {root}")
    real = os.path.realpath(target)
    if not _under(real, root):
        raise Refused("path-outside-workspace", f"the path resolves outside {root} (symlink)")
    return real


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


def write(root: str, raw: str, data: bytes) -> Answer:
    """Create or replace a file: a temporary file next to it, renamed over it once complete, so a
    reader sees the old contents or the new ones, never a part. Missing parents are created."""
    real = confine(root, raw)
    if real == root or os.path.isdir(real):
        raise Refused("is-a-directory", "the path is a directory")
    parent = os.path.dirname(real)
    try:
        os.makedirs(parent, exist_ok=True)
    except FileExistsError as exc:  # a file where a directory should be
        raise Refused("not-a-directory", "a component of the path is not a directory") from exc
    temporary = os.path.join(parent, ".sgw-" + os.urandom(6).hex())
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, real)
    except BaseException:
        _remove(temporary)
        raise
    return {"size": len(data), "path": real}


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def read(root: str, raw: str, cap: int) -> Answer:
    """At most `cap` bytes of a file (base64), its size and whether the data stops short of it."""
    if cap < 0:
        raise Refused("invalid-argument", "the cap must not be negative")
    real = confine(root, raw)
    if os.path.isdir(real):
        raise Refused("is-a-directory", "the path is a directory; use list_files")
    with open(os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as handle:
        data = handle.read(cap + 1)
        size = os.fstat(handle.fileno()).st_size
    return {
        "size": size,
        "data": base64.b64encode(data[:cap]).decode(),
        "truncated": len(data) > cap,
        "path": real,
    }


def list_dir(root: str, raw: str) -> Answer:
    """A directory's entries by name: name, type (file, dir, symlink, other) and size, symlinks not
    followed; at most MAX_ENTRIES of them."""
    real = confine(root, raw)
    entries: list[Answer] = []
    with os.scandir(real) as scan:
        for entry in scan:
            info = entry.stat(follow_symlinks=False)
            entries.append({"name": entry.name, "type": _kind(entry), "size": info.st_size})
            if len(entries) >= MAX_ENTRIES:
                break
    return {"entries": sorted(entries, key=lambda e: str(e["name"])), "path": real}


def _kind(entry: os.DirEntry[str]) -> str:
    if entry.is_symlink():
        return "symlink"
    if entry.is_dir():
        return "dir"
    return "file" if entry.is_file() else "other"


def answer(root: str, op: str, args: list[str]) -> Answer:
    """Run one operation from its command-line arguments (the path first); every failure becomes an
    answer with an error code."""
    try:
        return _dispatch(root, op, args)
    except Refused as exc:
        return _error(exc.code, exc.message)
    except OSError as exc:
        for kind, code, message in _FAILURES:
            if isinstance(exc, kind):
                return _error(code, message)
        return _error(_OS_ERRORS.get(exc.errno or 0, "io-error"), os.strerror(exc.errno or 0))


def _dispatch(root: str, op: str, args: list[str]) -> Answer:
    if not args:
        raise Refused("invalid-argument", "no path given")
    path, rest = args[0], args[1:]
    if op == "write":
        try:
            data = base64.b64decode("".join(rest), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise Refused("invalid-argument", "the data is not base64") from exc
        return write(root, path, data)
    if op == "read":
        try:
            cap = int(rest[0])
        except (IndexError, ValueError) as exc:
            raise Refused("invalid-argument", "read needs a cap in bytes") from exc
        return read(root, path, cap)
    if op == "list":
        return list_dir(root, path)
    raise Refused("invalid-argument", f"unknown operation {op!r}")


def _error(code: str, message: str) -> Answer:
    return {"error": code, "message": message}


def main(argv: list[str]) -> int:
    """`files.py OP PATH [ARG...]` on /workspace, from `/`: prints the answer as one JSON line."""
    os.chdir("/")
    if not argv:
        result = _error("invalid-argument", "usage: files.py write|read|list PATH [ARG...]")
    else:
        result = answer(WORKSPACE, argv[0], argv[1:])
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
