"""How a tool call becomes an argv inside the sandbox.

The code travels in argv, split into chunks below the kernel's per-argument limit, because the
socket proxy lets no exec take stdin (`AttachStdin` must be false), so nothing streams from the
client to the engine on `exec start`. The argv carries no timeout: the request's `timeout_s` does,
and each executor applies it (the agent times the command itself; `docker exec` wraps it in
`timeout`, see `timed_argv`).
"""

from __future__ import annotations

__all__ = ["MAX_ARGV_BYTES", "bash_argv", "python_argv", "split_chunks", "timed_argv"]

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


def timed_argv(argv: list[str], timeout_s: float, kill_after_s: float) -> list[str]:
    """argv under coreutils `timeout`: TERM to its process group at `timeout_s`, KILL
    `kill_after_s` later."""
    return ["timeout", f"--kill-after={kill_after_s:g}", f"{timeout_s:g}s", *argv]


def bash_argv(command: str) -> list[str]:
    """`bash -c command`."""
    return ["bash", "-c", _BASH, "bash", *split_chunks(command)]


def python_argv(code: str) -> list[str]:
    """`python3 -c code` with `__name__ == '__main__'`."""
    return ["python3", "-c", _PYTHON, *split_chunks(code)]
