"""`sandbox-gateway policy check | explain | diff | render`: the security reviewer's tools."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from gateway.auth.tokens import TokenStore
from gateway.backend.create_body import create_body
from gateway.calls.code_mode_results import UpstreamExplanation
from gateway.calls.explain import action_for, explain, explain_upstream
from gateway.calls.results import PolicyExplanation
from gateway.egress.network import EgressNetwork
from gateway.errors import ConfigError
from gateway.uids import DEFAULT_UID_RANGE, UidRange
from policy import PolicyError, Principal, load_policy
from policy.diff import diff_policies, render_diff
from policy.engine import PolicyEngine

__all__ = ["add_policy_commands"]


def _check(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        try:
            policy = load_policy(path)
        except PolicyError as exc:
            print(f"FAIL {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"# {path}: ok, digest {policy.digest()}")
        print(yaml.safe_dump(policy.model_dump(mode="json"), sort_keys=False), end="")
    return 1 if failed else 0


def _explain(args: argparse.Namespace) -> int:
    engine = PolicyEngine(_load(args.policy))
    tenant, profile = args.tenant, args.profile
    if args.tokens is not None:
        known = TokenStore(args.tokens).principal_entry(args.principal)
        if known is None:
            raise ConfigError(f"principal {args.principal!r} has no token in {args.tokens}")
        tenant, profile = known.tenant, known.profile
    try:
        tool_args: dict[str, Any] = json.loads(args.args) if args.args else {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--args is not JSON: {exc.msg}") from exc
    if not isinstance(tool_args, dict):
        raise ConfigError("--args must be a JSON object of tool arguments")
    principal = Principal(args.principal, tenant, profile)
    if args.upstream is not None:
        server, slash, tool = args.upstream.partition("/")
        if not (server and slash and tool):
            raise ConfigError("--upstream takes SERVER/TOOL, e.g. notes/read_note")
        explanation: PolicyExplanation | UpstreamExplanation = explain_upstream(
            engine, principal, server, tool, tool_args
        )
    else:
        explanation = explain(engine, principal, action_for(args.tool, tool_args))
    report = explanation.model_dump(mode="json")
    if report["effective"] is None:
        del report["effective"]
    print(json.dumps(report, indent=2))
    return 0 if explanation.allowed else 1


def _diff(args: argparse.Namespace) -> int:
    changes = diff_policies(_load(args.old), _load(args.new))
    print(render_diff(changes), end="")
    return 1 if any(change.verdict == "weaker" for change in changes) else 0


def _render(args: argparse.Namespace) -> int:
    policy = _load(args.file)
    rendered = {}
    for name, profile in policy.profiles.items():
        # Each sandbox gets its own uid; the range's first stands for it here.
        uid = UidRange.parse(DEFAULT_UID_RANGE).low
        # An egress sandbox gets an address of its own too; the subnet's first stands for it here.
        network = EgressNetwork.from_env()
        address = str(network.gateway + 1)
        body = create_body(
            profile.sandbox,
            uid=uid,
            image=profile.sandbox.image_names()[0],
            labels={},
            egress=(network, address),
        )
        rendered[name] = {"Image": body["Image"], "User": body["User"], "HostConfig": body["HostConfig"]}
        if profile.egress is not None:
            rendered[name] |= {
                "Env": body["Env"],
                "NetworkingConfig": body["NetworkingConfig"],
                "Egress": {"proxy": network.proxy_url, **profile.egress.model_dump(mode="json")},
            }
    print(json.dumps(rendered, indent=2, sort_keys=True))
    return 0


def _load(path: Path | None) -> Any:
    try:
        return load_policy(path)
    except PolicyError as exc:
        raise ConfigError(str(exc)) from exc


def add_policy_commands(sub: Any) -> None:
    policy = sub.add_parser("policy", help="check, explain, diff and render policy files")
    commands = policy.add_subparsers(dest="policy_command", required=True)

    check = commands.add_parser("check", help="validate files and print their effective profiles")
    check.add_argument("files", nargs="+", type=Path)
    check.set_defaults(func=_check)

    explain = commands.add_parser(
        "explain", help="the Decision for one principal and tool call, with reasons"
    )
    explain.add_argument("--principal", required=True)
    call = explain.add_mutually_exclusive_group(required=True)
    call.add_argument("--tool", help="a tool of the gateway")
    call.add_argument(
        "--upstream",
        metavar="SERVER/TOOL",
        help="a tool of an upstream MCP server, called by code in the principal's sandbox (code mode)",
    )
    explain.add_argument("--args", help='tool arguments as JSON, e.g. \'{"command": "ls", "timeout_s": 5}\'')
    explain.add_argument("--policy", type=Path, help="policy file (default: the shipped one)")
    explain.add_argument("--tenant", default="default")
    explain.add_argument("--profile", default="default", help="the profile the principal's token names")
    explain.add_argument("--tokens", type=Path, help="take tenant and profile from this tokens file")
    explain.set_defaults(func=_explain)

    diff = commands.add_parser(
        "diff", help="what got weaker or stronger; exit status 1 if anything got weaker"
    )
    diff.add_argument("old", type=Path)
    diff.add_argument("new", type=Path)
    diff.set_defaults(func=_diff)

    render = commands.add_parser("render", help="the Docker HostConfig each profile produces")
    render.add_argument("file", type=Path, nargs="?")
    render.set_defaults(func=_render)
