"""Authentication: API tokens and JWT access tokens behind one verifier (the SDK's TokenVerifier)."""

from __future__ import annotations

from typing import Any

from mcp.server.auth.provider import AccessToken

from gateway.auth.oauth import JWTVerifier
from gateway.auth.tokens import SCOPES, TokenStore, hash_token, validate_principal_id
from gateway.errors import ConfigError
from policy import Principal

__all__ = ["GatewayTokenVerifier"]


def _scopes(claims: dict[str, Any]) -> tuple[str, ...]:
    raw = claims.get("scope", claims.get("scp", ""))
    items = raw.split() if isinstance(raw, str) else [str(s) for s in raw or []]
    return tuple(sorted(s for s in set(items) if s in SCOPES))


class GatewayTokenVerifier:
    """Maps a bearer token to (Principal, AccessToken), or to the reason it was refused."""

    def __init__(self, tokens: TokenStore, jwt_verifier: JWTVerifier | None = None) -> None:
        self.tokens = tokens
        self.jwt = jwt_verifier

    async def verify_token(self, token: str) -> AccessToken | None:
        """The SDK's TokenVerifier protocol."""
        return self.authenticate(token)[1]

    def authenticate(self, token: str) -> tuple[Principal | None, AccessToken | None, str]:
        if token.startswith("sgw_") or self.jwt is None:
            entry, reason = self.tokens.verify(token)
            if entry is None:
                return None, None, reason
            principal = Principal(
                entry.principal, entry.tenant, entry.profile, "token", frozenset(entry.scopes)
            )
            expires = int(entry.expires.timestamp()) if entry.expires else None
            return principal, self._access(token, principal, expires, "token"), ""
        claims, reason = self.jwt.verify(token)
        if claims is None:
            return None, None, reason
        settings = self.jwt.settings
        try:
            principal = Principal(
                validate_principal_id(str(claims[settings.principal_claim])),
                validate_principal_id(str(claims.get(settings.tenant_claim, "default")), "tenant"),
                validate_principal_id(str(claims.get(settings.profile_claim, "default")), "profile"),
                "jwt",
                frozenset(_scopes(claims)),
            )
        except ConfigError:
            return None, None, "bad-claims"
        return principal, self._access(token, principal, int(claims["exp"]), str(claims["iss"])), ""

    @staticmethod
    def _access(token: str, principal: Principal, expires: int | None, issuer: str) -> AccessToken:
        return AccessToken(
            token=hash_token(token),  # the SDK keeps this; the secret itself stays out of memory dumps
            client_id=f"{principal.tenant}/{principal.id}",
            scopes=sorted(principal.scopes),
            expires_at=expires,
            subject=principal.id,
            claims={"iss": issuer, "tenant": principal.tenant, "profile": principal.profile},
        )
