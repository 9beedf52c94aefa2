"""How a tool call becomes an argv inside the sandbox.

The code travels in argv, split into chunks below the kernel's per-argument limit, because the
socket proxy lets no exec take stdin (`AttachStdin` must be false), so nothing streams from the
client to the engine on `exec start`. `timeout` bounds it and kills its whole process group.
"""

from __future__ import annotations

__all__ = ["KILL_GRACE_S", "MAX_ARGV_BYTES", "bash_argv", "python_argv", "split_chunks", "unwrap_timeout"]

#: After the timeout, TERM; this many seconds later, KILL for whatever ignored TERM.
KILL_GRACE_S = 2
#: Linux limits one argv string to 128 KiB; chunks stay well under it.
_CHUNK_CHARS = 24_000
#: Total argv budget (ARG_MAX is 2 MiB with the default stack; leave room for the environment).
MAX_ARGV_BYTES = 1536 * 1024

_BASH = 'IFS=; set -- "$*"; unset IFS; eval "set --; $1"'
_PYTHON = (
    "import sys; s = ''.join(sys.argv[1:]); sys.argv = ['-c']; "
    "exec(compile(s, '<code>', 'exec'), {'__name__': '__main__', '__builtins__': __builtins__})"
)


def split_chunks(text: str) -> list[str]:
    """Split into pieces whose UTF-8 form stays below the per-argument limit (4 bytes/char worst case)."""
    if "\x00" in text:
        raise ValueError("code cannot contain NUL bytes")
    return [text[i : i + _CHUNK_CHARS] for i in range(0, len(text), _CHUNK_CHARS)] or [""]


def _timeout(timeout_s: float) -> list[str]:
    return ["timeout", f"--kill-after={KILL_GRACE_S}", f"{timeout_s:g}s"]


def unwrap_timeout(argv: list[str]) -> tuple[float, float, list[str]] | None:
    """(timeout, kill-after, command) of an argv that `_timeout` wrapped, else None. The sandbox
    agent applies the same TERM-then-KILL timing itself and skips starting `timeout`."""
    if len(argv) < 4 or argv[0] != "timeout" or not argv[1].startswith("--kill-after="):
        return None
    try:
        return float(argv[2].removesuffix("s")), float(argv[1].partition("=")[2]), argv[3:]
    except ValueError:
        return None


def bash_argv(command: str, timeout_s: float) -> list[str]:
    """`bash -c command`, bounded by `timeout`."""
    return [*_timeout(timeout_s), "bash", "-c", _BASH, "bash", *split_chunks(command)]


def python_argv(code: str, timeout_s: float) -> list[str]:
    """`python3 -c code` with `__name__ == '__main__'`, bounded by `timeout`."""
    return [*_timeout(timeout_s), "python3", "-c", _PYTHON, *split_chunks(code)]
