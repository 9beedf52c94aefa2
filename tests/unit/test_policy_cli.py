"""`sandbox-gateway policy ...` and SIGHUP reload: the reviewer's tools, run in-process."""

import json
from pathlib import Path

import pytest
import yaml

from audit import AuditLog, MemorySink
from gateway.auth.tokens import TokenStore
from gateway.backend.docker_engine import DockerBackend
from gateway.calls.reload import reload_policy
from gateway.calls.service import ExecutionService
from gateway.cli import main
from gateway.sandboxes.broker import Broker
from policy import load_policy
from policy.engine import PolicyEngine
from policy.loader import default_policy_path
from tests.support import audit_events, matching


def weaker_copy(tmp_path: Path) -> Path:
    doc = load_policy().model_dump(mode="json")
    doc["profiles"]["default"]["sandbox"]["read_only_rootfs"] = False
    path = tmp_path / "new.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_check_prints_effective_profiles_and_digest(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", str(default_policy_path())]) == 0
    out = capsys.readouterr().out
    assert f"digest {load_policy().digest()}" in out
    effective = yaml.safe_load(out)
    assert effective["profiles"]["strict"]["sandbox"]["images"] == ["mcp-code-executor:latest"], (
        "extends resolved"
    )


def test_check_fails_on_any_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\nprofiles:\n  x:\n    tools: [execute_bash]\n    sandbox: {images: [i], pid: host}\n"
    )
    assert main(["policy", "check", str(default_policy_path()), str(bad)]) == 1
    assert "bad.yaml: profiles.x.sandbox.pid: forbidden by guardrail no-host-pid" in capsys.readouterr().err


def test_explain_allowed_and_denied(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            ["policy", "explain", "--principal", "p", "--tool", "execute_bash", "--args", '{"command": "ls"}']
        )
        == 0
    )
    allowed = json.loads(capsys.readouterr().out)
    assert allowed["allowed"] and allowed["effective"]["timeout_s"] == 30
    assert (
        main(["policy", "explain", "--principal", "p", "--profile", "strict", "--tool", "execute_bash"]) == 1
    )
    denied = json.loads(capsys.readouterr().out)
    assert denied["reasons"] == ["tool-not-allowed"] and denied["rule_ids"] == ["profiles.strict.tools"]


def test_explain_takes_the_profile_from_a_tokens_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    TokenStore(tmp_path / "t").create("dana", profile="data-science")
    argv = [
        "policy",
        "explain",
        "--principal",
        "dana",
        "--tool",
        "execute_python",
        "--tokens",
        str(tmp_path / "t"),
        "--args",
        '{"code": "1", "timeout_s": 300}',
    ]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["profile"] == "data-science"


def test_explain_rejects_bad_args_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "explain", "--principal", "p", "--tool", "execute_bash", "--args", "{nope"]) == 2
    assert "--args is not JSON" in capsys.readouterr().err


def test_diff_exits_1_on_weakening_and_0_otherwise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new = weaker_copy(tmp_path)
    assert main(["policy", "diff", str(default_policy_path()), str(new)]) == 1
    assert "!! WEAKER   sandbox.read_only_rootfs: True -> False" in capsys.readouterr().out
    assert main(["policy", "diff", str(new), str(default_policy_path())]) == 0


def test_render_shows_the_host_config_of_each_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "render", str(default_policy_path())]) == 0
    rendered = json.loads(capsys.readouterr().out)
    assert rendered["strict"]["HostConfig"]["Runtime"] == "runsc"
    assert rendered["default"]["HostConfig"]["ReadonlyRootfs"] is True
    assert rendered["data-science"]["HostConfig"]["Memory"] == 4 * 1024**3
    assert rendered["default"]["HostConfig"]["NetworkMode"] == "none" and "Egress" not in rendered["default"]


def test_render_shows_the_network_side_of_an_egress_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = yaml.safe_load(default_policy_path().read_text())
    doc["profiles"]["web"] = {"extends": "default", "egress": {"allow": ["pypi.org:443"]}}
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(doc))
    assert main(["policy", "render", str(tmp_path / "policy.yaml")]) == 0
    web = json.loads(capsys.readouterr().out)["web"]
    assert web["HostConfig"]["NetworkMode"] == "sandbox-gateway-egress"
    assert web["HostConfig"]["Dns"] == ["10.213.0.254"]
    assert list(web["NetworkingConfig"]["EndpointsConfig"]) == ["sandbox-gateway-egress"]
    assert "HTTPS_PROXY=http://10.213.0.1:3128" in web["Env"]
    assert web["Egress"]["allow"] == ["pypi.org:443"] and web["Egress"]["proxy"] == "http://10.213.0.1:3128"


def test_reload_switches_to_a_valid_policy_and_refuses_a_bad_one(tmp_path: Path) -> None:
    sink = MemorySink()
    audit = AuditLog([sink])
    broker = Broker(DockerBackend("tcp://127.0.0.1:1"), audit)  # never contacted here
    service = ExecutionService(PolicyEngine(load_policy()), broker, audit)
    original = service.engine.digest
    path = weaker_copy(tmp_path)
    assert reload_policy(service, path, audit)
    reloaded = service.engine.digest
    assert reloaded != original
    path.write_text(
        "version: 1\nprofiles:\n"
        "  default: {tools: [execute_bash], sandbox: {images: [i], privileged: true}}\n"
    )
    assert not reload_policy(service, path, audit)
    events = audit_events(sink)
    assert [e["outcome"]["status"] for e in matching(events, "policy.reload")] == ["ok", "rejected"]
    assert "no-privileged" in events[-1]["outcome"]["error"]
    assert service.engine.digest == reloaded, "the rejected file left the policy in force unchanged"
