"""gateway/backend."""
