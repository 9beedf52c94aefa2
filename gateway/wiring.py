"""Building the gateway's AuditLog from its settings and policy: sinks, HMAC key, fail-closed."""

from __future__ import annotations

import logging

from audit import AuditLog, FileSink, RepeatTable, StreamSink
from audit.otlp import OTLPLogSink, otlp_logs_configured
from audit.sinks import AuditSink
from gateway.config import Settings
from gateway.errors import ConfigError
from policy import Policy

__all__ = ["build_audit"]

_log = logging.getLogger("sandbox_gateway.audit")


def _hmac_key(settings: Settings) -> bytes | None:
    if settings.audit_hmac_key_file is None:
        return None
    try:
        key = settings.audit_hmac_key_file.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the audit HMAC key file {settings.audit_hmac_key_file}") from exc
    if len(key) < 32:
        raise ConfigError("the audit HMAC key must be at least 32 bytes")
    return key


def build_audit(settings: Settings, policy: Policy) -> AuditLog:
    """Sinks: stdout (unless turned off), the rotated file, OTLP logs when OTEL_* says so. Fail-closed.
    Repeated refusals from one source are folded per window (see audit.repeats)."""
    sinks: list[AuditSink] = []
    if settings.audit_stdout:
        sinks.append(StreamSink())
    if settings.audit_log is not None:
        try:
            sinks.append(
                FileSink(
                    settings.audit_log, max_bytes=settings.audit_max_bytes, backups=settings.audit_backups
                )
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot open the audit log {settings.audit_log}: {exc}") from exc
    if otlp_logs_configured():
        sinks.append(OTLPLogSink())
    key = _hmac_key(settings)
    if key is None and policy.audit.code == "hmac":
        _log.warning("no audit HMAC key configured (SGW_AUDIT_HMAC_KEY_FILE): code HMACs are per process")
    repeats = RepeatTable(settings.audit_repeat_window_s, settings.audit_repeat_sources)
    return AuditLog(sinks, fail_closed=True, code_mode=policy.audit.code, hmac_key=key, repeats=repeats)
