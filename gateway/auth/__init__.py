"""gateway/auth."""
