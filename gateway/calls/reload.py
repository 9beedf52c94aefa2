"""Policy reload (SIGHUP): the new file is validated first; a bad one is refused and the old stays."""

from __future__ import annotations

from pathlib import Path

from audit import AuditLog
from gateway.calls.service import ExecutionService
from policy import PolicyError, load_policy
from policy.engine import PolicyEngine

__all__ = ["reload_policy"]


def reload_policy(service: ExecutionService, path: Path | None, audit: AuditLog) -> bool:
    """Load `path` (the shipped default when None) and switch to it. True if the new policy is in force."""
    old = service.engine.digest
    try:
        engine = PolicyEngine(load_policy(path))
    except PolicyError as exc:
        audit.emit("policy.reload", outcome="rejected", error=str(exc), policy_digest=old)
        return False
    service.replace_engine(engine)
    audit.code.mode = engine.policy.audit.code
    audit.emit(
        "policy.reload",
        outcome="ok",
        previous_digest=old,
        policy_digest=engine.digest,
        profiles=sorted(engine.policy.profiles),
    )
    return True
