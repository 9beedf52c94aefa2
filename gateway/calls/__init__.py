"""gateway/calls."""
