"""Who is calling: API tokens (`tokens.py`, hashed at rest), OAuth 2.1 JWT access tokens
(`oauth.py`, checked against the issuer's JWKS), and the one verifier that maps either to a
`policy.Principal` with its scopes (`verifier.py`, the SDK's TokenVerifier)."""
