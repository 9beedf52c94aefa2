#!/usr/bin/env python3
"""Start the sandbox agent: /opt/sandbox-gateway/agent.py in the sandbox image, the container's command
(`python3 -I -S /opt/sandbox-gateway/agent.py`), next to the agent's package (sgw_agent/, the modules
of gateway/agent/).

`-I` keeps the script's directory off sys.path, so nothing is imported from where the code in the
sandbox can write. This adds back exactly one directory, explicitly: the script's own, root-owned and
read-only in the image, holding only the agent, its package and the file helper. It goes last, so a
standard module always comes from the standard library; and the agent refuses to start if its uid
could write there.
"""

from __future__ import annotations

import importlib
import os
import sys

#: The agent's package, as the image names it.
PACKAGE = "sgw_agent"


def main() -> None:
    home = os.path.dirname(os.path.realpath(__file__))
    for directory in (home, os.path.join(home, PACKAGE)):
        if os.access(directory, os.W_OK):
            sys.exit(f"sandbox agent: {directory} is writable by uid {os.getuid()}; not starting")
    sys.path.append(home)
    importlib.import_module(f"{PACKAGE}.sandbox_agent").main()


if __name__ == "__main__":
    main()
