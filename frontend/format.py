"""Results and problems as the Markdown the page shows (pure functions: the unit tests read them)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from frontend.client import Problem

__all__ = [
    "admin_choices",
    "admin_table",
    "duration",
    "exec_summary",
    "file_choices",
    "file_table",
    "library_table",
    "nbytes",
    "problem_text",
    "sandbox_facts",
    "sign_in_failed",
    "signed_in_text",
    "signed_in_through",
]

_HINTS = {
    "unreachable": "Check that the gateway is running at the address the console was started with.",
    "unauthorized": "Sign out and sign in again with a valid token.",
    "rate-limited": "Wait, then run it again.",
}


def _cell(value: object) -> str:
    """A value safe inside a Markdown table cell (no pipes, no line breaks, no HTML)."""
    text = str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
    return text.replace("<", "&lt;").replace(">", "&gt;").replace("`", "'")


def nbytes(count: float) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover - the loop returns


def duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:.0f} min"


def problem_text(problem: Problem) -> str:
    """A refusal or failure, plainly: the code first (as the gateway words it), then what to do."""
    retry = f" Retry in {problem.retry_after_s:.0f} s." if problem.retry_after_s is not None else ""
    hint = _HINTS.get(problem.kind, "")
    return f"**Error `{_cell(problem.code)}`**: {_cell(problem.message)}.{retry} {hint}".replace(
        "..", "."
    ).strip()


def exec_summary(result: Mapping[str, Any]) -> str:
    """Exit code, duration and the flags of an ExecResult."""
    code = result.get("exit_code")
    parts = [
        f"**exit code {code if code is not None else 'unknown'}**",
        f"{float(result.get('duration_ms', 0)):.0f} ms",
    ]
    flags = [
        ("timed_out", "timed out"),
        ("truncated", "output truncated"),
        ("oom_killed", "killed: out of memory"),
        ("sandbox_replaced", "sandbox replaced: earlier files are gone"),
    ]
    parts += [f"**{label}**" for key, label in flags if result.get(key)]
    return " · ".join(parts)


def signed_in_text(info: Mapping[str, Any]) -> str:
    return (
        f"Signed in as **{_cell(info['principal'])}** (tenant {_cell(info['tenant'])}, "
        f"profile {_cell(info['profile'])})"
    )


def signed_in_through(who: str, issuer: str, expires_in_s: int | None) -> str:
    lifetime = f", for {duration(expires_in_s)}" if expires_in_s else ""
    return f"{who}, through {_cell(issuer)}{lifetime}"


def sign_in_failed(reason: str) -> str:
    return f"**Not signed in**: {_cell(reason)}."


def sandbox_facts(info: Mapping[str, Any]) -> str:
    """`sandbox_info` as a table: profile, limits, rates and the live sandbox's time left."""
    rows = [
        ("Principal", info["principal"]),
        ("Tenant", info["tenant"]),
        ("Profile", info["profile"]),
        ("Tools", ", ".join(info.get("tools", []))),
        ("Image", info["image"]),
        ("Network", info["network"]),
        ("CPUs", info["cpus"]),
        ("Memory", nbytes(info["memory_bytes"])),
        ("Processes", info["pids_limit"]),
        (
            "Writable",
            ", ".join(f"{p} ({nbytes(s)})" for p, s in sorted(info.get("writable_paths", {}).items())),
        ),
        ("Timeout", f"{info['default_timeout_s']:.0f} s by default, at most {info['max_timeout_s']:.0f} s"),
        ("Output cap", nbytes(info["max_output_bytes"])),
        ("Input cap", nbytes(info["max_input_bytes"])),
        ("Concurrent calls", f"{info['max_concurrent']} (tenant: {info['max_concurrent_per_tenant']})"),
        ("Request rate", f"{info['requests_rate']} (tenant: {info['tenant_requests_rate']})"),
        ("Sandbox creations", info["sandbox_creations_rate"]),
        ("Idle expiry", duration(info["idle_ttl_s"])),
        ("Maximum age", duration(info["max_age_s"])),
    ]
    sandbox = info.get("sandbox")
    if sandbox:
        rows += [
            ("Sandbox", f"running ({str(sandbox['container_id'])[:12]})"),
            ("Time left before idle expiry", duration(sandbox["idle_expires_in_s"])),
            ("Time left before maximum age", duration(sandbox["max_age_expires_in_s"])),
        ]
        if not sandbox.get("up_to_date", True):
            rows.append(("Policy", "changed: your next call starts a new sandbox"))
    else:
        rows.append(("Sandbox", "none yet: your next call starts one"))
    return "| | |\n|---|---|\n" + "\n".join(f"| {_cell(k)} | {_cell(v)} |" for k, v in rows)


def library_table(listing: Mapping[str, Any], what: str) -> str:
    """`list_skills` / `list_tools`: each file with its size and summary."""
    entries: Sequence[Mapping[str, Any]] = listing.get("entries", [])
    if not entries:
        return f"No {what} are mounted at {_cell(listing.get('mount', ''))}."
    lines = ["| Path | Size | Summary |", "|---|---|---|"]
    lines += [
        f"| `{_cell(e['path'])}` | {nbytes(e['size'])} | {_cell(e.get('summary', ''))} |" for e in entries
    ]
    return "\n".join(lines)


def file_table(listing: Mapping[str, Any]) -> str:
    entries: Sequence[Mapping[str, Any]] = listing.get("entries", [])
    path = _cell(listing.get("path", "/workspace"))
    if not entries:
        return f"`{path}` is empty."
    lines = [f"`{path}`", "", "| Name | Type | Size |", "|---|---|---|"]
    lines += [f"| {_cell(e['name'])} | {_cell(e['type'])} | {nbytes(e['size'])} |" for e in entries]
    return "\n".join(lines)


def file_choices(listing: Mapping[str, Any]) -> list[str]:
    """The full paths of the regular files in a listing (for download and view)."""
    base = str(listing.get("path", "/workspace")).rstrip("/")
    return [f"{base}/{e['name']}" for e in listing.get("entries", []) if e.get("type") == "file"]


def admin_table(listing: Mapping[str, Any], now: float | None = None) -> str:
    """The tenant's live sandboxes: principal, profile, age and idle time."""
    now = time.time() if now is None else now
    sandboxes: Sequence[Mapping[str, Any]] = listing.get("sandboxes", [])
    tenant = _cell(listing.get("tenant", ""))
    if not sandboxes:
        return f"No live sandboxes in tenant **{tenant}**."
    lines = [
        f"Tenant **{tenant}**: {len(sandboxes)} live",
        "",
        "| Principal | Profile | Age | Idle | Container |",
        "|---|---|---|---|---|",
    ]
    for box in sorted(sandboxes, key=lambda b: str(b["principal"])):
        lines.append(
            f"| {_cell(box['principal'])} | {_cell(box['profile'])} | {duration(now - box['created_at'])} | "
            f"{duration(now - box['last_used'])} | {_cell(str(box['container_id'])[:12])} |"
        )
    return "\n".join(lines)


def admin_choices(listing: Mapping[str, Any]) -> list[str]:
    return sorted(str(box["principal"]) for box in listing.get("sandboxes", []))


#: What the policy view shows of each profile: (section, field, label).
_POLICY_ROWS = (
    ("exec", "default_timeout_s", "default timeout (s)"),
    ("exec", "max_timeout_s", "max timeout (s)"),
    ("exec", "max_output_bytes", "output cap (bytes)"),
    ("exec", "max_concurrent", "calls at once"),
    ("sandbox", "runtime", "runtime"),
    ("sandbox", "network", "network"),
    ("sandbox", "cpus", "CPUs"),
    ("sandbox", "memory_bytes", "memory (bytes)"),
    ("sandbox", "pids_limit", "processes"),
    ("sandbox", "exec_path", "exec path"),
    ("lifecycle", "idle_ttl_s", "idle expiry (s)"),
    ("lifecycle", "max_age_s", "max age (s)"),
    ("rate_limits", "requests", "request rate"),
    ("rate_limits", "sandbox_creations", "sandbox creations"),
)


def _code_mode(mode: Mapping[str, Any] | None) -> str:
    """A profile's code mode in a cell: off, or the upstream tools it allows."""
    if not mode:
        return "off"
    return "on: " + ", ".join(str(line) for line in mode.get("allow", []))


def _egress(egress: Mapping[str, Any] | None) -> str:
    """A profile's egress in a cell: no network, or the host:port rules it allows."""
    if not egress:
        return "off (no network)"
    return "on: " + ", ".join(str(rule) for rule in egress.get("allow", []))


def policy_view(policy: Mapping[str, Any]) -> str:
    """The policy in force (`admin_policy`): each profile's effective limits side by side, then
    the Decision explained, when one was asked for."""
    profiles: Sequence[Mapping[str, Any]] = policy.get("profiles", [])
    names = [_cell(p.get("name", "")) for p in profiles]
    digest, tenant = str(policy.get("policy_digest", ""))[:19], policy.get("tenant", "")
    lines = [
        f"Policy `{_cell(digest)}`, tenant **{_cell(tenant)}**",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        "| tools | " + " | ".join(_cell(", ".join(p.get("tools", []))) for p in profiles) + " |",
        "| code mode | " + " | ".join(_cell(_code_mode(p.get("code_mode"))) for p in profiles) + " |",
        "| egress | " + " | ".join(_cell(_egress(p.get("egress"))) for p in profiles) + " |",
    ]
    for section, field, label in _POLICY_ROWS:
        cells = [_cell((p.get(section) or {}).get(field, "")) for p in profiles]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    decision = policy.get("decision")
    if decision:
        verdict = "**allowed**" if decision.get("allowed") else "**denied**"
        lines += [
            "",
            f"#### Explain: {_cell(decision.get('principal', ''))} (profile "
            f"{_cell(decision.get('profile', ''))}): {verdict}",
            f"- reasons: {_cell(', '.join(decision.get('reasons', [])))}",
            f"- rules: {_cell(', '.join(decision.get('rule_ids', [])))}",
        ]
        if decision.get("message"):
            lines.append(f"- why: {_cell(decision['message'])}")
    return "\n".join(lines)
