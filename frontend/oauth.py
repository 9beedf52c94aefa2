"""Sign-in through the gateway's OAuth issuer: the authorization code flow with PKCE (S256) and the
gateway named as the resource (RFC 8707), the console acting as the OAuth client.

The issuer is the one the gateway itself names in its protected-resource metadata (RFC 9728); its
endpoints come from its own metadata (RFC 8414, else OpenID discovery), whose `issuer` must match.
The console fetches nothing else: no URL a person types is ever requested.

What the browser carries: a random flow cookie (HttpOnly, SameSite=Lax, path /oauth) that binds the
issuer's answer to the browser that asked (no login CSRF), then a random one-time hand-off cookie.
The access token never appears in a URL, a log or the page's own storage: the callback keeps it in
memory under the hand-off id for a short while (frontend.signin_state), until the page, on load, moves it into
that person's Gradio session state (`Handoffs.claim`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlencode, urlsplit

import httpx2
from mcp.client.auth.oauth2 import PKCEParameters
from mcp.client.auth.utils import (
    build_oauth_authorization_server_metadata_discovery_urls,
    build_protected_resource_metadata_discovery_urls,
    issuers_match,
)
from mcp.shared.auth import OAuthMetadata, OAuthToken, ProtectedResourceMetadata
from pydantic import ValidationError

__all__ = [
    "Discovery",
    "Endpoints",
    "OAuthClient",
    "SignInError",
    "authorization_url",
    "exchange_code",
    "https_or_loopback",
]

#: How long the discovered endpoints are reused.
DISCOVERY_TTL_S = 300.0
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class SignInError(Exception):
    """Why the OAuth sign-in did not give a token, worded for the person signing in."""


def https_or_loopback(url: str, what: str) -> str:
    """`url` if it is https, or http on a loopback host; else SignInError (codes and tokens would
    cross the network in clear)."""
    parts = urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK):
        return url
    raise SignInError(f"the {what} {url!r} is neither https nor on this machine")


@dataclass(frozen=True, slots=True)
class OAuthClient:
    """The console as the issuer's client: its id, its secret if it is a confidential client, and the
    callback URL registered at the issuer."""

    client_id: str
    redirect_uri: str
    client_secret: str | None = None
    issuer: str | None = None  # pin one of the issuers the gateway names
    scopes: tuple[str, ...] = ()  # default: the scopes the gateway's metadata lists

    def __repr__(self) -> str:
        secret = "<hidden>" if self.client_secret else None
        return f"OAuthClient({self.client_id!r}, {self.redirect_uri!r}, secret={secret})"


@dataclass(frozen=True, slots=True)
class Endpoints:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    resource: str
    scopes: tuple[str, ...]


class Discovery:
    """The gateway's issuer and its endpoints, looked up from the gateway's metadata and cached."""

    def __init__(self, gateway_url: str, client: OAuthClient, *, timeout_s: float = 10.0) -> None:
        self.gateway_url, self.client, self._timeout_s = gateway_url, client, timeout_s
        self._cached: tuple[float, Endpoints] | None = None

    async def endpoints(self) -> Endpoints:
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < DISCOVERY_TTL_S:
            return self._cached[1]
        async with httpx2.AsyncClient(
            timeout=self._timeout_s, trust_env=False, follow_redirects=False
        ) as http:
            found = await self._discover(http)
        self._cached = (now, found)
        return found

    async def _discover(self, http: httpx2.AsyncClient) -> Endpoints:
        resource = await _first(
            http,
            build_protected_resource_metadata_discovery_urls(None, self.gateway_url),
            ProtectedResourceMetadata,
        )
        if resource is None or not resource.authorization_servers:
            raise SignInError("the gateway does not name an OAuth issuer (it takes gateway tokens only)")
        named = [str(url) for url in resource.authorization_servers]
        issuer = self.client.issuer or named[0]
        if not any(issuers_match(issuer, other) for other in named):
            raise SignInError(
                f"the gateway does not trust the issuer {issuer!r} (it names {', '.join(named)})"
            )
        https_or_loopback(issuer, "issuer")
        metadata = await _first(
            http, build_oauth_authorization_server_metadata_discovery_urls(issuer, issuer), OAuthMetadata
        )
        if metadata is None:
            raise SignInError(f"the issuer {issuer} publishes no OAuth or OpenID metadata")
        if not issuers_match(str(metadata.issuer), issuer):
            raise SignInError(f"the issuer's metadata names another issuer ({metadata.issuer}, not {issuer})")
        if "S256" not in (metadata.code_challenge_methods_supported or []):
            raise SignInError(f"the issuer {issuer} does not support PKCE with S256")
        scopes = self.client.scopes or tuple(resource.scopes_supported or ())
        return Endpoints(
            issuer=str(metadata.issuer),
            authorization_endpoint=https_or_loopback(
                str(metadata.authorization_endpoint), "authorization endpoint"
            ),
            token_endpoint=https_or_loopback(str(metadata.token_endpoint), "token endpoint"),
            resource=str(resource.resource),
            scopes=scopes,
        )


M = TypeVar("M", ProtectedResourceMetadata, OAuthMetadata)


async def _first(http: httpx2.AsyncClient, urls: list[str], model: type[M]) -> M | None:
    """The first of `urls` that serves valid metadata (redirects are not followed)."""
    for url in urls:
        try:
            response = await http.get(url, headers={"Accept": "application/json"})
        except httpx2.HTTPError as exc:
            raise SignInError(f"cannot reach {url}: {exc.__class__.__name__}") from None
        if response.status_code == 200:
            try:
                return model.model_validate_json(response.content)
            except ValidationError:
                continue
    return None


def authorization_url(endpoints: Endpoints, client: OAuthClient, state: str, pkce: PKCEParameters) -> str:
    query = {
        "response_type": "code",
        "client_id": client.client_id,
        "redirect_uri": client.redirect_uri,
        "state": state,
        "code_challenge": pkce.code_challenge,
        "code_challenge_method": "S256",
        "resource": endpoints.resource,
    }
    if endpoints.scopes:
        query["scope"] = " ".join(endpoints.scopes)
    separator = "&" if urlsplit(endpoints.authorization_endpoint).query else "?"
    return f"{endpoints.authorization_endpoint}{separator}{urlencode(query)}"


async def exchange_code(
    endpoints: Endpoints, client: OAuthClient, code: str, verifier: str, *, timeout_s: float = 10.0
) -> OAuthToken:
    """The issuer's access token for `code` (PKCE `verifier`), or SignInError with the issuer's reason."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": client.redirect_uri,
        "code_verifier": verifier,
        "resource": endpoints.resource,
        "client_id": client.client_id,
    }
    auth = httpx2.BasicAuth(client.client_id, client.client_secret) if client.client_secret else None
    async with httpx2.AsyncClient(
        timeout=timeout_s, trust_env=False, follow_redirects=False, auth=auth
    ) as http:
        try:
            response = await http.post(endpoints.token_endpoint, data=form)
        except httpx2.HTTPError as exc:
            raise SignInError(f"cannot reach the issuer's token endpoint: {exc.__class__.__name__}") from None
    if response.status_code != 200:
        try:
            reason = response.json().get("error_description") or response.json().get("error")
        except ValueError:
            reason = None
        raise SignInError(
            f"the issuer refused the sign-in ({response.status_code}: {reason or 'no reason given'})"
        )
    try:
        return OAuthToken.model_validate_json(response.content)
    except ValidationError:
        raise SignInError("the issuer's token response is not a bearer token") from None
