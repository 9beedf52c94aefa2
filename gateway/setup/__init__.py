"""`sandbox-gateway setup`: make this machine ready (engine, socket proxy, sandbox images).

Idempotent and loud: every step says what it found and what it did. What is slow is cached,
so a second run takes seconds.
"""

from __future__ import annotations

from gateway.egress.network import EgressNetwork
from gateway.setup.egress import ensure_egress
from gateway.setup.engine import ensure_engine
from gateway.setup.image import ensure_image
from gateway.setup.image_variants import VARIANTS
from gateway.setup.proxy import ensure_proxy
from gateway.setup.state import SetupPaths

__all__ = ["SetupPaths", "ensure_egress", "ensure_engine", "ensure_image", "ensure_proxy", "run_setup"]


def run_setup(paths: SetupPaths, image: str) -> list[str]:
    """Engine, egress network, then proxy, then the images: the base one as `image`, then each
    variant on top of it (image_variants.VARIANTS) under its own name. Return the images; raise
    SetupError with what to do if a step cannot succeed."""
    ensure_engine(paths)
    ensure_egress(paths, EgressNetwork.from_env())
    ensure_proxy(paths)
    images = []
    for variant in VARIANTS:
        name = image if variant.extends is None else variant.image
        ensure_image(paths, name, variant, base_image=image)
        images.append(name)
    return images
