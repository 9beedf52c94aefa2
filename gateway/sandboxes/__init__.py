"""gateway/sandboxes."""
