"""The argv wrappers keep the code intact, whatever it contains (run here with the host's bash/python)."""

import subprocess

import pytest

from gateway.backend.commands import bash_argv, python_argv, split_chunks, timed_argv

TRICKY = [
    pytest.param("echo hi", id="plain"),
    pytest.param("echo \"$1\" '$HOME' `echo x` $(echo y)", id="quotes-and-substitutions"),
    pytest.param("printf '%s\\n' a b; exit 7", id="exit-code"),
    pytest.param("x=" + "é" * 60_000 + "; echo ${#x}", id="multi-chunk-unicode"),
    pytest.param("cat <<'EOF'\nline1\n  line2\nEOF\n", id="heredoc"),
    pytest.param("set -- a b; echo $#", id="positional-args-are-empty"),
]


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize("command", TRICKY)
def test_bash_wrapper_matches_bash_c(command: str) -> None:
    wrapped = run(bash_argv(command))
    direct = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30, check=False)
    assert (wrapped.returncode, wrapped.stdout) == (direct.returncode, direct.stdout)


def test_bash_wrapper_starts_with_no_positional_arguments() -> None:
    assert run(bash_argv("echo $#")).stdout == "0\n"


def test_python_wrapper_runs_as_main_with_clean_argv() -> None:
    code = "import sys\nprint(__name__, sys.argv)\nraise SystemExit(3)"
    result = run(python_argv(code))
    assert result.stdout == "__main__ ['-c']\n"
    assert result.returncode == 3


def test_python_wrapper_reports_tracebacks_from_the_code() -> None:
    result = run(python_argv("x = 1\n1/0\n"))
    assert result.returncode == 1
    assert 'File "<code>", line 2' in result.stderr
    assert "ZeroDivisionError" in result.stderr


def test_the_docker_exec_timeout_prefix_bounds_the_command() -> None:
    argv = timed_argv(bash_argv("sleep 1"), 0.5, 2)
    assert argv[:3] == ["timeout", "--kill-after=2", "0.5s"]
    assert subprocess.run(argv, timeout=10, check=False).returncode == 124


def test_the_code_argv_carries_no_timeout() -> None:
    """The timeout travels in the request; only the `docker exec` executor adds `timeout`."""
    assert bash_argv("true")[0] == "bash" and python_argv("pass")[0] == "python3"


def test_chunks_stay_below_the_kernel_argument_limit() -> None:
    chunks = split_chunks("😀" * 100_000)
    assert all(len(c.encode()) < 128 * 1024 for c in chunks)
    assert "".join(chunks) == "😀" * 100_000


def test_nul_bytes_are_refused() -> None:
    with pytest.raises(ValueError, match="NUL"):
        split_chunks("a\x00b")
