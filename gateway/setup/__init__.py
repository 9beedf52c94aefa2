"""`sandbox-gateway setup`: make this machine ready (engine, socket proxy, sandbox image).

Idempotent and loud: every step says what it found and what it did. What is slow is cached,
so a second run takes seconds.
"""

from __future__ import annotations

from gateway.egress.network import EgressNetwork
from gateway.setup.egress import ensure_egress
from gateway.setup.engine import ensure_engine
from gateway.setup.image import ensure_image
from gateway.setup.proxy import ensure_proxy
from gateway.setup.state import SetupPaths

__all__ = ["SetupPaths", "ensure_egress", "ensure_engine", "ensure_image", "ensure_proxy", "run_setup"]


def run_setup(paths: SetupPaths, image: str) -> None:
    """Engine, egress network, then proxy, then image; raise SetupError with what to do if a step
    cannot succeed."""
    ensure_engine(paths)
    ensure_egress(paths, EgressNetwork.from_env())
    ensure_proxy(paths)
    ensure_image(paths, image)
