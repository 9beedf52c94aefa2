"""Sandbox Gateway: an MCP server that runs agents' code in per-principal Docker sandboxes."""

__version__ = "0.1.0"
__all__ = ["__version__"]
