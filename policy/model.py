"""The policy schema: profiles, their sandbox spec and exec limits.

Every model forbids unknown keys: a typo must fail the load, never silently weaken a policy.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from policy.code_mode_model import CodeMode
from policy.egress_model import Egress, network_follows_egress
from policy.interpreter_model import InterpreterLimits
from policy.model_base import Strict as _Strict
from policy.units import Mode, Size

__all__ = [
    "CAP_ADD_ALLOW_LIST",
    "TOOL_NAMES",
    "ULIMIT_NAMES",
    "AuditPolicy",
    "ExecLimits",
    "Lifecycle",
    "Policy",
    "Profile",
    "RateLimits",
    "SandboxSpec",
    "TmpfsMount",
    "split_image",
]

#: Capabilities a profile may add back after dropping ALL. Everything else is refused at load.
CAP_ADD_ALLOW_LIST = frozenset(
    {"CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "NET_BIND_SERVICE", "SETGID", "SETUID"}
)

#: Every tool the gateway serves; a profile names the ones it may call.
TOOL_NAMES = frozenset({
    "execute_bash", "execute_python", "run_python", "write_file", "read_file", "list_files",
    "list_skills", "list_tools", "sandbox_info", "reset_sandbox",
    "admin_list_sandboxes", "admin_remove_sandbox", "admin_policy",
})  # fmt: skip

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_RATE = re.compile(r"^\s*\d+\s*(/|per)\s*(\d+\s*)?(second|minute|hour|day)s?\s*$", re.IGNORECASE)


def split_image(entry: str) -> tuple[str, str | None]:
    """`name[@sha256:...]` -> (name, pinned digest or None)."""
    name, _, digest = entry.partition("@")
    return name, (digest or None)


ULIMIT_NAMES = frozenset({"nofile", "nproc", "fsize", "core", "cpu", "stack", "memlock", "sigpending"})


class TmpfsMount(_Strict):
    """A size-capped tmpfs, always mounted nosuid and nodev."""

    path: str
    size: Size
    noexec: bool = False
    mode: Mode = 0o1777

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or ".." in value.split("/") or value == "/":
            raise ValueError("must be an absolute path below / without '..'")
        return value

    @field_validator("size")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("a tmpfs needs a positive size cap")
        return value


class SandboxSpec(_Strict):
    """What a sandbox container is made of. The broker creates exactly this, nothing more."""

    _digest: str | None = PrivateAttr(default=None)
    images: tuple[str, ...] = Field(min_length=1)
    read_only_rootfs: bool = True
    #: `none`, or `egress` when the profile has an `egress` key (set from it: never written by hand).
    network: Literal["none", "egress"] = "none"
    cpus: float = Field(default=1.0, gt=0, le=64)
    memory: Size = 512 * 1024**2
    memory_swap: Size = 512 * 1024**2
    pids_limit: int = Field(default=128, gt=0, le=32768)
    tmpfs: tuple[TmpfsMount, ...] = ()
    cap_add: tuple[str, ...] = ()
    no_new_privileges: bool = True
    seccomp: str = "default"
    runtime: Literal["runc", "runsc"] = "runc"
    init: bool = True
    ulimits: dict[str, int] = Field(default_factory=dict)
    workdir: str = "/workspace"
    #: How commands reach the sandbox: `agent` hands them to the sandbox's own agent (PID 1) over
    #: the container's attach stream; `exec` starts each with `docker exec` (slower, no agent needed).
    exec_path: Literal["agent", "exec"] = "agent"
    #: Fleet mode: the labels a sandbox host must carry (`zone: a`, `runtime: runsc`) to be given one
    #: (unset, it changes no digest).
    host_labels: dict[str, str] | None = None

    @field_validator("images")
    @classmethod
    def _image_refs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            name, digest = split_image(entry)
            if not name or any(c.isspace() for c in entry):
                raise ValueError(f"{entry!r} is not an image name")
            if digest is not None and not _DIGEST.match(digest):
                raise ValueError(f"{entry!r}: a pinned image is name@sha256:<64 hex digits>")
        return value

    @model_validator(mode="before")
    @classmethod
    def _no_fixed_user(cls, data: object) -> object:
        if isinstance(data, dict) and "user" in data:
            raise ValueError(
                "user is not set by policy: every sandbox runs as a host uid of its own, from the "
                "gateway's range (--sandbox-uids); remove `user`"
            )
        return data

    @field_validator("ulimits")
    @classmethod
    def _known_ulimits(cls, value: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(value) - ULIMIT_NAMES)
        if unknown:
            raise ValueError(f"unknown ulimit(s) {unknown}; known: {sorted(ULIMIT_NAMES)}")
        if any(v < 0 for v in value.values()):
            raise ValueError("ulimits cannot be negative")
        return value

    @model_validator(mode="after")
    def _swap_covers_memory(self) -> SandboxSpec:
        if self.memory_swap < self.memory:
            raise ValueError("memory_swap is memory plus swap, so it cannot be below memory")
        if self.memory < 6 * 1024**2:
            raise ValueError("memory below 6 MiB cannot start a container")
        if self.exec_path == "agent" and self.memory < 32 * 1024**2:
            raise ValueError(
                "the sandbox agent needs memory of at least 32 MiB; use exec_path: exec below that"
            )
        return self

    def image_names(self) -> tuple[str, ...]:
        return tuple(split_image(entry)[0] for entry in self.images)

    def pinned_digest(self, name: str) -> str | None:
        """The digest an allowed image is pinned to, or None when it is allowed by name only."""
        for entry in self.images:
            entry_name, digest = split_image(entry)
            if entry_name == name:
                return digest
        return None

    def digest(self) -> str:
        """sha256 of this spec alone: a sandbox is replaced when its profile's spec changes. A spec is
        frozen: computed once (a copy with changes computes its own)."""
        cached = (self.__pydantic_private__ or {}).get("_digest")  # not via the (slow) attribute
        if cached is None:
            dump = self.model_dump(mode="json", exclude_none=True)
            canonical = json.dumps(dump, sort_keys=True, separators=(",", ":"))
            self._digest = cached = hashlib.sha256(canonical.encode()).hexdigest()
        return str(cached)


class ExecLimits(_Strict):
    """Bounds on one tool call inside the sandbox."""

    default_timeout_s: float = Field(default=30.0, gt=0)
    max_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    max_output_bytes: Size = 1024**2
    max_input_bytes: Size = 256 * 1024
    #: Calls running at once for one principal...
    max_concurrent: int = Field(default=4, gt=0, le=256)
    #: ...and for its whole tenant (all its principals, whatever their profile); the caller's
    #: profile says how many. Above either, a call is refused at once, never queued.
    max_concurrent_per_tenant: int = Field(default=64, gt=0, le=4096)

    @model_validator(mode="after")
    def _default_within_max(self) -> ExecLimits:
        if self.default_timeout_s > self.max_timeout_s:
            raise ValueError("default_timeout_s cannot exceed max_timeout_s")
        if self.max_concurrent_per_tenant < self.max_concurrent:
            raise ValueError("max_concurrent_per_tenant cannot be below max_concurrent")
        if self.max_output_bytes <= 0 or self.max_input_bytes <= 0:
            raise ValueError("output and input caps must be positive")
        return self


class Lifecycle(_Strict):
    """How long a sandbox lives: removed after `idle_ttl_s` without a call, or `max_age_s` after creation."""

    idle_ttl_s: float = Field(default=1800, gt=0)
    max_age_s: float = Field(default=8 * 3600, gt=0)
    #: Live sandboxes of one tenant in this profile (each principal has at most one).
    max_sandboxes_per_tenant: int = Field(default=100, gt=0)
    #: Started sandboxes kept ready for new principals of this profile (each is handed to one
    #: principal only, never reused); 0 creates every sandbox on its principal's first call.
    warm_pool: int = Field(default=0, ge=0, le=64)


class RateLimits(_Strict):
    """Rates, written as `N/second|minute|hour|day` (the slowapi / limits notation): `requests` and
    `sandbox_creations` per principal, `tenant_requests` for all the principals of its tenant."""

    requests: str = "120/minute"
    tenant_requests: str = "6000/minute"
    sandbox_creations: str = "10/minute"

    @field_validator("requests", "tenant_requests", "sandbox_creations")
    @classmethod
    def _rate(cls, value: str) -> str:
        if not _RATE.match(value):
            raise ValueError(f"{value!r} is not a rate like '60/minute'")
        return value.strip()


class Profile(_Strict):
    """One named set of rules a principal is mapped to."""

    description: str = ""
    tools: tuple[str, ...]
    sandbox: SandboxSpec
    exec: ExecLimits = ExecLimits()
    lifecycle: Lifecycle = Lifecycle()
    rate_limits: RateLimits = RateLimits()
    #: Upstream MCP tools the sandbox's code may call through the gateway; None (absent): code mode off.
    code_mode: CodeMode | None = None
    #: `host:port` its sandboxes may reach through the egress proxy; None (absent): no network at all.
    egress: Egress | None = None
    #: run_python's interpreter (it needs exec_path: agent; with exec, the call is refused).
    interpreter: InterpreterLimits = InterpreterLimits()

    @field_validator("tools")
    @classmethod
    def _known_tools(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - TOOL_NAMES)
        if unknown:
            raise ValueError(f"unknown tool(s) {unknown}; known: {sorted(TOOL_NAMES)}")
        return value

    _network_follows_egress = model_validator(mode="before")(network_follows_egress)

    @model_validator(mode="after")
    def _code_mode_needs_the_agent(self) -> Profile:
        if self.code_mode is not None and self.sandbox.exec_path != "agent":
            raise ValueError("code mode needs exec_path: agent (its calls travel over the agent's channel)")
        return self


class AuditPolicy(_Strict):
    """What the audit log may hold: `code` as an HMAC (the default), in full, or not at all."""

    code: Literal["hmac", "full", "none"] = "hmac"


class Policy(_Strict):
    """A whole policy file: profiles, and which principals and tenants use which profile."""

    version: Literal[1]
    audit: AuditPolicy = AuditPolicy()
    profiles: dict[str, Profile] = Field(min_length=1)
    #: principal id -> profile; wins over the tenant mapping and the token's profile.
    principals: dict[str, str] = Field(default_factory=dict)
    #: tenant -> profile; wins over the token's profile.
    tenants: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _mappings_name_profiles(self) -> Policy:
        for section in ("principals", "tenants"):
            for who, profile in getattr(self, section).items():
                if profile not in self.profiles:
                    raise ValueError(f"{section}.{who} maps to profile {profile!r}, which is not defined")
        return self

    def profile_for(self, principal_id: str, tenant: str, token_profile: str) -> str:
        """The profile that governs a principal: policy principals, then tenants, then the token's."""
        return self.principals.get(principal_id) or self.tenants.get(tenant) or token_profile

    def profile_of(self, principal_id: str, tenant: str, token_profile: str) -> Profile | None:
        """The governing Profile itself, or None when the name it resolves to is not defined."""
        return self.profiles.get(self.profile_for(principal_id, tenant, token_profile))

    def digest(self) -> str:
        """sha256 of the canonical JSON of the effective policy; names the policy version in audit events.
        Unset optional keys (`code_mode`, `egress` off) are left out, so they change no existing digest."""
        dump = self.model_dump(mode="json", exclude_none=True)
        canonical = json.dumps(dump, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()
