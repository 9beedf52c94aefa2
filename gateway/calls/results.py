"""Wire models of tool results (pydantic: they become MCP structured content and output schemas)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from gateway.calls.code_mode_results import CodeModeLimits
from gateway.calls.egress_results import EgressLimits
from policy import ExecLimits, Principal, Profile, SandboxSpec
from policy.model import Lifecycle, RateLimits

__all__ = [
    "AdminPolicy",
    "AdminSandbox",
    "AdminSandboxes",
    "EffectiveLimits",
    "ExecResult",
    "FileContent",
    "FileEntry",
    "FileList",
    "FileWritten",
    "PolicyExplanation",
    "ProfileLimits",
    "ResetResult",
    "SandboxInfo",
    "SandboxState",
    "SandboxSummary",
]


class ExecResult(BaseModel):
    """The bounded result of one command in the caller's sandbox."""

    exit_code: int | None = Field(description="Process exit status; null when it could not be read")
    stdout: str = Field(description="Standard output, UTF-8 (invalid bytes replaced), cut at the cap")
    stderr: str = Field(description="Standard error, UTF-8 (invalid bytes replaced), cut at the cap")
    duration_ms: float = Field(description="Wall-clock time of the call inside the gateway")
    timed_out: bool = Field(description="The command was stopped at its timeout")
    truncated: bool = Field(description="stdout or stderr exceeded the output cap and was cut")
    oom_killed: bool = Field(default=False, description="A process was killed for exceeding the memory limit")
    sandbox_replaced: bool = Field(
        default=False,
        description="Your previous sandbox was lost (stopped or removed outside the gateway, or ended by "
        "its own command); this call ran in a new one, so files from earlier calls are gone",
    )
    sandbox_lost: bool = Field(
        default=False,
        description="Your sandbox ended while this call ran (it was killed, removed, or its host went "
        "down): the command may or may not have run; the next call runs in a new sandbox unless the "
        "old one is found again",
    )
    egress_refused: list[str] = Field(
        default_factory=list,
        description="Connections the egress proxy refused during this call, each with the rule that "
        "refused it (the command itself saw a 403 or a closed connection)",
    )


class SandboxState(BaseModel):
    """The caller's live sandbox."""

    container_id: str
    created_at: float = Field(description="Seconds since the epoch")
    idle_expires_in_s: float = Field(description="Removed after this long without a call")
    max_age_expires_in_s: float = Field(description="Removed after this long whatever happens")
    up_to_date: bool = Field(description="False when the policy changed; the next call replaces it")


class SandboxInfo(BaseModel):
    """Who the caller is to the gateway, and the limits that apply to it."""

    principal: str
    tenant: str
    profile: str
    policy_digest: str
    tools: list[str]
    image: str
    network: str = Field(description="none, or egress: only the egress proxy, for the allow-list below")
    egress: EgressLimits | None = Field(
        description="The egress allow-list and limits in force; null: no network"
    )
    read_only_rootfs: bool
    runtime: str
    cpus: float
    memory_bytes: int
    memory_swap_bytes: int
    pids_limit: int
    writable_paths: dict[str, int] = Field(description="tmpfs mount -> size cap in bytes")
    default_timeout_s: float
    max_timeout_s: float
    max_output_bytes: int
    max_input_bytes: int
    max_concurrent: int
    max_concurrent_per_tenant: int
    requests_rate: str
    tenant_requests_rate: str
    sandbox_creations_rate: str
    idle_ttl_s: float
    max_age_s: float
    sandbox: SandboxState | None

    @classmethod
    def from_profile(
        cls, principal: Principal, name: str, digest: str, profile: Profile, state: SandboxState | None
    ) -> SandboxInfo:
        spec, limits = profile.sandbox, profile.exec
        return cls(
            principal=principal.id,
            tenant=principal.tenant,
            profile=name,
            policy_digest=digest,
            tools=sorted(profile.tools),
            image=spec.image_names()[0],
            network=spec.network,
            egress=EgressLimits.of(profile.egress),
            read_only_rootfs=spec.read_only_rootfs,
            runtime=spec.runtime,
            cpus=spec.cpus,
            memory_bytes=spec.memory,
            memory_swap_bytes=spec.memory_swap,
            pids_limit=spec.pids_limit,
            writable_paths={m.path: m.size for m in spec.tmpfs},
            default_timeout_s=limits.default_timeout_s,
            max_timeout_s=limits.max_timeout_s,
            max_output_bytes=limits.max_output_bytes,
            max_input_bytes=limits.max_input_bytes,
            max_concurrent=limits.max_concurrent,
            max_concurrent_per_tenant=limits.max_concurrent_per_tenant,
            requests_rate=profile.rate_limits.requests,
            tenant_requests_rate=profile.rate_limits.tenant_requests,
            sandbox_creations_rate=profile.rate_limits.sandbox_creations,
            idle_ttl_s=profile.lifecycle.idle_ttl_s,
            max_age_s=profile.lifecycle.max_age_s,
            sandbox=state,
        )


class ResetResult(BaseModel):
    """Whether a sandbox was removed."""

    reset: bool = Field(description="True if the caller had a sandbox and it was removed")


class AdminSandbox(BaseModel):
    """One live sandbox of the caller's tenant."""

    principal: str
    profile: str
    container_id: str
    created_at: float
    last_used: float
    policy_digest: str


class AdminSandboxes(BaseModel):
    """The live sandboxes of the caller's tenant on this gateway."""

    tenant: str
    sandboxes: list[AdminSandbox]


class FileWritten(BaseModel):
    """A file written in the caller's workspace."""

    path: str
    size: int


class FileContent(BaseModel):
    """A file read from the caller's workspace."""

    path: str
    content: str = Field(description="The bytes, as UTF-8 text or base64, per `encoding`")
    encoding: str
    size: int = Field(description="The file's full size in bytes")
    truncated: bool = Field(description="Only the first bytes are returned (max_bytes or the output cap)")


class FileEntry(BaseModel):
    name: str
    type: str = Field(description="file, dir, symlink or other")
    size: int


class FileList(BaseModel):
    """A directory of the caller's workspace."""

    path: str
    entries: list[FileEntry]


class EffectiveLimits(BaseModel):
    """What an allowed call would run with."""

    image: str
    image_digest: str | None = Field(description="The digest the image is pinned to, or null")
    timeout_s: float
    limits: ExecLimits
    sandbox: SandboxSpec


class PolicyExplanation(BaseModel):
    """The policy engine's Decision for one principal and tool, with its reasons (what
    `sandbox-gateway policy explain` prints)."""

    allowed: bool
    principal: str
    tenant: str
    profile: str = Field(description="The profile that governs the principal")
    reasons: list[str] = Field(description="Stable reason codes: allowed, or why the call is denied")
    rule_ids: list[str] = Field(description="The policy rules that decided")
    message: str = Field(description="Why the call is denied, in words; empty when allowed")
    policy_digest: str
    effective: EffectiveLimits | None = Field(description="The limits an allowed call gets; null if denied")


class SandboxSummary(BaseModel):
    """The sandbox a profile's principals get, in short."""

    images: list[str]
    runtime: str
    network: str
    read_only_rootfs: bool
    cpus: float
    memory_bytes: int
    memory_swap_bytes: int
    pids_limit: int
    writable_paths: dict[str, int] = Field(description="tmpfs mount -> size cap in bytes")
    cap_add: list[str]
    no_new_privileges: bool
    seccomp: str
    exec_path: str
    spec_digest: str = Field(description="sha256 of the spec: a sandbox made under another is replaced")

    @classmethod
    def of(cls, spec: SandboxSpec) -> SandboxSummary:
        return cls(
            images=list(spec.images),
            runtime=spec.runtime,
            network=spec.network,
            read_only_rootfs=spec.read_only_rootfs,
            cpus=spec.cpus,
            memory_bytes=spec.memory,
            memory_swap_bytes=spec.memory_swap,
            pids_limit=spec.pids_limit,
            writable_paths={m.path: m.size for m in spec.tmpfs},
            cap_add=list(spec.cap_add),
            no_new_privileges=spec.no_new_privileges,
            seccomp=spec.seccomp,
            exec_path=spec.exec_path,
            spec_digest=spec.digest(),
        )


class ProfileLimits(BaseModel):
    """One profile of the policy in force, with its effective (`extends` resolved) limits."""

    name: str
    description: str
    tools: list[str]
    exec: ExecLimits
    sandbox: SandboxSummary
    lifecycle: Lifecycle
    rate_limits: RateLimits
    code_mode: CodeModeLimits | None = Field(description="Code mode's upstream tools and budgets; null: off")
    egress: EgressLimits | None = Field(description="Egress allow-list and limits; null: no network")

    @classmethod
    def of(cls, name: str, profile: Profile) -> ProfileLimits:
        return cls(
            name=name,
            description=profile.description,
            tools=sorted(profile.tools),
            exec=profile.exec,
            sandbox=SandboxSummary.of(profile.sandbox),
            lifecycle=profile.lifecycle,
            rate_limits=profile.rate_limits,
            code_mode=CodeModeLimits.of(profile.code_mode),
            egress=EgressLimits.of(profile.egress),
        )


class AdminPolicy(BaseModel):
    """The policy in force on this gateway, and optionally the Decision for one principal of the
    caller's tenant."""

    tenant: str = Field(description="The caller's tenant: the only one a Decision is explained in")
    policy_digest: str
    profiles: list[ProfileLimits]
    decision: PolicyExplanation | None = Field(
        description="The Decision for `principal` and `tool`, when both were given"
    )
