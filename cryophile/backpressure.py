"""spool_max: backup waits while the unfrozen data in the spool is at the bound."""

from __future__ import annotations

import logging
import os
import time

from .spool import Spool

log = logging.getLogger("cryophile.backup")

POLL = 0.5


def default_bound(spool: Spool) -> int:
    """Half the free space of the spool's filesystem, at least 256 MiB."""
    st = os.statvfs(spool.root)
    return max(st.f_bavail * st.f_frsize // 2, 256 << 20)


class Backpressure:
    def __init__(self, spool: Spool, bound: int | None):
        self.spool = spool
        self.bound = bound
        self.waited = 0.0

    def wait(self) -> None:
        """Called before a new fragment is started."""
        if self.bound is None:
            self.bound = default_bound(self.spool)
        told = False
        while self.spool.unfrozen_bytes() >= self.bound:
            if not told:
                log.info("spool holds %d bytes not yet frozen (spool_max %d): waiting for "
                         "freeze to make room", self.spool.unfrozen_bytes(), self.bound)
                told = True
            time.sleep(POLL)
            self.waited += POLL
