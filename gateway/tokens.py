"""API tokens: a JSON-lines file of sha256 hashes mapped to principals. Tokens are never stored."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import secrets
import threading
from pathlib import Path

from gateway.errors import ConfigError
from policy import Principal

__all__ = ["PRINCIPAL_ID", "TokenStore", "hash_token", "validate_principal_id"]

#: Principal, tenant and profile names: short, printable, safe in labels, names and logs.
PRINCIPAL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
_PREFIX = "sgw_"


def validate_principal_id(value: str, what: str = "principal") -> str:
    if not isinstance(value, str) or not PRINCIPAL_ID.match(value):
        raise ConfigError(
            f"invalid {what} {value!r}: use 1-128 of A-Z a-z 0-9 . _ @ - (starting alphanumeric)"
        )
    return value


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """Reads and appends the tokens file; verify() maps a presented token to its Principal."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._by_hash: dict[str, Principal] = {}
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                principal = Principal(
                    id=validate_principal_id(row["principal"]),
                    tenant=validate_principal_id(row.get("tenant", "default"), "tenant"),
                    profile=validate_principal_id(row.get("profile", "default"), "profile"),
                    auth_method="token",
                )
                digest = str(row["sha256"])
            except (ValueError, KeyError, TypeError, ConfigError) as exc:
                raise ConfigError(f"{path.name}: line {number} is not a valid token entry") from exc
            self._by_hash[digest] = principal

    def __len__(self) -> int:
        return len(self._by_hash)

    def add(self, token: str, principal: Principal) -> None:
        """Accept `token` for `principal` in memory only (dev tokens, tests)."""
        self._by_hash[hash_token(token)] = principal

    def create(self, principal: str, profile: str = "default", tenant: str = "default") -> str:
        """Make a new token, append its hash to the file and return the token (shown once)."""
        if self.path is None:
            raise ConfigError("no tokens file given")
        validate_principal_id(principal)
        validate_principal_id(profile, "profile")
        validate_principal_id(tenant, "tenant")
        token = _PREFIX + secrets.token_urlsafe(32)
        row = {
            "sha256": hash_token(token),
            "principal": principal,
            "profile": profile,
            "tenant": tenant,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, (json.dumps(row, sort_keys=True) + "\n").encode())
            finally:
                os.close(fd)
        self._by_hash[row["sha256"]] = Principal(principal, tenant, profile, "token")
        return token

    def principal(self, principal_id: str) -> Principal | None:
        """The first entry for `principal_id` (for `policy explain`), or None."""
        return next((p for p in self._by_hash.values() if p.id == principal_id), None)

    def verify(self, token: str) -> Principal | None:
        """The principal for `token`, or None.

        The lookup key is the sha256 of a 256-bit random secret, so lookup timing reveals nothing
        usable about any stored token.
        """
        if not token.startswith(_PREFIX) or len(token) > 256:
            return None
        return self._by_hash.get(hash_token(token))
