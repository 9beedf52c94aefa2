"""The HTTP edge: the Starlette app (`app.py`) serving MCP over streamable HTTP at /mcp, /health and
/ready; its middleware, one per module (`middleware/`: body cap, bearer authentication, security
headers, rate limits by address and by principal); the MCP server and its tools (`mcp_server.py`,
`tools.py`); MCP sessions bounded per principal (`sessions.py`); and the lifespan's background
work (`lifespan.py`: sweep, reaper, warm pool, policy reload, shutdown)."""
