"""The socket proxy: the only door from the gateway to the Docker Engine API.

It parses every request (h11) and decodes every body strictly, accepts only the operations and
the exact shapes the broker sends, on the gateway's own sandboxes, and forwards a request it
rebuilt itself. Run it with `sandbox-gateway socket-proxy` (setup starts it).
"""

from gateway.sockproxy.rules import ProxyRules
from gateway.sockproxy.server import ProxyServer

__all__ = ["ProxyRules", "ProxyServer"]
