"""Pure ASGI middleware in front of the MCP endpoint, one module per middleware.

The app stacks them in this order (outermost first):

- `secure_headers`: headers every response carries;
- `body_limit`: 413 for a request body above the cap;
- `address_rate`: 429 for a client address that has spent its budget of unauthenticated requests
  (`address_budget`);
- `authentication`: 401/403 unless the bearer credential verifies and carries a gateway scope; a
  refused request is charged to its address's budget, an authenticated one puts its principal in
  the scope;
- `principal_rate`: 429 for a principal, or its tenant, over its request rate.

Rate limits are charged to who the caller is: a request that does not authenticate to its client
address (`--address-rate`), one that does never to its address but to its principal
(`rate_limits.requests`) and its tenant (`rate_limits.tenant_requests`, the caller's profile's), so
one agent behind a shared address (a NAT, an agent platform) cannot spend the others' budget. Over a
limit: 429 with Retry-After, and a `ratelimit.hit` audit event folded per source and window (the
first at once, the rest counted in a summary): a client that keeps knocking cannot push older
evidence out of the log.
"""
