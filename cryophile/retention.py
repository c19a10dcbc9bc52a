"""Which archives a retention policy keeps: pure functions, no I/O.

The rules are restic's ``forget`` rules, applied to each prefix on its own,
newest archive first (times are the ULIDs' times, in UTC):

- ``last N``: the N newest archives;
- ``hourly/daily/weekly/monthly/yearly N``: the newest archive of each of the
  N newest hours/days/ISO weeks/months/years that have archives;
- ``within D``: every archive made within D (``1y2m3d4h``) before the newest
  archive of the prefix.

An archive any rule keeps is kept.  Then two things hold archives that the
rules would delete:

- a chain of incrementals: every archive that a surviving archive needs to
  be received (its parent, the parent's parent, …) is held ("base of …");
- a minimum storage duration: an object younger than its storage class's
  minimum (GLACIER_IR and GLACIER 90 days, DEEP_ARCHIVE 180, STANDARD_IA and
  ONEZONE_IA 30, from the price table in prices.py) is charged as if
  stored that long when deleted early, so such an archive is held unless
  early deletion is allowed; the charge is shown either way.

Archives sealed ``incomplete`` (a stream the mount sealed although it was
cut short) are no backups to count either: no rule keeps them, so they never
take the place of a whole one, and they are deleted unless something holds
them.
Archives still in the spool's freeze queue (``queued``) are no backups yet
in the vault: no rule counts them, and they are always kept (with their
bases); so are backups still being written (``writing``), whose parent is
held as "parent of a backup in progress".  Archives of the vault outside
the planned prefix (``others``) are not planned but stay, so they hold
their bases in it too (an incremental stored under another prefix than its
base).  Deleting the result's ``delete`` set from the input and planning
again deletes nothing more.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from typing import Callable, Iterable

from .prices import GB, PriceTable

_DEFAULT_PRICES = PriceTable()      # minimum storage days and storage prices by class
DAYS_PER_MONTH = 30          # as AWS pro-rates early deletion

KEEP, DELETE, HELD = "keep", "delete", "held"
BUCKETS = ("hourly", "daily", "weekly", "monthly", "yearly")
DURATION_RE = re.compile(r"^(?:(\d+)y)?(?:(\d+)m)?(?:(\d+)d)?(?:(\d+)h)?$")


@dataclasses.dataclass(frozen=True)
class Duration:
    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    @classmethod
    def parse(cls, text: str) -> "Duration":
        m = DURATION_RE.match(text.strip())
        if not m or not any(m.groups()):
            raise ValueError(f"{text!r} is not a duration like 1y2m3d4h (years, months, "
                             "days, hours)")
        return cls(*(int(g or 0) for g in m.groups()))

    def before(self, t: datetime.datetime) -> datetime.datetime:
        months = t.year * 12 + (t.month - 1) - self.years * 12 - self.months
        year, month = divmod(months, 12)
        day = min(t.day, _days_in_month(year, month + 1))
        return (t.replace(year=year, month=month + 1, day=day)
                - datetime.timedelta(days=self.days, hours=self.hours))

    def __str__(self) -> str:
        return "".join(f"{v}{u}" for v, u in zip(dataclasses.astuple(self), "ymdh") if v) or "0h"


def _days_in_month(year: int, month: int) -> int:
    nxt = datetime.date(year + month // 12, month % 12 + 1, 1)
    return (nxt - datetime.timedelta(days=1)).day


@dataclasses.dataclass(frozen=True)
class Policy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Duration | None = None

    @property
    def empty(self) -> bool:
        return not (self.last or any(getattr(self, b) for b in BUCKETS) or self.within)


@dataclasses.dataclass(frozen=True)
class Stored:
    """One object of an archive in the vault."""

    storage_class: str
    size: int
    modified: datetime.datetime


@dataclasses.dataclass
class Item:
    """An archive as a retention plan sees it."""

    ulid: str
    prefix: str
    time: datetime.datetime
    objects: tuple[Stored, ...] = ()
    queued: bool = False             # in the spool's freeze queue, not (all) in the vault
    writing: bool = False            # a backup still being written (with queued)
    label: str = ""                  # how to name it in messages (default: the ULID)
    pending: int = 0                 # queued: bytes it will hold in the vault once frozen
    incomplete: bool = False         # sealed incomplete: counts for no rule

    @property
    def size(self) -> int:
        """Stored bytes (every object, chunk.0 included, as ``ls`` counts them)."""
        return sum(o.size for o in self.objects) or self.pending


@dataclasses.dataclass
class Decision:
    item: Item
    action: str = DELETE             # keep | delete | held
    reasons: list[str] = dataclasses.field(default_factory=list)
    charge: float = 0.0              # what deleting it now costs in early-deletion fees
    early: str = ""                  # why the charge, e.g. "GLACIER: 63 of 90 days left"


@dataclasses.dataclass(frozen=True)
class Prices:
    """What early deletion looks at (by default the shipped price table)."""

    min_days: Callable[[str], int] = _DEFAULT_PRICES.min_storage_days
    per_gb_month: Callable[[str], float] = _DEFAULT_PRICES.storage_per_gb_month
    currency: str = _DEFAULT_PRICES.currency

    @classmethod
    def from_table(cls, table: PriceTable) -> "Prices":
        return cls(table.min_storage_days, table.storage_per_gb_month, table.currency)


def plan(items: Iterable[Item], policy: Policy, now: datetime.datetime,
         parent_of: Callable[[Item], str | list[str] | None], prices: Prices = Prices(),
         allow_early_delete: bool = False, others: Iterable[Item] = ()) -> list[Decision]:
    """A decision for every item, newest first within each prefix.
    ``parent_of(item)`` names the archive ``item``'s chain needs next by its
    key (``item_key``: PREFIX/ULID), or a list of keys when it may be any of
    them (all are held), or None for a full backup or an unknown parent; ``others``
    stay whatever the policy says and only hold their bases."""
    if policy.empty:
        raise ValueError("a retention policy needs at least one keep rule")
    items = list(items)
    decisions = {id(i): Decision(i) for i in items}
    for group in _by_prefix(i for i in items if not i.queued and not i.incomplete).values():
        for item, reasons in zip(group, _rules(group, policy)):
            if reasons:
                decisions[id(item)].action = KEEP
                decisions[id(item)].reasons = reasons
    for item in items:
        if item.incomplete and not item.queued:
            decisions[id(item)].reasons = ["incomplete"]
    for item in items:
        if item.queued:
            decisions[id(item)].action = KEEP
            decisions[id(item)].reasons = ["being written" if item.writing
                                           else "not yet frozen"]
    for d in decisions.values():
        d.charge, d.early = early_charge(d.item, now, prices)
        if d.action == DELETE and d.early and not allow_early_delete:
            d.action = HELD
            d.reasons = d.reasons + [f"too young to delete without a charge ({d.early})"]
    outside = [o for o in others if id(o) not in decisions]
    for o in outside:
        decisions[id(o)] = Decision(o, KEEP)
    _hold_bases(items + outside, decisions, parent_of)
    order = sorted(items, key=lambda i: (i.prefix, _newest_first(i)))
    return [decisions[id(i)] for i in order]


def _newest_first(item: Item) -> tuple:
    return (-item.time.timestamp(), _desc(item.ulid))


def _desc(text: str) -> tuple:
    return tuple(-ord(c) for c in text)


def _by_prefix(items: Iterable[Item]) -> dict[str, list[Item]]:
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(item.prefix, []).append(item)
    for group in groups.values():
        group.sort(key=_newest_first)
    return groups


def _bucket(kind: str, t: datetime.datetime) -> tuple:
    if kind == "hourly":
        return (t.year, t.month, t.day, t.hour)
    if kind == "daily":
        return (t.year, t.month, t.day)
    if kind == "weekly":
        return tuple(t.isocalendar()[:2])
    if kind == "monthly":
        return (t.year, t.month)
    return (t.year,)


def _rules(group: list[Item], policy: Policy) -> list[list[str]]:
    """restic forget over one prefix's items, newest first: the reasons each is kept."""
    left = {b: getattr(policy, b) for b in BUCKETS}
    last_seen: dict[str, tuple | None] = {b: None for b in BUCKETS}
    since = policy.within.before(group[0].time) if policy.within and group else None
    out = []
    for nr, item in enumerate(group):
        reasons = []
        if nr < policy.last:
            reasons.append("last")
        for b in BUCKETS:
            value = _bucket(b, item.time)
            if left[b] > 0 and value != last_seen[b]:
                last_seen[b] = value
                left[b] -= 1
                reasons.append(b)
        if since is not None and item.time >= since:
            reasons.append(f"within {policy.within}")
        out.append(reasons)
    return out


def _hold_bases(items: list[Item], decisions: dict[int, Decision],
                parent_of: Callable[[Item], str | list[str] | None]) -> None:
    """Every archive on the chain of one that stays is held.  ``parent_of``
    names an item's parent by key (PREFIX/ULID, or the ULID alone without a
    prefix), or a list of keys when it may be any of them: all are held."""
    by_key: dict[str, Item] = {}
    for i in items:              # the same archive twice: the planned one is held (safe side)
        by_key.setdefault(item_key(i), i)
    stays = sorted((i for i in items if decisions[id(i)].action != DELETE),
                   key=lambda i: (i.prefix, _newest_first(i)))
    for start in stays:
        seen = {item_key(start)}
        todo = [start]
        while todo:
            child = todo.pop()
            ups = parent_of(child)
            for up in [ups] if isinstance(ups, str) else ups or ():
                if up not in by_key or up in seen:
                    continue
                seen.add(up)
                parent = by_key[up]
                d = decisions[id(parent)]
                if d.action == DELETE:
                    d.action = HELD
                    d.reasons = []
                if d.action == HELD:
                    reason = (f"parent of a backup in progress ({child.label or child.ulid})"
                              if child.writing else f"base of {child.label or child.ulid}")
                    if reason not in d.reasons:
                        d.reasons.append(reason)
                todo.append(parent)


def item_key(item: Item) -> str:
    """An item's archive key in its vault: PREFIX/ULID, or the ULID alone."""
    return f"{item.prefix}/{item.ulid}" if item.prefix else item.ulid


def money(amount: float) -> str:
    return f"{amount:.2f}" if amount >= 0.01 or amount == 0 else f"{amount:.2g}"


def early_charge(item: Item, now: datetime.datetime, prices: Prices) -> tuple[float, str]:
    """What deleting ``item`` now costs in early-deletion fees (pro-rated:
    the days left of each object's minimum × its size × its class's price),
    and a short why."""
    total, worst = 0.0, ""
    worst_left = 0.0
    for obj in item.objects:
        minimum = prices.min_days(obj.storage_class)
        age = (now - obj.modified).total_seconds() / 86400
        left = minimum - age
        if minimum and left > 0:
            total += left / DAYS_PER_MONTH * obj.size / GB * prices.per_gb_month(obj.storage_class)
            if left > worst_left:
                worst_left = left
                worst = (f"{obj.storage_class}: stored {max(age, 0):.0f} of its minimum "
                         f"{minimum} days")
    if worst:
        worst += f", early deletion charge {money(total)} {prices.currency}"
    return total, worst
