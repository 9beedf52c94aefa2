"""The audit event schema: one JSON object per line, the same in every sink.

Top level: `ts`, `event_id`, `event`, `request_id`, `trace_id`, `span_id`, `tool`,
`policy_digest`, `prev_hash`, `hash`, and these groups (present when they apply):

- `actor`: who — `principal`, `tenant`, `auth_method`, `source_ip`
- `decision`: the policy's answer — `result` (allow/deny), `reasons`, `rule_ids`, `profile`
- `resource`: what it touched — `container_id`, `image`, `image_digest`, `runtime`
- `outcome`: how it ended — `status` (ok/error/rejected), `error`, `exit_code`, `timed_out`,
  `oom_killed`, `truncated`, `sandbox_lost`, `sandbox_replaced`, `duration_ms`, `stdout_bytes`, `stderr_bytes`
- `limits`: what bounded it — `timeout_s`, `max_output_bytes`, `input_bytes`, `limit`, `rate`,
  `retry_after_s`
- `upstream`: code mode — `server`, `tool`, `rule_id`, `arguments` (like `code`: an HMAC, the text
  or absent), `result_bytes`; on `exec.finish`, `calls` made and `refused` (count per code)
- `egress`: a sandbox's connection through the egress proxy — `sandbox_ip`, `method`, `host`, `port`,
  `rule` (the allow-list entry, or the rule that refused it), `sni`, `server_address` (the address the
  proxy connected to), `bytes_up`, `bytes_down`
- `interpreter`: run_python on `exec.finish` — `new` (a fresh interpreter ran it), `state_lost_reason`
  (why earlier variables are gone), `interrupted` (the timeout's KeyboardInterrupt), `ended` (how the
  interpreter ended during the call), `error_type`, `images`, `rich_bytes`, `memory_kb`
- `code`: the submitted code, per the policy's `audit.code`: `{"hmac_sha256": ...}` (default),
  `{"text": ...}` (full) or absent (none)
- `detail`: anything else an event carries (e.g. `reason` of a removal)
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["EVENTS", "GROUPS", "TOP_LEVEL", "AuditEvent"]

#: Every event name the gateway emits, and when.
EVENTS: dict[str, str] = {
    "gateway.start": "the gateway started serving (version, gateway id, policy digest)",
    "gateway.stop": "the gateway stopped; sandboxes it removed, calls still running when they were removed",
    "auth.failed": "a request to /mcp without a valid credential (reason, source address); the first from "
    "a source in a window (and the first of each reason), the rest are counted in audit.repeated",
    "audit.repeated": "a window of repeated auth.failed, ratelimit.hit, budget.refused or capacity.delayed "
    "from one source ended: detail.of, count, suppressed (got no line of their own), first_ts, last_ts, "
    "window_s, counts (per reason); detail.overflow for sources the full table did not track one by one",
    "audit.gap": "deferred events (an execution's exec.finish, docker.exec...) were lost because no sink "
    "could write them; written when the log works again: detail.lost, lost_events ([{event, count}]), "
    "lost_event_ids (the first 100), lost_event_ids_truncated, failed_since",
    "audit.overflow": "the table of sources for repeated events is full (detail.of, capacity, window_s): "
    "new sources are counted together until the window ends",
    "tool.rejected": "a tool call refused before it ran, with outcome.error: insufficient-scope, "
    "invalid-argument (detail.message, or detail.invalid: field and error type, never the value), "
    "unknown-tool",
    "policy.decision": "the policy engine decided a tool call (allow or deny, reasons, rule ids)",
    "policy.reload": "a policy reload was applied (ok) or refused (rejected), with the error",
    "ratelimit.hit": "a call or a sandbox creation was refused by a rate limit (limits.limit: address for "
    "requests that did not authenticate, requests per principal, tenant-requests per tenant, ...); at the "
    "HTTP front, the first per source (address, principal or tenant) and window, the rest counted in "
    "audit.repeated",
    "budget.refused": "a call or a new MCP session was refused because a budget shared with others was "
    "spent: limits.limit tenant-concurrency (the tenant's calls running at once, detail.cap), sessions "
    "(the principal's open MCP sessions) or session-requests (requests in flight on one session); the first "
    "per source and window, the rest counted in audit.repeated",
    "capacity.delayed": "a Docker API call waited for a worker of the shared pool (detail.op, "
    "detail.waited_ms, detail.workers; limits.limit docker-workers): the first per principal and window, the "
    "rest counted in audit.repeated",
    "exec.start": "an allowed command is about to run (code digest, limits)",
    "exec.finish": "a command ended (exit code, timeout, OOM, truncation, byte counts, duration)",
    "file.finish": "a file tool ended: ok (the resolved detail.path), rejected (path-outside-workspace) "
    "or error (not-found, is-a-directory, engine or sandbox failures...) in outcome.error, with the path "
    "as asked",
    "sandbox.create": "a sandbox was created and started, for a principal or for a warm pool (detail.pool)",
    "sandbox.assign": "a warm-pool sandbox was handed to a principal (renamed to its sandbox name)",
    "sandbox.adopt": "a running sandbox from before a restart was taken over",
    "sandbox.remove": "a sandbox was removed (reset, idle, max-age, spec-changed, stale, lost, shutdown)",
    "sandbox.place": "fleet mode: a new sandbox was placed on a host (detail.host, rank: 0 for the host "
    "the placement preferred, candidates, free: the host's free capacity after it)",
    "host.up": "fleet mode: a sandbox host answered (detail.host, address, was: its state before)",
    "host.down": "fleet mode: a sandbox host stopped answering for the hosts file's down_after_s "
    "(detail.host, error, sandboxes on it, lost: those this gateway forgot, streams cut)",
    "host.drain": "fleet mode: a host started (detail.drain true) or stopped draining after a reload",
    "hosts.reload": "fleet mode: the hosts file was re-read (ok: added, removed, changed) or refused "
    "(rejected)",
    "sandbox.sweep": "start-up sweep: running sandboxes kept for adoption, stale or orphaned ones removed",
    "sandbox.admin_remove": "a tenant admin asked to remove a principal's sandbox (detail.target_principal)",
    "upstreams.start": "code mode: the upstream servers configured (detail.servers) and those connected "
    "at start",
    "tools.generate": "code mode: the upstream tools' modules were written into the tools directory "
    "(detail.trigger start or list-changed:SERVER, written, removed, unavailable servers)",
    "upstream.start": "code mode: an allowed call from sandbox code to an upstream tool is about to be made "
    "(upstream.server, tool, rule_id, arguments digest; limits.timeout_s); refused if it cannot be recorded",
    "upstream.call": "code mode: a call from sandbox code to an upstream tool ended: outcome ok, rejected "
    "(refused by policy before it was made, or its result refused: result-too-large, secret-in-result, "
    "upstream-tool-error) or error (upstream-unavailable, upstream-timeout, execution-ended...); refusals "
    "before a call are recorded once per code and execution, and counted in exec.finish's upstream.refused",
    "egress.start": "the egress proxy started (detail.proxy_url, profiles with egress)",
    "egress.stop": "the egress proxy stopped",
    "egress.connection": "a sandbox's connection through the egress proxy ended: decision allow or deny, "
    "egress.rule (the allow-list entry, or the rule that refused it: not-allowed, ip-literal, "
    "blocked-address, sni-mismatch, no-sni, not-tls, max-connections, method, unknown-source...), "
    "decision.reasons (the proxy's message), egress.host, port, sni, server_address, bytes_up, bytes_down, "
    "outcome.duration_ms",
    "docker.list": "Docker API: list containers",
    "docker.create": "Docker API: create a container",
    "docker.start": "Docker API: start a container",
    "docker.exec": "one command in a sandbox (detail.exec_path: through its agent, or docker exec)",
    "docker.python": "one run_python call in a sandbox's interpreter (through its agent)",
    "docker.attach": "Docker API: attach to a sandbox's agent (and the agent's handshake)",
    "docker.rename": "Docker API: rename a warm-pool sandbox to its principal's sandbox name",
    "docker.inspect": "Docker API: inspect a sandbox (is it still running after a broken stream)",
    "docker.inspect_image": "Docker API: inspect the sandbox image (pinned digest check)",
    "docker.remove": "Docker API: remove a container",
}

TOP_LEVEL = frozenset(
    {
        "ts",
        "event_id",
        "event",
        "request_id",
        "trace_id",
        "span_id",
        "tool",
        "policy_digest",
        "prev_hash",
        "hash",
        "code",
    }
)

#: Flat keys as emitted -> (group, name in the group).
GROUPS: dict[str, tuple[str, str]] = {
    "principal": ("actor", "principal"),
    "tenant": ("actor", "tenant"),
    "auth_method": ("actor", "auth_method"),
    "source_ip": ("actor", "source_ip"),
    "decision": ("decision", "result"),
    "reasons": ("decision", "reasons"),
    "rule_ids": ("decision", "rule_ids"),
    "profile": ("decision", "profile"),
    "container_id": ("resource", "container_id"),
    "image": ("resource", "image"),
    "image_digest": ("resource", "image_digest"),
    "runtime": ("resource", "runtime"),
    "outcome": ("outcome", "status"),
    "error": ("outcome", "error"),
    "exit_code": ("outcome", "exit_code"),
    "timed_out": ("outcome", "timed_out"),
    "oom_killed": ("outcome", "oom_killed"),
    "truncated": ("outcome", "truncated"),
    "sandbox_lost": ("outcome", "sandbox_lost"),
    "sandbox_replaced": ("outcome", "sandbox_replaced"),
    "duration_ms": ("outcome", "duration_ms"),
    "stdout_bytes": ("outcome", "stdout_bytes"),
    "stderr_bytes": ("outcome", "stderr_bytes"),
    "timeout_s": ("limits", "timeout_s"),
    "max_output_bytes": ("limits", "max_output_bytes"),
    "input_bytes": ("limits", "input_bytes"),
    "limit": ("limits", "limit"),
    "rate": ("limits", "rate"),
    "retry_after_s": ("limits", "retry_after_s"),
    "server": ("upstream", "server"),
    "upstream_tool": ("upstream", "tool"),
    "rule_id": ("upstream", "rule_id"),
    "arguments": ("upstream", "arguments"),
    "result_bytes": ("upstream", "result_bytes"),
    "upstream_calls": ("upstream", "calls"),
    "upstream_refused": ("upstream", "refused"),
    "sandbox_ip": ("egress", "sandbox_ip"),
    "method": ("egress", "method"),
    "dest_host": ("egress", "host"),
    "dest_port": ("egress", "port"),
    "egress_rule": ("egress", "rule"),
    "sni": ("egress", "sni"),
    "server_address": ("egress", "server_address"),
    "bytes_up": ("egress", "bytes_up"),
    "bytes_down": ("egress", "bytes_down"),
    "interpreter_new": ("interpreter", "new"),
    "state_lost_reason": ("interpreter", "state_lost_reason"),
    "interrupted": ("interpreter", "interrupted"),
    "interpreter_ended": ("interpreter", "ended"),
    "error_type": ("interpreter", "error_type"),
    "images": ("interpreter", "images"),
    "rich_bytes": ("interpreter", "rich_bytes"),
    "memory_kb": ("interpreter", "memory_kb"),
}


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Actor(_Group):
    principal: str | None = None
    tenant: str | None = None
    auth_method: str | None = None
    source_ip: str | None = None


class DecisionPart(_Group):
    result: Literal["allow", "deny"] | None = None
    reasons: list[str] | None = None
    rule_ids: list[str] | None = None
    profile: str | None = None


class Resource(_Group):
    container_id: str | None = None
    image: str | None = None
    image_digest: str | None = None
    runtime: str | None = None


class Outcome(_Group):
    status: Literal["ok", "error", "rejected"] | None = None
    error: str | None = None
    exit_code: int | None = None
    timed_out: bool | None = None
    oom_killed: bool | None = None
    truncated: bool | None = None
    sandbox_lost: bool | None = None
    sandbox_replaced: bool | None = None
    duration_ms: float | None = None
    stdout_bytes: int | None = None
    stderr_bytes: int | None = None


class Limits(_Group):
    timeout_s: float | None = None
    max_output_bytes: int | None = None
    input_bytes: int | None = None
    limit: str | None = None
    rate: str | None = None
    retry_after_s: float | None = None


class Upstream(_Group):
    server: str | None = None
    tool: str | None = None
    rule_id: str | None = None
    arguments: dict[str, str] | None = None
    result_bytes: int | None = None
    calls: int | None = None
    refused: dict[str, int] | None = None


class EgressPart(_Group):
    sandbox_ip: str | None = None
    method: str | None = None
    host: str | None = None
    port: int | None = None
    rule: str | None = None
    sni: str | None = None
    server_address: str | None = None
    bytes_up: int | None = None
    bytes_down: int | None = None


class InterpreterPart(_Group):
    new: bool | None = None
    state_lost_reason: str | None = None
    interrupted: bool | None = None
    ended: str | None = None
    error_type: str | None = None
    images: int | None = None
    rich_bytes: int | None = None
    memory_kb: int | None = None


class AuditEvent(BaseModel):
    """One audit line, validated: the contract a SIEM parser can rely on."""

    model_config = ConfigDict(extra="forbid")

    ts: str
    event_id: str = Field(min_length=32, max_length=32)
    event: str
    request_id: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    tool: str | None = None
    policy_digest: str | None = None
    actor: Actor | None = None
    decision: DecisionPart | None = None
    resource: Resource | None = None
    outcome: Outcome | None = None
    limits: Limits | None = None
    upstream: Upstream | None = None
    egress: EgressPart | None = None
    interpreter: InterpreterPart | None = None
    code: dict[str, str] | None = None
    detail: dict[str, Any] | None = None
    prev_hash: str = Field(min_length=64, max_length=64)
    hash: str = Field(min_length=64, max_length=64)
