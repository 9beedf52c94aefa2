"""`python -m gateway.sockproxy`: the socket proxy, as `sandbox-gateway socket-proxy` runs it."""

from __future__ import annotations

import argparse
import sys

from gateway.errors import GatewayError
from gateway.sockproxy.main import add_arguments, run


def main() -> int:
    parser = argparse.ArgumentParser(prog="sandbox-gateway socket-proxy", description=__doc__)
    add_arguments(parser)
    try:
        return run(parser.parse_args())
    except GatewayError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
