"""Exceptions of the gateway package; `GatewayError` is the root.

Each carries a stable `code` and a message that is safe to show a client: no internal paths,
no stack traces, nothing from the engine that the caller did not already know.
"""

from __future__ import annotations

__all__ = [
    "AddressInUse",
    "AgentBroken",
    "AgentCannotStart",
    "AgentFailure",
    "AuthError",
    "ConfigError",
    "EgressUnavailable",
    "EngineError",
    "FileError",
    "GatewayError",
    "InterpreterBusy",
    "InterpreterUnavailable",
    "InvalidArgument",
    "PolicyDenied",
    "QuotaExceeded",
    "SandboxError",
    "SandboxGone",
    "SandboxUnusable",
    "SessionLimitReached",
    "SetupError",
    "ToolGenerationError",
    "UidInUse",
    "UpstreamConfigError",
    "UpstreamError",
    "UpstreamFailed",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "UpstreamUnknown",
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


class InvalidArgument(GatewayError):
    """A tool argument is malformed (empty, wrong type, NUL bytes)."""

    code = "invalid-argument"


class SandboxUnusable(GatewayError):
    """This sandbox cannot take the call at all (its container or agent is gone, or it has nothing
    left to start a process with): the broker replaces it once and runs the call again."""

    code = "sandbox-unusable"


class SandboxGone(SandboxError, SandboxUnusable):
    """The container is missing or not running."""

    code = "sandbox-gone"


class EgressUnavailable(SandboxError):
    """A sandbox of an egress profile cannot be made: no egress network, or its proxy does not run."""

    code = "egress-unavailable"


class AddressInUse(SandboxError):
    """The engine refused a create: the egress address picked is held by another container."""

    code = "address-in-use"


class UidInUse(SandboxError):
    """The socket proxy refused a create: another live sandbox runs as the uid picked."""

    code = "uid-in-use"


class AgentBroken(EngineError, SandboxUnusable):
    """The attach stream to the agent closed or carried garbage; calls in flight have no result."""

    code = "sandbox-agent-lost"


class AgentFailure(SandboxError):
    """The agent refused or could not run a command (a malformed request, a program that is not there)."""

    code = "sandbox-agent-refused"


class AgentCannotStart(AgentFailure, SandboxUnusable):
    """The sandbox has no process, memory or descriptor left to start a command: it must be replaced,
    since calling it again would only be refused again."""

    code = "sandbox-exhausted"


class FileError(GatewayError):
    """A file operation failed inside the sandbox; `code` says why (not-found, path-outside-workspace...)."""

    code = "file-error"


class SessionLimitReached(QuotaExceeded):
    """The principal already holds as many MCP sessions as it may."""

    code = "session-limit"


class UpstreamConfigError(ConfigError):
    """The upstreams file (the MCP servers code mode may call) is wrong; it names the server and key,
    never a header value or secret."""

    code = "upstream-config-error"


class UpstreamError(GatewayError):
    """A call to an upstream MCP server did not give a result."""

    code = "upstream-error"


class UpstreamUnknown(UpstreamError):
    """No such upstream server, or the tool is not one it exposes; refused before any upstream traffic."""

    code = "upstream-unknown"


class UpstreamUnavailable(UpstreamError):
    """The upstream server cannot be reached, refused the gateway's credentials, or its session broke;
    the gateway reconnects on a later call."""

    code = "upstream-unavailable"


class UpstreamTimeout(UpstreamError):
    """The upstream call took longer than its timeout; it was cancelled, the session stays usable."""

    code = "upstream-timeout"


class UpstreamFailed(UpstreamError):
    """The upstream server broke the protocol, or its result is too large."""

    code = "upstream-failed"


class ToolGenerationError(UpstreamError):
    """`tools generate` refused to write: the output holds a directory it did not generate."""

    code = "tools-generate-refused"


class InterpreterUnavailable(SandboxError):
    """run_python cannot run in this sandbox: its image's agent has no interpreter (an image older
    than the gateway), or the sandbox runs commands with `docker exec`."""

    code = "interpreter-unavailable"


class InterpreterBusy(QuotaExceeded):
    """Another run_python call of the principal held the interpreter for (nearly) the whole of this
    call's timeout, or is still being ended (calls run one at a time, in order)."""

    code = "interpreter-busy"
