"""Sandbox uid ranges: parsed strictly, picked at random within, and never overlapping a host account."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.uids import DEFAULT_UID_RANGE, UidRange, host_accounts_in


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("1000", "not LOW-HIGH", id="one-number"),
        pytest.param("a-b", "not LOW-HIGH", id="words"),
        pytest.param("-5-10", "not LOW-HIGH", id="negative"),
        pytest.param("0-100000", "within 1000", id="includes-root"),
        pytest.param("5000-4000", "low <= high", id="reversed"),
        pytest.param("2000000000-2000000010", "too small", id="too-small"),
        pytest.param("2147483000-2147483647", "within", id="past-int32"),
    ],
)
def test_bad_ranges_are_refused_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        UidRange.parse(text)


def test_picks_stay_in_the_range_and_avoid_what_is_taken() -> None:
    uids = UidRange.parse("3000000-3000063")
    taken = set(range(3000000, 3000063))
    assert {uids.pick(taken) for _ in range(20)} == {3000063}
    assert all(uids.pick() in uids for _ in range(200))
    with pytest.raises(ConfigError, match=r"every uid .* is taken"):
        uids.pick(set(range(3000000, 3000064)))


def _root(tmp_path: Path, passwd: str = "", group: str = "", subuid: str = "") -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(passwd)
    (tmp_path / "etc" / "group").write_text(group)
    (tmp_path / "etc" / "subuid").write_text(subuid)
    return tmp_path


def test_host_accounts_groups_and_subordinate_ranges_inside_the_range_are_named(tmp_path: Path) -> None:
    root = _root(
        tmp_path,
        passwd="root:x:0:0::/root:/bin/sh\nalice:x:2000000005:100::/home/alice:/bin/sh\n",
        group="wheel:x:2000000007:\n",
        subuid="bob:1999999000:2000\n",
    )
    found = host_accounts_in(UidRange.parse(DEFAULT_UID_RANGE), root)
    assert found == ["/etc/passwd: alice", "/etc/group: wheel", "/etc/subuid: bob"]
    assert host_accounts_in(UidRange.parse("5000-9999"), root) == []


def test_serve_refuses_a_range_that_holds_a_host_account(tmp_path: Path) -> None:
    """root's own uid range cannot be chosen; an account in the range stops `serve` before it starts."""
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--sandbox-uids", "1000-70000", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "DOCKER_HOST": "unix:///nonexistent/proxy.sock"},
        cwd=Path(__file__).parents[2],
    )
    assert proc.returncode != 0
    assert "holds host accounts" in proc.stderr and "nobody" in proc.stderr


def test_the_socket_proxy_refuses_a_range_that_holds_a_host_account(tmp_path: Path) -> None:
    """The boundary checks the range too: the proxy will not start on one that holds `nobody`."""
    proc = subprocess.run(
        [
            sys.executable, "-m", "gateway.sockproxy", "--sandbox-uids", "1000-70000",
            "--listen", f"unix:{tmp_path / 'proxy.sock'}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert proc.returncode == 2
    assert "holds host accounts" in proc.stderr and "nobody" in proc.stderr
    assert not (tmp_path / "proxy.sock").exists()
