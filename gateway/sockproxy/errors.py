"""The socket proxy's exceptions: every one it defines derives from ProxyError."""

from __future__ import annotations

__all__ = ["EngineUnavailable", "ProxyError", "Refused", "StrictJSONError"]


class ProxyError(Exception):
    """Root of the socket proxy's own exceptions."""


class Refused(ProxyError):
    """A request the proxy does not forward: `rule` names the check, `detail` says what was wrong."""

    def __init__(self, rule: str, detail: str, *, status: int = 403) -> None:
        super().__init__(f"{rule}: {detail}")
        self.rule = rule
        self.detail = detail
        self.status = status


class StrictJSONError(ProxyError, ValueError):
    """The body is not JSON of the plain shape the proxy accepts."""


class EngineUnavailable(ProxyError):
    """The engine's socket does not answer, or answered with something that is not HTTP."""
