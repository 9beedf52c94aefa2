"""API tokens: a JSON-lines file of sha256 hashes mapped to principals. Tokens themselves are never stored.

Each entry has an id (a prefix of the hash, safe to show), principal, tenant, profile, scopes,
creation time, optional expiry and revocation time. The file is re-read when it changes, so
`token create` and `token revoke` take effect on a running gateway without a restart.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from gateway.errors import ConfigError

__all__ = [
    "DEFAULT_SCOPES",
    "PRINCIPAL_ID",
    "SCOPES",
    "TokenEntry",
    "TokenStore",
    "hash_token",
    "parse_duration",
    "validate_principal_id",
]

_log = logging.getLogger("sandbox_gateway.tokens")

#: Principal, tenant and profile names: short, printable, safe in labels, names and logs.
PRINCIPAL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
#: Scopes a credential may carry, and what each opens.
SCOPES = {
    "sandbox:exec": "run code and manage one's own sandbox (execute_*, sandbox_info, reset_sandbox)",
    "sandbox:files": "read and write files in one's own sandbox",
    "sandbox:admin": "list and remove the sandboxes of one's own tenant, see and explain the policy for it",
}
DEFAULT_SCOPES = ("sandbox:exec", "sandbox:files")
_PREFIX = "sgw_"
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def validate_principal_id(value: str, what: str = "principal") -> str:
    if not isinstance(value, str) or not PRINCIPAL_ID.match(value):
        raise ConfigError(
            f"invalid {what} {value!r}: use 1-128 of A-Z a-z 0-9 . _ @ - (starting alphanumeric)"
        )
    return value


def parse_duration(text: str) -> dt.timedelta:
    """`90s`, `30m`, `12h`, `30d`, `2w`."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ConfigError(f"{text!r} is not a duration like 30d, 12h or 90m")
    return dt.timedelta(seconds=int(match.group(1)) * _UNIT_S[match.group(2)])


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """One stored credential (its hash, never the token)."""

    sha256: str
    principal: str
    tenant: str
    profile: str
    scopes: tuple[str, ...]
    created: dt.datetime
    expires: dt.datetime | None = None
    revoked: dt.datetime | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.sha256[:12]

    def state(self, now: dt.datetime) -> str:
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and now >= self.expires:
            return "expired"
        return "active"

    def to_json(self) -> str:
        return json.dumps(
            {
                "sha256": self.sha256,
                "principal": self.principal,
                "tenant": self.tenant,
                "profile": self.profile,
                "scopes": list(self.scopes),
                "created": _iso(self.created),
                "expires": _iso(self.expires),
                "revoked": _iso(self.revoked),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, line: str) -> TokenEntry:
        row = json.loads(line)
        scopes = tuple(row.get("scopes") or DEFAULT_SCOPES)
        unknown = set(scopes) - set(SCOPES)
        if unknown:
            raise ValueError(f"unknown scopes {sorted(unknown)}")
        digest = str(row["sha256"])
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError("sha256 is not a hex digest")
        return cls(
            sha256=digest,
            principal=validate_principal_id(row["principal"]),
            tenant=validate_principal_id(row.get("tenant", "default"), "tenant"),
            profile=validate_principal_id(row.get("profile", "default"), "profile"),
            scopes=scopes,
            created=dt.datetime.fromisoformat(row["created"]) if row.get("created") else _now(),
            expires=dt.datetime.fromisoformat(row["expires"]) if row.get("expires") else None,
            revoked=dt.datetime.fromisoformat(row["revoked"]) if row.get("revoked") else None,
        )


class TokenStore:
    """Reads, appends and rewrites the tokens file; verify() maps a presented token to its entry."""

    def __init__(self, path: Path | None = None, *, reload_interval_s: float = 1.0) -> None:
        self.path = path
        self.reload_interval_s = reload_interval_s
        self._lock = threading.Lock()
        self._entries: dict[str, TokenEntry] = {}
        self._memory: dict[str, TokenEntry] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        if path is not None and path.exists():
            self._entries = self._read(path)
            self._stamp = self._file_stamp()

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat() if self.path else None
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size) if stat else None

    @staticmethod
    def _read(path: Path) -> dict[str, TokenEntry]:
        entries = {}
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = TokenEntry.from_json(line)
            except (ValueError, KeyError, TypeError, ConfigError) as exc:
                raise ConfigError(f"{path.name}: line {number} is not a valid token entry") from exc
            entries[entry.sha256] = entry
        return entries

    def _maybe_reload(self) -> None:
        """Pick up `token create` / `token revoke` made by another process, at most once per interval."""
        if self.path is None or time.monotonic() - self._checked < self.reload_interval_s:
            return
        self._checked = time.monotonic()
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        try:
            entries = self._read(self.path) if self.path.exists() else {}
        except (OSError, ConfigError) as exc:
            _log.error("tokens file changed but cannot be used (keeping the previous one): %s", exc)
            return
        with self._lock:
            self._entries, self._stamp = entries, stamp

    def __len__(self) -> int:
        return len(self._entries) + len(self._memory)

    def entries(self) -> list[TokenEntry]:
        self._maybe_reload()
        return sorted([*self._entries.values(), *self._memory.values()], key=lambda e: e.created)

    def add(
        self,
        token: str,
        principal: str,
        *,
        tenant: str = "default",
        profile: str = "default",
        scopes: tuple[str, ...] = DEFAULT_SCOPES,
    ) -> None:
        """Accept `token` in memory only (the dev token of `serve` without a tokens file)."""
        entry = TokenEntry(hash_token(token), principal, tenant, profile, scopes, _now())
        self._memory[entry.sha256] = entry

    def create(
        self,
        principal: str,
        profile: str = "default",
        tenant: str = "default",
        *,
        scopes: tuple[str, ...] = DEFAULT_SCOPES,
        expires_in: dt.timedelta | None = None,
    ) -> str:
        """Make a new token, append its entry to the file and return the token (shown once)."""
        if self.path is None:
            raise ConfigError("no tokens file given")
        validate_principal_id(principal)
        validate_principal_id(profile, "profile")
        validate_principal_id(tenant, "tenant")
        unknown = set(scopes) - set(SCOPES)
        if unknown:
            raise ConfigError(f"unknown scope(s) {sorted(unknown)}; known: {sorted(SCOPES)}")
        token = _PREFIX + secrets.token_urlsafe(32)
        now = _now()
        entry = TokenEntry(
            hash_token(token),
            principal,
            tenant,
            profile,
            tuple(scopes),
            now,
            now + expires_in if expires_in else None,
        )
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, (entry.to_json() + "\n").encode())
            finally:
                os.close(fd)
            self._entries[entry.sha256] = entry
        return token

    def revoke(self, *, token_id: str | None = None, principal: str | None = None) -> int:
        """Mark matching active entries revoked (the file is rewritten atomically). Returns how many."""
        if self.path is None or (token_id is None) == (principal is None):
            raise ConfigError("revoke needs a tokens file and exactly one of --id or --principal")
        with self._lock:
            entries = self._read(self.path) if self.path.exists() else {}
            now, count = _now(), 0
            for digest, entry in entries.items():
                if entry.revoked is None and (entry.id == token_id or entry.principal == principal):
                    entries[digest] = replace(entry, revoked=now)
                    count += 1
            partial = self.path.with_name(self.path.name + ".partial")
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, "".join(e.to_json() + "\n" for e in entries.values()).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            partial.replace(self.path)
            self._entries, self._stamp = entries, self._file_stamp()
        return count

    def principal_entry(self, principal_id: str, tenant: str | None = None) -> TokenEntry | None:
        """The first active entry of `principal_id` (in `tenant`, if given), or None: `policy explain`
        and `admin_policy` (which asks only in the caller's tenant) take its profile."""
        now = _now()
        found = (e for e in self.entries() if e.principal == principal_id and tenant in (None, e.tenant))
        return next((e for e in found if e.state(now) == "active"), None)

    def verify(self, token: str) -> tuple[TokenEntry | None, str]:
        """(entry, "") for a valid token; (None, reason) otherwise: unknown-token, expired or revoked.

        The lookup key is the sha256 of a 256-bit random secret; the stored digest is then compared
        in constant time as well.
        """
        if not token.startswith(_PREFIX) or len(token) > 256:
            return None, "unknown-token"
        self._maybe_reload()
        digest = hash_token(token)
        entry = self._entries.get(digest) or self._memory.get(digest)
        if entry is None or not hmac.compare_digest(entry.sha256, digest):
            return None, "unknown-token"
        state = entry.state(_now())
        return (entry, "") if state == "active" else (None, state)
