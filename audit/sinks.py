"""Where rendered audit lines go. A sink writes one line or raises OSError."""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Literal, Protocol, TextIO, get_args

__all__ = ["AuditSink", "FileSink", "Fsync", "MemorySink", "StreamSink", "rotated_files"]

#: When a file sink fsyncs: "never" (a written line survives the gateway's crash, being in the page
#: cache, but not the kernel's or a power loss), "batch" (after each batch of lines the log wrote,
#: and after each synchronous event: what `emit` returned from survives those too).
Fsync = Literal["never", "batch"]


class AuditSink(Protocol):
    """Writes one rendered event (a JSON object without the newline); raises OSError on failure."""

    name: str

    def write(self, line: str) -> None: ...

    def writable(self) -> bool: ...


class StreamSink:
    """A text stream, stdout by default."""

    name = "stdout"

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        stream = self._stream or sys.stdout
        with self._lock:
            stream.write(line + "\n")
            stream.flush()

    def writable(self) -> bool:
        stream = self._stream or sys.stdout
        return not stream.closed


def rotated_files(path: Path) -> list[Path]:
    """`path` and its rotations, oldest first: path.N ... path.1, path."""
    backups = sorted(
        (p for p in path.parent.glob(f"{path.name}.*") if p.suffix[1:].isdigit()),
        key=lambda p: int(p.suffix[1:]),
        reverse=True,
    )
    return [*backups, path] if path.exists() else backups


class FileSink:
    """JSON lines appended to a file, rotated by size (path -> path.1 -> ... -> path.N).

    Every line is written with one write(2) on an O_APPEND descriptor. The chain continues
    across restarts and rotations: last_hash() reads it back from the newest line on disk.
    With `fsync="batch"`, sync() (called by the log after each batch) fsyncs what was written;
    a rotation fsyncs the file it closes and the directory.
    """

    name = "file"

    def __init__(
        self, path: Path, *, max_bytes: int = 100 * 1024 * 1024, backups: int = 5, fsync: Fsync = "never"
    ) -> None:
        if max_bytes < 4096 or backups < 1:
            raise ValueError("rotation needs max_bytes >= 4096 and at least one backup")
        if fsync not in get_args(Fsync):
            raise ValueError(f"fsync must be one of {', '.join(get_args(Fsync))}, not {fsync!r}")
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.fsync: Fsync = fsync
        self._lock = threading.Lock()
        self._failed = False
        self._unsynced = False
        self._closed = False
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = self._open()

    def _open(self) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if self.fsync == "batch":
            self._sync_directory()
        return fd

    def _sync_directory(self) -> None:
        """The directory's entries (a new file, a rotation's renames) survive a power loss too."""
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _rotate(self) -> None:
        if self._unsynced:
            os.fsync(self._fd)
            self._unsynced = False
        fd, self._fd = self._fd, -1  # reopened by the next write if what follows fails
        os.close(fd)
        for index in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self._fd = self._open()

    def _append(self, data: bytes) -> None:
        if self._fd < 0:  # never write to a closed descriptor: its number may be another file's
            if self._closed:
                raise OSError(f"{self.path}: the audit file sink is closed")
            self._fd = self._open()  # a rotation failed half-way
        size = os.fstat(self._fd).st_size
        if size and size + len(data) > self.max_bytes and self.path.is_file():
            self._rotate()
        written = os.write(self._fd, data)
        self._unsynced = self.fsync == "batch"
        if written != len(data):
            raise OSError(f"short write to {self.path}")

    def write(self, line: str) -> None:
        with self._lock:
            try:
                self._append((line + "\n").encode())
            except OSError:
                self._failed = True
                raise
            self._failed = False

    def sync(self) -> None:
        """With fsync "batch": fsync the lines written since the last sync (nothing to do otherwise)."""
        with self._lock:
            if not self._unsynced or self._fd < 0:
                return
            try:
                os.fsync(self._fd)
            except OSError:
                self._failed = True
                raise
            self._unsynced = False

    def writable(self) -> bool:
        if self._failed:
            return False
        try:
            os.fstat(self._fd)
        except OSError:
            return False
        return os.access(self.path, os.W_OK)

    def last_hash(self) -> str | None:
        """The `hash` of the newest line on disk (current file, else the newest rotation)."""
        for path in reversed(rotated_files(self.path)):
            if not path.is_file():
                continue
            last = _last_line(path)
            if last:
                try:
                    return str(json.loads(last)["hash"])
                except (ValueError, KeyError, TypeError):
                    return None
        return None

    def close(self) -> None:
        """Close the file; later writes fail (closing twice does nothing)."""
        with self._lock:
            fd, self._fd, self._closed = self._fd, -1, True
            if fd < 0:
                return
            try:
                if self._unsynced:
                    os.fsync(fd)
            finally:
                self._unsynced = False
                os.close(fd)


def _last_line(path: Path, chunk: int = 65536) -> str:
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - chunk))
        lines = handle.read().splitlines()
    return lines[-1].decode(errors="replace") if lines else ""


class MemorySink:
    """Keeps lines in memory; for tests and embedding."""

    name = "memory"

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.fail = False

    def write(self, line: str) -> None:
        if self.fail:
            raise OSError("memory sink set to fail")
        self.lines.append(line)

    def writable(self) -> bool:
        return not self.fail
