"""The egress proxy's access logs, joined into one record per connection.

front writes one line per request or tunnel (when it ends), with the helper's notes (principal,
tenant, profile, rule, message), bytes each way and the duration. An allowed CONNECT goes through
the tls stage, which writes the SNI decision (a line from the sandbox's address, through
X-Forwarded-For) and, when it splices, the tunnel with the address it really connected to. The two
are joined on front's local port toward the tls stage (`up_port`) = the tls stage's `src_port`.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field

__all__ = ["Connection", "Joiner", "parse_line"]

#: front's deny_info pages -> the rule a refusal without helper notes broke.
_PAGE_RULES = {
    "ERR_EGRESS_ADDR": "blocked-address",
    "ERR_EGRESS_LIMIT": "max-connections",
    "ERR_EGRESS_METHOD": "method",
}
_MAX_TLS_ENTRIES = 4096


def parse_line(line: str) -> dict[str, str]:
    """`key=value ...` -> dict, values URL-decoded; `-` (Squid's empty) becomes ''."""
    fields: dict[str, str] = {}
    for part in line.split():
        key, sep, value = part.partition("=")
        if sep:
            fields[key] = "" if value == "-" else urllib.parse.unquote(value)
    return fields


@dataclass(slots=True)
class Connection:
    """One connection from a sandbox, as the audit event tells it."""

    sandbox_ip: str
    method: str
    host: str
    port: int
    allowed: bool
    rule: str
    message: str
    principal: str = ""
    tenant: str = ""
    profile: str = ""
    sni: str = ""
    server: str = ""
    bytes_up: int = 0
    bytes_down: int = 0
    duration_ms: int = 0
    error: str = ""
    ts: float = 0.0


def _int(text: str) -> int:
    return int(text) if text.isdigit() else 0


@dataclass(slots=True)
class _Pending:
    front: dict[str, str]
    seen: float


@dataclass
class Joiner:
    """Feed it lines of both logs; take the connections it completes."""

    wait_s: float = 3.0
    _tls: dict[str, dict[str, str]] = field(default_factory=dict)
    _pending: list[_Pending] = field(default_factory=list)

    def tls(self, fields: dict[str, str]) -> None:
        port = fields.get("src_port", "")
        if not port or not fields.get("method"):
            return
        entry = self._tls.setdefault(port, {})
        if fields.get("squid") == "TCP_TUNNEL":
            entry["server"] = fields.get("server", "")
        else:
            entry |= {k: fields.get(k, "") for k in ("sni", "rule", "msg", "err")}
        while len(self._tls) > _MAX_TLS_ENTRIES:
            self._tls.pop(next(iter(self._tls)))

    def front(self, fields: dict[str, str], now: float) -> Connection | None:
        if not fields.get("method"):
            return None  # a probe that sent nothing
        if self._via_tls(fields):  # finished by ready(), once the tls stage's lines are in
            self._pending.append(_Pending(fields, now))
            return None
        return self._connection(fields)

    def ready(self, now: float, *, everything: bool = False) -> list[Connection]:
        """Held front lines whose tls lines arrived, or that waited long enough."""
        done, keep = [], []
        for item in self._pending:
            port = item.front.get("up_port", "")
            tls = self._tls.get(port, {})
            refused_there = bool(tls.get("rule")) and ":" not in tls["rule"]  # a rule code, not host:port
            if "server" in tls or refused_there or everything or now - item.seen >= self.wait_s:
                done.append(self._connection(item.front))
            else:
                keep.append(item)
        self._pending = keep
        return done

    @staticmethod
    def _via_tls(fields: dict[str, str]) -> bool:
        return fields.get("method") == "CONNECT" and fields.get("status") != "403"

    def _connection(self, fields: dict[str, str]) -> Connection:
        conn = Connection(
            sandbox_ip=fields.get("src", ""), method=fields.get("method", ""), host=fields.get("host", ""),
            port=_int(fields.get("port", "")), allowed=False, rule=fields.get("rule", ""),
            message=fields.get("msg", ""), principal=fields.get("principal", ""),
            tenant=fields.get("tenant", ""), profile=fields.get("profile", ""),
            server=fields.get("server", ""), bytes_up=_int(fields.get("up", "")),
            bytes_down=_int(fields.get("down", "")), duration_ms=_int(fields.get("ms", "")),
            error=fields.get("err", ""), ts=float(fields.get("ts") or 0),
        )  # fmt: skip
        if fields.get("status") == "403":
            conn.rule = (
                conn.rule
                if conn.rule and conn.error == "ERR_EGRESS"
                else _PAGE_RULES.get(conn.error, conn.rule or "refused")
            )
            conn.message = (
                conn.message if conn.error == "ERR_EGRESS" else f"egress refused (rule: {conn.rule})"
            )
            return conn
        if not conn.principal or _int(fields.get("status", "")) >= 400:
            # The helper never answered (a request Squid refused as malformed), or it failed.
            conn.rule = conn.rule if conn.principal else "invalid-request"
            conn.message = conn.message or f"egress refused: {conn.error or 'not a valid proxy request'}"
            return conn
        if not self._via_tls(fields):
            conn.allowed = not conn.error or conn.error == "-"
            return conn
        tls = self._tls.pop(fields.get("up_port", ""), {})
        conn.sni, conn.server = tls.get("sni", ""), tls.get("server", "")
        if conn.server:
            conn.allowed = True
        elif tls.get("rule") and tls.get("rule") not in (conn.rule, ""):
            conn.rule, conn.message = tls["rule"], tls.get("msg", "")
        elif tls.get("err") == "ERR_PROTOCOL_UNKNOWN":
            conn.rule, conn.message = "not-tls", "egress refused: a tunnel carries TLS only (rule: not-tls)"
        else:  # cut before it connected: a blocked address after the hello, or no hello at all
            conn.rule = "blocked-address" if tls.get("sni") else "closed"
            conn.message = (
                f"egress refused: the connection was closed before it reached {conn.host} (rule: {conn.rule})"
            )
        return conn
