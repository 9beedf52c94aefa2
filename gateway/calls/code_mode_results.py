"""Wire models of code mode in the policy views: a profile's code mode in short, and the Decision
for one upstream call (`sandbox-gateway policy explain --upstream`)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from policy import CodeMode, UpstreamAllowed

__all__ = ["CodeModeLimits", "UpstreamBudgets", "UpstreamExplanation"]


class CodeModeLimits(BaseModel):
    """Code mode of a profile: the upstream MCP tools its sandboxes' code may call, and the budgets."""

    allow: list[str] = Field(
        description='One per tool: "server/tool", or "server/*" for every tool of the server, then its '
        "argument constraints in brackets"
    )
    calls_per_execution: int
    calls_per_minute: int = Field(description="Per principal")
    max_argument_bytes: int
    max_result_bytes: int
    call_timeout_s: float
    refuse_secrets: bool = Field(description="Results that look like secrets are refused")

    @classmethod
    def of(cls, mode: CodeMode | None) -> CodeModeLimits | None:
        if mode is None:
            return None
        return cls(
            allow=[line for rule in mode.allow for line in rule.describe()],
            calls_per_execution=mode.calls_per_execution,
            calls_per_minute=mode.calls_per_minute,
            max_argument_bytes=mode.max_argument_bytes,
            max_result_bytes=mode.max_result_bytes,
            call_timeout_s=mode.call_timeout_s,
            refuse_secrets=mode.refuse_secrets,
        )


class UpstreamBudgets(BaseModel):
    """What an allowed upstream call gets."""

    calls_per_execution: int
    calls_per_minute: int
    max_result_bytes: int
    call_timeout_s: float
    refuse_secrets: bool

    @classmethod
    def of(cls, decision: UpstreamAllowed) -> UpstreamBudgets:
        return cls(
            calls_per_execution=decision.calls_per_execution,
            calls_per_minute=decision.calls_per_minute,
            max_result_bytes=decision.max_result_bytes,
            call_timeout_s=decision.call_timeout_s,
            refuse_secrets=decision.refuse_secrets,
        )


class UpstreamExplanation(BaseModel):
    """The policy engine's Decision for code in one principal's sandbox calling one upstream tool."""

    allowed: bool
    principal: str
    tenant: str
    profile: str = Field(description="The profile that governs the principal")
    server: str
    tool: str
    reasons: list[str] = Field(description="allowed, or code-mode-off, upstream-not-allowed, ...")
    rule_ids: list[str] = Field(description="The policy rules that decided")
    message: str = Field(description="Why the call is denied, in words; empty when allowed")
    policy_digest: str
    effective: UpstreamBudgets | None = Field(description="The budgets an allowed call gets; null if denied")
