"""OAuth 2 client credentials for an upstream server: the gateway fetches an access token from the
configured token endpoint, caches it until shortly before it expires, and fetches a new one once
when the upstream answers 401."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Generator
from typing import Any

import anyio
import httpx2

from gateway.errors import UpstreamUnavailable
from gateway.upstream.config import OAuthClientCredentials
from gateway.upstream.credentials import Secret, SecretUnavailable

__all__ = ["ClientCredentialsAuth"]

#: A token is replaced this long before it expires (or at half its life, if that is sooner).
_EXPIRY_MARGIN_S = 30.0
#: A token without `expires_in` is used until the upstream refuses it, at most this long.
_DEFAULT_LIFETIME_S = 3600.0
_MAX_TOKEN_RESPONSE = 64 * 1024


class ClientCredentialsAuth(httpx2.Auth):
    """httpx2 auth putting `Authorization: Bearer <token>` on every request to the upstream."""

    def __init__(self, server: str, config: OAuthClientCredentials, *, timeout_s: float) -> None:
        self._server = server
        self._config = config
        self._timeout_s = timeout_s
        self._token: Secret | None = None
        self._expires_at = 0.0
        self._lock = anyio.Lock()
        #: Token requests made so far (for tests and metrics).
        self.fetches = 0

    def sync_auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response, None]:
        raise NotImplementedError("upstream clients are asynchronous")

    async def async_auth_flow(
        self, request: httpx2.Request
    ) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        used = await self._current()
        request.headers["Authorization"] = f"Bearer {used.reveal()}"
        response = yield request
        if response.status_code == 401:
            fresh = await self._current(refused=used)
            request.headers["Authorization"] = f"Bearer {fresh.reveal()}"
            yield request

    async def _current(self, *, refused: Secret | None = None) -> Secret:
        async with self._lock:
            stale = refused is not None and self._token is refused
            if self._token is None or stale or time.monotonic() >= self._expires_at:
                self._token, lifetime = await self._fetch()
                margin = min(_EXPIRY_MARGIN_S, lifetime / 2)
                self._expires_at = time.monotonic() + lifetime - margin
            return self._token

    def _unavailable(self, why: str) -> UpstreamUnavailable:
        return UpstreamUnavailable(f"upstream {self._server}: token request failed: {why}")

    async def _fetch(self) -> tuple[Secret, float]:
        config = self._config
        try:
            secret = config.secret_source().read().reveal()
        except SecretUnavailable as exc:
            raise self._unavailable(f"client secret: {exc}") from None
        form: dict[str, str] = {"grant_type": "client_credentials"}
        if config.scope:
            form["scope"] = config.scope
        if config.resource:
            form["resource"] = config.resource
        auth: httpx2.BasicAuth | None = None
        if config.auth_method == "client_secret_basic":
            auth = httpx2.BasicAuth(config.client_id, secret)
        else:
            form |= {"client_id": config.client_id, "client_secret": secret}
        self.fetches += 1
        try:
            async with httpx2.AsyncClient(trust_env=False, timeout=self._timeout_s) as client:
                response = await client.post(
                    config.token_url,
                    data=form,
                    auth=auth if auth is not None else httpx2.USE_CLIENT_DEFAULT,
                    headers={"Accept": "application/json"},
                )
        except httpx2.HTTPError as exc:
            raise self._unavailable(type(exc).__name__) from None
        return self._parse(response)

    def _parse(self, response: httpx2.Response) -> tuple[Secret, float]:
        body: Any = None
        if len(response.content) <= _MAX_TOKEN_RESPONSE:
            try:
                body = response.json()
            except ValueError:
                body = None
        if response.status_code != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            named = f" ({error})" if isinstance(error, str) and error.isascii() and len(error) < 64 else ""
            raise self._unavailable(f"HTTP {response.status_code}{named}")
        token, kind, expires_in = body.get("access_token"), body.get("token_type"), body.get("expires_in")
        if not isinstance(token, str) or not token or not token.isascii() or not token.isprintable():
            raise self._unavailable("the response has no usable access_token")
        if not isinstance(kind, str) or kind.lower() != "bearer":
            raise self._unavailable("the token is not a bearer token")
        lifetime = _DEFAULT_LIFETIME_S
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
            lifetime = min(float(expires_in), 86400.0)
        return Secret(token), lifetime
