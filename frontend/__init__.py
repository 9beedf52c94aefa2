"""The web console: a Gradio app that is an MCP client of the gateway, with the person's own token.

It holds no Docker access: everything it shows or does goes through the gateway's MCP tools, so the
gateway's policy, rate limits, quotas and audit apply to it as to any agent.
"""

from __future__ import annotations

__all__: list[str] = []
