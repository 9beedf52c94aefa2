"""The in-sandbox agent (`sandbox_agent.py`, standard library only, copied into the sandbox image)."""
