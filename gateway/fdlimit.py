"""The open-file limit of a long-running process that holds a stream per sandbox."""

from __future__ import annotations

import logging
import resource

__all__ = ["FD_HEADROOM", "raise_open_file_limit"]

#: Files a process needs besides its per-sandbox streams (sockets, logs, the Python runtime).
FD_HEADROOM = 1024


def raise_open_file_limit(streams: int, flag: str) -> None:
    """Lift the soft open-file limit to the hard one (1024 by default on many systems would stop
    the process near a thousand sandboxes), and warn when even that is below `streams` plus
    headroom; `flag` names the setting that asks for those streams."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, streams + FD_HEADROOM)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft < streams + FD_HEADROOM:
        logging.getLogger("sandbox_gateway").warning(
            "the open-file limit (%d) is low for %s; raise it (ulimit -n, LimitNOFILE=) to at least %d",
            soft,
            flag,
            streams + FD_HEADROOM,
        )
