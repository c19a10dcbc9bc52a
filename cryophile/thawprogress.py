"""Progress of thaws waiting for the vault, said in one line per archive:

    VAULT/PREFIX/ULID: 3 of 120 fragments restored, requested 2 h ago
    (Standard, typically 3–5 h)

A Glacier restore takes hours; a thaw that says nothing meanwhile looks
hung.  ``Tracker`` follows what a Thawer sees (restore requests sent,
fragments found restored) and, while the thaw waits for the vault, logs a
line at info level when an archive's count changes (at most every
``every / 6`` seconds) and at least every ``every`` seconds; and the last
count (all restored) always.
Only archives the thaw had to wait for are reported (a store that restores
at once is not waited for); an archive the
thaw has had no requests for during ``every`` seconds is forgotten.  The typical waits come from
the plan's table (plan.typical_wait).

Not thread-safe: call from the trio thread (the Thawer's).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from typing import Callable, Iterable

from .ids import BackupId
from .plan import effective_tier, typical_wait

EVERY_TERMINAL = 60.0       # seconds between lines while waiting, on a terminal
EVERY_LOG = 180.0           # … in a service's log


def every() -> float:
    """How often to say progress while waiting: more often to a person."""
    try:
        return EVERY_TERMINAL if sys.stderr.isatty() else EVERY_LOG
    except (AttributeError, ValueError):       # stderr closed or replaced
        return EVERY_LOG


def ago(seconds: float) -> str:
    """'just now', '40 s', '12 min', '2 h', '3 days' ago."""
    s = max(0, int(seconds))
    if s < 10:
        return "just now"
    if s < 90:
        return f"{s} s ago"
    if s < 90 * 60:
        return f"{s // 60} min ago"
    if s < 48 * 3600:
        return f"{s // 3600} h ago"
    return f"{s // 86400} days ago"


def message(bid: BackupId | str, restored: int, total: int, requested_at: float,
            now: float, storage_class: str, tier: str) -> str:
    """The line: how many are restored, since when asked, what to expect."""
    return (f"{bid}: {restored} of {total} {_noun(total)} restored, requested "
            f"{_since(restored, total, requested_at, now, storage_class, tier)}")


def waiting_message(bid: BackupId | str, holder: str, here: int, total: int, since: float,
                    now: float, storage_class: str, tier: str) -> str:
    """A restore's line while another process thaws: it sees only what has
    arrived in the spool, not what the vault has restored."""
    return (f"{bid}: waiting for the thaw held by {holder}: {here} of {total} "
            f"{_noun(total)} here, restore started "
            f"{_since(here, total, since, now, storage_class, tier)}")


def _noun(total: int) -> str:
    return "fragment" if total == 1 else "fragments"


def _since(done: int, total: int, since: float, now: float, storage_class: str,
           tier: str) -> str:
    """'2 h ago (Standard, typically 3–5 h)': how long, and what to expect."""
    tier = effective_tier(storage_class, tier)
    text, longest = typical_wait(storage_class, tier)
    late = "; longer than usual" if longest and now - since > longest and done < total else ""
    return f"{ago(now - since)} ({tier}, typically {text}{late})"


@dataclasses.dataclass
class Archive:
    wanted: set[int] = dataclasses.field(default_factory=set)     # asked of the thaw
    ready: set[int] = dataclasses.field(default_factory=set)      # restored or fetched
    requested_at: float | None = None      # first restore request seen (wall clock)
    storage_class: str = ""
    tier: str = ""
    waiting: int = 0                       # tasks waiting for the vault now
    waited: bool = False                   # … or ever
    said: tuple[int, int] | None = None    # (restored, total) of the last line
    said_at: float = 0.0
    seen_at: float = 0.0                   # last time the thaw had requests for it


class Tracker:
    def __init__(self, log: logging.Logger, every: float = EVERY_LOG,
                 clock: Callable[[], float] = time.time):
        self.log, self.every, self.clock = log, every, clock
        self.archives: dict[BackupId, Archive] = {}

    def _get(self, bid: BackupId) -> Archive:
        if bid not in self.archives:
            self.archives[bid] = Archive(seen_at=self.clock())
        return self.archives[bid]

    # --- what the Thawer sees ------------------------------------------------

    def requested(self, asked: Iterable[tuple[BackupId, int]], busy: Iterable[BackupId] = ()
                  ) -> None:
        """The fragments asked of the thaw now, and archives it is still
        working on; archives absent from both for ``every`` seconds are
        forgotten (a restore that ended or gave up)."""
        now = self.clock()
        for bid, n in asked:
            a = self._get(bid)
            a.wanted.add(n)
            a.seen_at = now
        for bid in busy:
            if bid in self.archives:
                self.archives[bid].seen_at = now
        for bid, a in list(self.archives.items()):
            if now - a.seen_at > self.every:
                del self.archives[bid]

    def restoring(self, bid: BackupId, n: int, storage_class: str, tier: str) -> None:
        """A restore of fragment n was requested (or found under way)."""
        a = self._get(bid)
        a.wanted.add(n)
        a.ready.discard(n)
        if a.requested_at is None:
            a.requested_at = self.clock()
        a.storage_class, a.tier = storage_class, tier

    def restored(self, bid: BackupId, n: int) -> None:
        """Fragment n is readable in the vault, or fetched."""
        a = self.archives.get(bid)
        if a is not None:
            a.wanted.add(n)
            a.ready.add(n)

    def wait(self, bid: BackupId, delta: int) -> None:
        """A task starts (+1) or stops (-1) waiting for the vault."""
        a = self._get(bid)
        a.waiting += delta
        a.waited = True

    # --- what is said ---------------------------------------------------------

    def lines(self) -> list[str]:
        """The lines due now (and note them said)."""
        now, out = self.clock(), []
        for bid, a in list(self.archives.items()):
            if a.requested_at is None or not a.waited:
                continue                # nothing asked of the vault, or no wait for it
            count = (len(a.ready & a.wanted), len(a.wanted))
            changed = count != a.said
            finished = count[0] == count[1]
            # once nothing waits (fragments arrive as fast as they are fetched:
            # byte progress says more), only the last count is worth a line
            if (changed and (finished or a.waiting and now - a.said_at >= self.every / 6)
                    or a.waiting and now - a.said_at >= self.every):
                out.append(message(bid, *count, a.requested_at, now, a.storage_class, a.tier))
                a.said, a.said_at = count, now
        return out

    def tick(self) -> None:
        for line in self.lines():
            self.log.info("%s", line)


class Waiting:
    """A restore waiting for another process's thaw (`cryophile thaw`, the
    mount): who holds it and how many of the fragments it reads have
    arrived (``waiting_message``), said when the count changes (at most
    every ``every / 6`` seconds) and at least every ``every`` seconds; the
    count is taken at most every ``every / 60`` seconds.  Silent if the plan
    thaws nothing."""

    def __init__(self, log: logging.Logger, bid: BackupId, plan, total: int,
                 every: float = EVERY_LOG, clock: Callable[[], float] = time.time,
                 holder: Callable[[], str] = lambda: "another process"):
        self.log, self.bid, self.total, self.every, self.clock = log, bid, total, every, clock
        self.holder = holder
        classes = [i.storage_class for i in plan.thaw + plan.restoring]
        self.storage_class = max(set(classes), key=classes.count) if classes else None
        self.tier = plan.tier
        self.since = clock()
        self.said: int | None = None
        self.said_at = self.counted_at = float("-inf")

    def line(self, here: Callable[[], int]) -> str | None:
        """The line due now, if any (and note it said); ``here()`` counts
        the fragments that have arrived."""
        now = self.clock()
        if self.storage_class is None or now - self.counted_at < self.every / 60:
            return None
        self.counted_at = now
        have = here()
        if have != self.said and now - self.said_at >= self.every / 6 \
                or now - self.said_at >= self.every:
            self.said, self.said_at = have, now
            return waiting_message(self.bid, self.holder(), have, self.total, self.since, now,
                                   self.storage_class, self.tier)
        return None

    def tick(self, here: Callable[[], int]) -> None:
        text = self.line(here)
        if text is not None:
            self.log.info("%s", text)
