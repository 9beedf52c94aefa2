"""The console's two OAuth routes: `/oauth/login` sends the browser to the issuer, `/oauth/callback`
takes the issuer's answer, trades the code for a token and leaves it for the page (see frontend.oauth).
Whatever goes wrong comes back to the page as a plain message in place of the token."""

from __future__ import annotations

import logging

from mcp.client.auth.utils import issuers_match
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from frontend.oauth import Discovery, OAuthClient, SignInError, authorization_url, exchange_code
from frontend.signin_state import FLOW_TTL_S, HANDOFF_TTL_S, Flows, Handoff, Handoffs, new_flow

__all__ = ["FLOW_COOKIE", "HANDOFF_COOKIE", "SignInRoutes"]

FLOW_COOKIE = "sgw_oauth_flow"
HANDOFF_COOKIE = "sgw_signin"
_log = logging.getLogger("sandbox_gateway.ui")
#: The longest part of an issuer's error that is shown.
_REASON_CHARS = 300


def _plain(text: str | None) -> str:
    return "".join(c for c in (text or "") if c.isprintable())[:_REASON_CHARS]


class SignInRoutes:
    """The routes and the in-memory state they share with the page (`handoffs`)."""

    def __init__(self, gateway_url: str, client: OAuthClient) -> None:
        self.client = client
        self.discovery = Discovery(gateway_url, client)
        self.flows = Flows(FLOW_TTL_S)
        self.handoffs = Handoffs(HANDOFF_TTL_S)
        self._secure = client.redirect_uri.startswith("https://")

    def routes(self) -> list[Route]:
        return [
            Route("/oauth/login", self.login, methods=["GET"]),
            Route("/oauth/callback", self.callback, methods=["GET"]),
        ]

    async def login(self, request: Request) -> Response:
        try:
            endpoints = await self.discovery.endpoints()
        except SignInError as exc:
            _log.warning("oauth sign-in cannot start: %s", exc)
            return self._back(Handoff(error=str(exc)))
        state, binding, pkce, flow = new_flow(endpoints)
        self.flows.put(state, flow)
        response = RedirectResponse(authorization_url(endpoints, self.client, state, pkce), status_code=302)
        response.set_cookie(
            FLOW_COOKIE, binding, max_age=int(FLOW_TTL_S), path="/oauth", httponly=True,
            samesite="lax", secure=self._secure,
        )  # fmt: skip
        response.headers["Cache-Control"] = "no-store"
        return response

    async def callback(self, request: Request) -> Response:
        handoff = await self._handoff(request)
        if handoff.error:
            _log.warning("oauth sign-in failed: %s", handoff.error)
        return self._back(handoff)

    async def _handoff(self, request: Request) -> Handoff:
        params = request.query_params
        flow = self.flows.take_bound(params.get("state", ""), request.cookies.get(FLOW_COOKIE))
        if flow is None:
            return Handoff(
                error="this sign-in is unknown, expired or was started in another browser; sign in again"
            )
        issuer = flow.endpoints.issuer
        if "error" in params:
            reason = _plain(params.get("error_description")) or _plain(params.get("error"))
            return Handoff(error=f"the issuer did not sign you in: {reason}")
        returned_issuer = params.get("iss")
        if returned_issuer is not None and not issuers_match(returned_issuer, issuer):
            return Handoff(
                error="the answer came from another issuer than the one asked (RFC 9207); sign in again"
            )
        code = params.get("code")
        if not code:
            return Handoff(error="the issuer's answer has no authorization code")
        try:
            token = await exchange_code(flow.endpoints, self.client, code, flow.verifier)
        except SignInError as exc:
            return Handoff(error=str(exc))
        return Handoff(token=token.access_token, issuer=issuer, expires_in_s=token.expires_in)

    def _back(self, handoff: Handoff) -> Response:
        """To the page, with the hand-off's id in a short-lived cookie."""
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            HANDOFF_COOKIE, self.handoffs.leave(handoff), max_age=int(HANDOFF_TTL_S), path="/",
            httponly=True, samesite="lax", secure=self._secure,
        )  # fmt: skip
        response.delete_cookie(FLOW_COOKIE, path="/oauth")
        response.headers["Cache-Control"] = "no-store"
        return response
