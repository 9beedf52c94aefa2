"""`python -m gateway.upstream.stdio_guard MAX_LINE COMMAND [ARG...]`: run an upstream stdio server
with its output bounded. The server reads the gateway's stdin directly; its stdout is passed on as it
comes, but a line longer than MAX_LINE bytes ends the server, and then this guard, so the gateway
sees the connection end instead of buffering an endless line. The server's exit status is passed on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

_CHUNK = 65536


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: python -m gateway.upstream.stdio_guard MAX_LINE COMMAND [ARG...]", file=sys.stderr)
        return 2
    limit, command = int(argv[0]), argv[1:]
    try:
        server = subprocess.Popen(command, stdout=subprocess.PIPE)
    except OSError as exc:
        print(f"stdio_guard: cannot start {command[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: server.send_signal(signum))
    assert server.stdout is not None  # noqa: S101 - asked for above
    source, line = server.stdout.fileno(), 0
    while chunk := os.read(source, _CHUNK):
        pieces = chunk.split(b"\n")
        longest = max(line + len(pieces[0]), *(len(p) for p in pieces[1:]))
        line = line + len(chunk) if len(pieces) == 1 else len(pieces[-1])
        if longest > limit:
            print(f"stdio_guard: {command[0]} wrote a line over {limit} bytes; stopping it", file=sys.stderr)
            server.kill()
            break
        try:
            _write_all(chunk)
        except OSError:  # the gateway is gone
            server.kill()
            break
    return server.wait()


def _write_all(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
