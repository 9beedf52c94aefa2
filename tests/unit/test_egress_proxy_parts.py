"""The egress proxy's pure parts: the ACL helper's answers (what Squid is told), the join of the two
access logs into one record per connection, the rendered configurations, and the create body an
egress sandbox gets (which the socket proxy accepts, and nothing wider)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gateway.egress import acl_helper
from gateway.egress.log_lines import Joiner, parse_line
from gateway.egress.network import EgressNetwork
from gateway.egress.squid_conf import ProxyLayout, front_conf, tls_conf
from policy import load_policy
from policy.egress_model import Egress

NET = EgressNetwork()
NAME = "sgw-0123456789abcdef"


@pytest.fixture
def policy(tmp_path: Path) -> acl_helper.Policy:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({
        "sources": {"10.213.0.7": {"principal": "alice", "tenant": "acme", "profile": "web"}},
        "profiles": {"web": ["good.test:443", "*.good.test:443"]},
    }))  # fmt: skip
    return acl_helper.Policy(str(path))


@pytest.mark.parametrize(
    ("phase", "fields", "verdict", "rule"),
    [
        ("connect", "10.213.0.7 CONNECT good.test 443", "OK", "good.test:443"),
        ("connect", "10.213.0.7 CONNECT GOOD.test. 443", "OK", "good.test:443"),
        ("connect", "10.213.0.7 CONNECT x.good.test 443", "OK", "*.good.test:443"),
        ("connect", "10.213.0.7 CONNECT good.test 80", "ERR", "not-allowed"),
        ("connect", "10.213.0.7 CONNECT evil.test 443", "ERR", "not-allowed"),
        ("connect", "10.213.0.7 CONNECT 198.51.100.10 443", "ERR", "ip-literal"),
        ("connect", "10.213.0.7 CONNECT 2130706433 443", "ERR", "ip-literal"),
        ("connect", "10.213.0.7 CONNECT good.test%00.evil 443", "ERR", "helper-error"),
        ("connect", "10.213.0.7 CONNECT good_test 443", "ERR", "invalid-target"),
        ("connect", "10.213.0.8 CONNECT good.test 443", "ERR", "unknown-source"),
        ("connect", "10.213.0.7 CONNECT good.test 0443", "ERR", "not-allowed"),
        ("sni", "10.213.0.7 good.test 443 good.test", "OK", "good.test:443"),
        ("sni", "10.213.0.7 good.test 443 evil.test", "ERR", "sni-mismatch"),
        ("sni", "10.213.0.7 good.test 443 -", "ERR", "no-sni"),
        ("sni", "10.213.0.7 good.test", "ERR", "helper-error"),
        # Fields come as sent and are never decoded: `%` is refused, not read as an escape.
        ("connect", "10.213.0.7 CONNECT good%2etest 443", "ERR", "helper-error"),
        ("connect", "10.213.0.7 CONNECT x.good%2Etest 443", "ERR", "helper-error"),
        ("sni", "10.213.0.7 good.test 443 good.test%20evil.test", "ERR", "helper-error"),
        ("sni", "10.213.0.7 good.test 443 good.test x=1", "ERR", "helper-error"),
        ("sni", "10.213.0.7 good.test 443 good.test\x7f", "ERR", "helper-error"),
    ],
)
def test_the_helper_answers_squid(
    policy: acl_helper.Policy, phase: str, fields: str, verdict: str, rule: str
) -> None:
    reply = acl_helper.answer(policy, phase, f"3 {fields} -\n")  # Squid ends each line with %DATA
    assert reply.startswith(f"3 {verdict} ")
    assert f'rule="{rule}"' in reply
    if verdict == "OK" and phase == "sni":
        assert 'clt_conn_tag="sni-verified"' in reply
    if verdict == "ERR":
        assert "clt_conn_tag" not in reply and 'message="egress refused' in reply


def test_the_helper_fails_closed_on_an_unreadable_policy(tmp_path: Path) -> None:
    broken = acl_helper.Policy(str(tmp_path / "missing.json"))
    assert acl_helper.answer(broken, "connect", "0 10.213.0.7 CONNECT good.test 443").startswith("0 ERR ")


def _line(**fields: str) -> dict[str, str]:
    return parse_line(" ".join(f"{k}={v}" for k, v in fields.items()))


def test_a_spliced_tunnel_is_one_allowed_connection_with_the_real_server() -> None:
    joiner = Joiner()
    joiner.tls(
        _line(
            src="10.213.0.7",
            src_port="5000",
            method="CONNECT",
            squid="NONE_NONE",
            sni="good.test",
            rule="good.test:443",
        )
    )
    joiner.tls(
        _line(src="127.0.0.1", src_port="5000", method="CONNECT", squid="TCP_TUNNEL", server="198.51.100.10")
    )
    front = _line(
        src="10.213.0.7",
        up_port="5000",
        method="CONNECT",
        host="good.test",
        port="443",
        status="200",
        up="800",
        down="1800",
        ms="40",
        principal="alice",
        rule="good.test:443",
        msg="allowed%20by",
    )
    assert joiner.front(front, 0.0) is None
    [conn] = joiner.ready(0.1)
    assert conn.allowed and conn.server == "198.51.100.10" and conn.sni == "good.test"
    assert (conn.bytes_up, conn.bytes_down, conn.principal, conn.message) == (
        800,
        1800,
        "alice",
        "allowed by",
    )


def test_an_sni_mismatch_and_a_late_block_are_refusals() -> None:
    joiner = Joiner()
    joiner.tls(
        _line(
            src="10.213.0.7",
            src_port="1",
            method="CONNECT",
            squid="NONE_NONE",
            sni="evil.test",
            rule="sni-mismatch",
            msg="no",
        )
    )
    joiner.tls(_line(src="10.213.0.7", src_port="2", method="CONNECT", squid="NONE_NONE", sni="good.test"))
    for port in ("1", "2"):
        joiner.front(
            _line(
                src="10.213.0.7",
                up_port=port,
                method="CONNECT",
                host="good.test",
                status="200",
                rule="good.test:443",
                principal="alice",
            ),
            0.0,
        )
    [first] = joiner.ready(0.0)  # refused at the tls stage: known at once
    assert not first.allowed and first.rule == "sni-mismatch"
    assert joiner.ready(1.0) == []  # allowed there but not spliced (yet): the tunnel line may follow
    [second] = joiner.ready(joiner.wait_s)
    assert not second.allowed and second.rule == "blocked-address"


def test_front_refusals_name_their_rule_and_probes_are_not_connections() -> None:
    joiner = Joiner()
    limit = joiner.front(
        _line(src="10.213.0.7", method="CONNECT", host="a", status="403", err="ERR_EGRESS_LIMIT"), 0
    )
    assert limit is not None and not limit.allowed and limit.rule == "max-connections"
    addr = joiner.front(
        _line(src="10.213.0.7", method="GET", host="a", status="403", err="ERR_EGRESS_ADDR"), 0
    )
    assert addr is not None and addr.rule == "blocked-address"
    assert joiner.front(_line(src="10.213.0.1", method="-", status="0"), 0) is None
    plain = joiner.front(
        _line(
            src="10.213.0.7", method="GET", host="a", status="200", server="198.51.100.10", principal="alice"
        ),
        0,
    )
    assert plain is not None and plain.allowed
    # Squid refused it as malformed before asking the helper: never an allowed connection.
    odd = joiner.front(_line(src="10.213.0.7", method="PRI", host="", status="200"), 0)
    assert odd is not None and not odd.allowed and odd.rule == "invalid-request"


def _layout(tmp_path: Path) -> ProxyLayout:
    return ProxyLayout(
        NET, tmp_path, 40000, "tok+en", "/usr/bin/python3", host_addresses=("192.0.2.2", "127.0.0.1")
    )


def test_front_refuses_before_it_resolves_and_carries_each_profiles_limits(tmp_path: Path) -> None:
    text = front_conf(
        _layout(tmp_path),
        {"web": Egress(allow=("a.test:443",), max_connections=5, download_bytes_per_s=4096)},
    )
    order = [line for line in text.splitlines() if line.startswith("http_access")]
    assert order.index("http_access deny !egress_ok") < order.index("http_access deny blocked_addr")
    assert order[-1] == "http_access deny all"
    assert "maxconn 5" in text and "delay_parameters 1 -1/-1 -1/-1 4096/4096" in text
    blocked = next(line for line in text.splitlines() if line.startswith("acl blocked_addr"))
    assert "169.254.0.0/16" in blocked and "192.0.2.2" in blocked and "10.0.0.0/8" in blocked
    assert f"http_port {NET.gateway}:3128" in text and "ssl-bump" not in text


def test_the_tls_stage_never_refuses_at_http_access_and_trusts_only_front(tmp_path: Path) -> None:
    text = tls_conf(_layout(tmp_path), tmp_path / "c", tmp_path / "k")
    assert "http_port 127.0.0.1:40000 ssl-bump" in text
    assert r"X-Egress-Stage-Token ^tok\+en$" in text
    assert "ssl_bump terminate step2 blocked_addr" in text and text.index("terminate step2") < text.index(
        "splice"
    )


def test_a_gateway_whose_proxy_never_started_reads_no_logs_and_survives(tmp_path: Path) -> None:
    """The log reader runs in every gateway: without a proxy (no egress profile) it has nothing to read."""
    from audit import AuditLog, MemorySink
    from gateway.egress.service import EgressService

    service = EgressService(NET, tmp_path / "egress", load_policy, AuditLog([MemorySink()]))
    assert service.profiles() == {} and service.poll() == [] and service.poll(everything=True) == []
    assert not service.running


def test_a_proxy_left_by_a_gateway_that_is_gone_is_stopped_and_a_live_ones_kept(tmp_path: Path) -> None:
    import subprocess
    import sys

    from gateway.egress.squid import stop_orphans

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    procs = {}
    for state, owner in (("orphan", gone.stdout.strip()), ("owned", str(os.getpid()))):
        (tmp_path / state / "run").mkdir(parents=True)
        (tmp_path / state / "gateway.pid").write_text(owner)
        conf = str(tmp_path / state / "front.conf")
        procs[state] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", conf])
        (tmp_path / state / "run" / "front.pid").write_text(str(procs[state].pid))
    try:
        assert stop_orphans(tmp_path) == [procs["orphan"].pid]
        assert procs["orphan"].wait(timeout=10) != 0 and procs["owned"].poll() is None
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
