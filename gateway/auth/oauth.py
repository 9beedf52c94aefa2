"""JWT access tokens (OAuth 2.1 resource server): signature against the issuer's JWKS, issuer,
audience and expiry checked, claims mapped to principal, tenant, profile and scopes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from gateway.errors import ConfigError

__all__ = ["JWTVerifier", "OAuthSettings"]


@dataclass(frozen=True, slots=True)
class OAuthSettings:
    issuer: str
    audience: str
    jwks: str  # a file path or an https:// URL
    resource_url: str
    principal_claim: str = "sub"
    tenant_claim: str = "tenant"
    profile_claim: str = "profile"
    algorithms: tuple[str, ...] = ("RS256", "ES256", "PS256", "EdDSA")
    leeway_s: int = 30


class JWTVerifier:
    """verify(token) -> (claims, "") or (None, reason)."""

    def __init__(self, settings: OAuthSettings) -> None:
        self.settings = settings
        self._client: jwt.PyJWKClient | None = None
        self._keys: jwt.PyJWKSet | None = None
        if settings.jwks.startswith(("https://", "http://")):
            self._client = jwt.PyJWKClient(settings.jwks, cache_keys=True, lifespan=300, timeout=5)
        else:
            try:
                self._keys = jwt.PyJWKSet.from_dict(json.loads(Path(settings.jwks).read_text()))
            except (OSError, ValueError, jwt.PyJWKSetError) as exc:
                raise ConfigError(f"cannot load the JWKS file {settings.jwks}: {exc}") from exc

    def _key(self, token: str) -> Any:
        if self._client is not None:
            return self._client.get_signing_key_from_jwt(token).key
        assert self._keys is not None  # noqa: S101 - one of the two is always set
        kid = jwt.get_unverified_header(token).get("kid")
        for key in self._keys.keys:
            if kid is None or key.key_id == kid:
                return key.key
        raise jwt.InvalidKeyError("no key in the JWKS matches the token's kid")

    def verify(self, token: str) -> tuple[dict[str, Any] | None, str]:
        try:
            claims = jwt.decode(
                token,
                self._key(token),
                algorithms=list(self.settings.algorithms),
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=self.settings.leeway_s,
                options={"require": ["exp", "iss", "aud", self.settings.principal_claim]},
            )
        except jwt.ExpiredSignatureError:
            return None, "expired"
        except jwt.InvalidAudienceError:
            return None, "wrong-audience"
        except jwt.InvalidIssuerError:
            return None, "wrong-issuer"
        except (jwt.InvalidSignatureError, jwt.InvalidKeyError, jwt.PyJWKClientError):
            return None, "bad-signature"
        except jwt.PyJWTError:
            return None, "malformed"
        return dict(claims), ""
