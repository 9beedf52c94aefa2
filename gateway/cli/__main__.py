"""`python -m gateway.cli`: the `sandbox-gateway` command."""

import sys

from gateway.cli import main

sys.exit(main())
