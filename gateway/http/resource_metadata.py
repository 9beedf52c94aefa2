"""The OAuth protected-resource metadata route (RFC 9728), when JWT access tokens are accepted."""

from __future__ import annotations

from mcp.server.auth.routes import build_resource_metadata_url, create_protected_resource_routes
from mcp.server.auth.settings import AuthSettings
from starlette.routing import BaseRoute

from gateway.auth.oauth import OAuthSettings
from gateway.auth.tokens import SCOPES

__all__ = ["resource_metadata_routes"]


def resource_metadata_routes(oauth: OAuthSettings | None) -> tuple[list[BaseRoute], str | None]:
    """The metadata route and its URL (for the bearer challenge); none without OAuth settings."""
    if oauth is None:
        return [], None
    # AuthSettings keeps the issuer exactly as configured (RFC 8414 compares issuers as strings).
    auth = AuthSettings.model_validate(
        {
            "issuer_url": oauth.issuer,
            "resource_server_url": oauth.resource_url,
            "required_scopes": sorted(SCOPES),
            "validate_token_resource": False,  # the JWT verifier checks the audience itself
        }
    )
    assert auth.resource_server_url is not None  # noqa: S101 - just set
    routes = create_protected_resource_routes(
        resource_url=auth.resource_server_url,
        authorization_servers=[auth.issuer_url],
        scopes_supported=auth.required_scopes,
    )
    return list(routes), str(build_resource_metadata_url(auth.resource_server_url))
