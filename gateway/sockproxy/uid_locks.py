"""One lock per sandbox uid: creates of one uid are serialised so that two cannot both take it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["UidLocks"]


class UidLocks:
    """The locks of the uids being created; a lock is forgotten once nobody holds or awaits it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    async def hold(self, user: str) -> Callable[[], None]:
        """Wait for the lock of `user`; returns its release (which forgets the lock once unused)."""
        lock, users = self._locks.get(user, (asyncio.Lock(), 0))
        self._locks[user] = (lock, users + 1)
        try:
            await lock.acquire()
        except BaseException:
            self._forget(user)
            raise

        def release() -> None:
            lock.release()
            self._forget(user)

        return release

    def _forget(self, user: str) -> None:
        lock, users = self._locks[user]
        if users <= 1:
            del self._locks[user]
        else:
            self._locks[user] = (lock, users - 1)
