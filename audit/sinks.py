"""Where rendered audit lines go. A sink writes one line or raises OSError."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Protocol, TextIO

__all__ = ["AuditSink", "FileSink", "MemorySink", "StreamSink"]


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


class FileSink:
    """Appends JSON lines to a file, fsync-free but flushed per line; opened in append mode."""

    name = "file"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(self, line: str) -> None:
        data = (line + "\n").encode()
        with self._lock:
            written = os.write(self._fd, data)
        if written != len(data):
            raise OSError(f"short write to {self.path}")

    def writable(self) -> bool:
        try:
            os.fstat(self._fd)
        except OSError:
            return False
        return os.access(self.path, os.W_OK)

    def close(self) -> None:
        os.close(self._fd)


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
