"""Helper processes a test starts (an issuer, an upstream server, the web console): wait until one
serves, and end it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from tests.support.waiting import eventually

__all__ = ["end", "wait_serving"]


def wait_serving(
    process: subprocess.Popen[bytes], url: str, log: Path, what: str, timeout_s: float = 30
) -> None:
    """Until `url` answers 2xx; RuntimeError with the log's tail if the process exits first."""

    def up() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text()[-2000:]}")
        return httpx.get(url, timeout=2).is_success

    eventually(
        up, timeout_s=timeout_s, interval_s=0.2, retry_on=(httpx.HTTPError,), message=f"{what} did not start"
    )


def end(process: subprocess.Popen[bytes], grace_s: float = 10) -> None:
    """SIGTERM, then SIGKILL after `grace_s`; reaped either way."""
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
