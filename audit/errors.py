"""Exceptions of the audit package; `AuditError` is the root."""

__all__ = ["AuditError", "AuditWriteError"]


class AuditError(Exception):
    """Root of every error the audit package raises."""


class AuditWriteError(AuditError):
    """No sink could write an event; with fail-closed auditing the request must be refused."""
