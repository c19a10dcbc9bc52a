"""spool_max: a backup waits while the unfrozen data in the spool is at the bound.

Someone must make room: a freeze daemon (`cryophile freeze`, a mount) holds
the spool's FreezeDaemonLock, and then the backup waits for it.  When none
runs, a backup given ``freeze_inline`` freezes the queue itself, in its own
process, before it writes on; if that makes no room (the vault cannot be
reached), it fails at once with a hint instead of waiting for ever.  So
`backup` then `freeze --once`, as a cron job runs them, cannot deadlock.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

from . import errors
from .spool import FreezeDaemonLock, Spool

log = logging.getLogger("cryophile.backup")

POLL = 0.5


def default_bound(spool: Spool) -> int:
    """Half the space free on the spool's filesystem (asked when the first
    fragment of a backup starts)."""
    st = os.statvfs(spool.root)
    return half_of_free(st.f_bavail * st.f_frsize)


def half_of_free(free: int) -> int:
    return max(free // 2, 1)


def _size(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


class Backpressure:
    def __init__(self, spool: Spool, bound: int | None,
                 freeze_inline: Callable[[], None] | None = None):
        self.spool = spool
        self.bound = bound
        self.freeze_inline = freeze_inline
        self.waited = 0.0
        self.inline_rounds = 0

    def wait(self, stop: threading.Event | None = None) -> None:
        """Called before a new fragment is started; ``stop`` (the backup is
        aborted) ends the wait with Interrupted."""
        if self.bound is None:
            self.bound = default_bound(self.spool)
        told = False
        while (queued := self.spool.unfrozen_bytes()) >= self.bound:
            if self.freeze_inline is not None and \
                    not FreezeDaemonLock(self.spool).anyone_freezing():
                if self._make_room(queued):
                    continue
            elif not told:
                log.info("spool holds %s not yet frozen (spool_max %s): waiting for "
                         "freeze to make room", _size(queued), _size(self.bound))
                told = True
            if stop is None:
                time.sleep(POLL)
            elif stop.wait(POLL):
                raise errors.Interrupted("backup stopped while waiting for spool room (spool_max)")
            self.waited += POLL

    def _make_room(self, queued: int) -> bool:
        """Freeze inline; True if that made room.  Raises if it could not."""
        log.log(logging.DEBUG if self.inline_rounds else logging.INFO,
                "spool holds %s not yet frozen (spool_max %s) and no freeze daemon "
                "runs: freezing here", _size(queued), _size(self.bound))
        self.inline_rounds += 1
        failure = None
        try:
            self.freeze_inline()
        except errors.Error as exc:
            failure = exc
        left = self.spool.unfrozen_bytes()
        if left < queued:
            if failure is not None:
                log.warning("could not freeze all of the queue here (not tried again by "
                            "this backup): %s", failure)
            return True
        # No room made.  An archive an earlier round failed on is not tried
        # again: if that is what fills the spool, nothing here ever will.
        failure = failure or getattr(self.freeze_inline, "failure", None)
        if failure is not None:
            raise errors.SpoolError(
                f"the spool holds {_size(left)} not yet frozen (spool_max "
                f"{_size(self.bound)}) and freezing here failed: {failure}; run "
                "`cryophile freeze` when the vault is reachable, or raise spool_max")
        return False        # others hold the archives: they are freezing them
