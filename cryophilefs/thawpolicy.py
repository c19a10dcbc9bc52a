"""When reading through the mount may thaw: ``thaw_on_read`` and the guards.

In a filesystem where reading thaws, a ``grep -r``, a desktop indexer or
another backup tool walking the mount could start restores of every
archive.  So before the mount queues a thaw:

- ``thaw_on_read = "never"``: refused unless the archive was approved;
- ``"budget"`` (the default): one process may start thaws of at most
  ``SCAN_ARCHIVES`` different archives in ``SCAN_WINDOW`` seconds (a scanner
  is refused beyond that), and every thaw is kept to the budgets;
- ``"always"``: charged to the ledger, never refused.

``setfattr -n user.cryophile.thaw -v approve FILE`` approves an archive: its
thaws pass every guard (and are still charged).  A refused read fails with
EDQUOT ("Disk quota exceeded"); the plan is logged once per archive.

Partial thaws: a read thaws the fragment it needs plus ``thaw_readahead``
fragments after it, not the rest of the archive.
"""

from __future__ import annotations

import errno
import logging
import time

import trio

from cryophile import errors
from cryophile.ids import BackupId
from cryophile.ledger import Guard
from cryophile.plan import Plan

import pyfuse3

log = logging.getLogger("cryophilefs")

SCAN_ARCHIVES = 3
SCAN_WINDOW = 600.0
APPROVE = "setfattr -n user.cryophile.thaw -v approve FILE"


class ReadPolicy:
    def __init__(self, config, spool, stores, settings):
        self.config, self.spool, self.stores, self.settings = config, spool, stores, settings
        self.mode = config.thaw_on_read
        self.readahead = config.thaw_readahead
        self.guard = Guard(spool, config, approve_hint=APPROVE)
        self.approving = Guard(spool, config, approved=True)
        self.approved: set[BackupId] = set()
        self.recent: dict[int, dict[BackupId, float]] = {}     # pid -> archive -> when
        self.logged: set[tuple[BackupId, str]] = set()

    def window(self, archive, first: int) -> list[int]:
        """The fragments a read needing ``first`` thaws."""
        return list(range(first, min(archive.fragments, first + self.readahead) + 1))

    async def plan(self, archive, fragments: list[int] | None = None) -> Plan:
        tier, days = self.settings(archive.bid.vault)
        store = self.stores(archive.bid.vault)
        return await trio.to_thread.run_sync(self.guard.plan, store, archive.clear,
                                             fragments, tier, days)

    async def admit(self, archive, wanted: list[int], pid: int = 0,
                    approve: bool = False) -> None:
        """Charge the thaw of ``wanted``, or raise FUSEError(EDQUOT) (logged
        here once per archive, not at each read)."""
        bid = archive.bid
        if approve:
            self.approved.add(bid)
        plan = await self.plan(archive, wanted)
        if not plan.thaw:
            return                  # nothing to request: being restored, or readable
        approved = bid in self.approved or self.mode == "always"
        if not approved and self.mode == "never":
            self._refuse(bid, plan, "thaw_on_read is \"never\"")
        if not approved and pid and self._scanning(pid, bid):
            self._refuse(bid, plan, f"one process (pid {pid}) read more than {SCAN_ARCHIVES} "
                                    f"frozen archives within {SCAN_WINDOW:.0f} s")
        guard = self.approving if approved else self.guard
        try:
            await trio.to_thread.run_sync(guard.budget.reserve, plan)
        except errors.BudgetError as exc:
            self._refuse(bid, plan, None, str(exc))
        if pid:
            self.recent.setdefault(pid, {})[bid] = time.monotonic()
        log.info("thawing %s: %s", bid, plan.summary())

    def _scanning(self, pid: int, bid: BackupId) -> bool:
        now = time.monotonic()
        seen = {b: t for b, t in self.recent.get(pid, {}).items() if now - t < SCAN_WINDOW}
        self.recent[pid] = seen
        return bid not in seen and len(seen) >= SCAN_ARCHIVES

    def _refuse(self, bid: BackupId, plan: Plan, why: str | None, message: str = "") -> None:
        message = message or (f"thaw of {bid} refused: {plan.summary()}; {why}; "
                              f"approve it with {APPROVE}")
        if (bid, message[:80]) not in self.logged:
            self.logged.add((bid, message[:80]))
            log.warning("%s", message)
        raise pyfuse3.FUSEError(errno.EDQUOT)
