"""`python -m frontend`: the web console (see frontend.cli)."""

from __future__ import annotations

import sys

from frontend.cli import main

sys.exit(main())
