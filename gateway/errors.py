"""Exceptions of the gateway package; `GatewayError` is the root.

Each carries a stable `code` and a message that is safe to show a client: no internal paths,
no stack traces, nothing from the engine that the caller did not already know.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "ConfigError",
    "EngineError",
    "GatewayError",
    "PolicyDenied",
    "QuotaExceeded",
    "SandboxError",
    "SetupError",
]


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""

    code = "gateway-error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ConfigError(GatewayError):
    """The gateway's own configuration is wrong; raised before anything starts."""

    code = "config-error"


class SetupError(GatewayError):
    """The machine cannot be made ready (no engine, no proxy, no image)."""

    code = "setup-error"


class AuthError(GatewayError):
    """A credential is missing, malformed or unknown."""

    code = "unauthenticated"


class PolicyDenied(GatewayError):
    """The policy engine refused the request; `code` is the Decision's reason."""

    code = "policy-denied"


class QuotaExceeded(GatewayError):
    """A per-principal bound (e.g. concurrent executions) is full."""

    code = "quota-exceeded"


class EngineError(GatewayError):
    """The Docker engine, or the socket proxy in front of it, failed or is unreachable."""

    code = "engine-unavailable"


class SandboxError(GatewayError):
    """The principal's sandbox failed (died, was removed, or misbehaved)."""

    code = "sandbox-failed"
