"""The thaw ledger and budget: what restores were asked for, per UTC day and
month, and whether one more thaw fits ``thaw_budget_daily`` (stored bytes)
and ``thaw_budget_monthly`` (money, in the price table's currency).

The ledger is SPOOL/thaw/.ledger.json, read and rewritten under an flock on
SPOOL/thaw/.ledger.lock, so that restores, the thaw service and mounts
running at once charge one ledger and never both pass a budget that only
one fits.  It survives restarts.  Each charged fragment key is remembered
until its restored copy would have expired (``days`` + 1), so asking again
for a fragment already charged (a second restore of the same archive, the
service serving what a restore reserved) costs the budget nothing.

``reserve`` checks a whole plan and charges it in one step (refusing it, or
letting it through when approved); ``charge`` records one request the thaw
is about to send, never refusing (the plan was checked).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import logging
import os

from . import errors
from .fsutil import replace_file
from .ids import human
from .plan import Item, Plan
from .spool import Spool, makedirs

log = logging.getLogger("cryophile.ledger")

KEEP_DAYS = 40          # day entries kept (the month's total is kept apart)
KEEP_MONTHS = 13
ALL = "*"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@dataclasses.dataclass
class Limits:
    daily: int | None = None        # stored bytes per UTC day
    monthly: float | None = None    # money per UTC month

    @property
    def any(self) -> bool:
        return self.daily is not None or self.monthly is not None


class Ledger:
    def __init__(self, spool: Spool):
        self.dir = spool.queue("thaw")
        self.path = os.path.join(self.dir, ".ledger.json")
        self.lock_path = os.path.join(self.dir, ".ledger.lock")

    @contextlib.contextmanager
    def locked(self):
        """The ledger's content, read under the lock; written back on success."""
        makedirs(self.dir)
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise errors.from_oserror(exc, f"cannot open {self.lock_path}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = self._read()
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before:
                self._write(data)
        finally:
            os.close(fd)

    def snapshot(self) -> dict:
        with self.locked() as data:
            return json.loads(json.dumps(data))

    def _read(self) -> dict:
        try:
            with open(self.path) as f:
                data = json.load(f)
            if isinstance(data, dict) and data.get("version") == 1:
                return data
            log.warning("thaw ledger %s is not one this version knows; starting afresh",
                        self.path)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("thaw ledger %s is unreadable (%s); starting afresh", self.path, exc)
        return {"version": 1, "days": {}, "months": {}, "keys": {}}

    def _write(self, data: dict) -> None:
        try:
            replace_file(self.path, json.dumps(data, sort_keys=True).encode())
        except OSError as exc:
            raise errors.from_oserror(exc, f"cannot write {self.path}") from None


def _day(now: datetime.datetime) -> str:
    return now.strftime("%Y-%m-%d")


def _month(now: datetime.datetime) -> str:
    return now.strftime("%Y-%m")


def _prune(data: dict, now: datetime.datetime) -> None:
    oldest_day = _day(now - datetime.timedelta(days=KEEP_DAYS))
    for day in [d for d in data["days"] if d < oldest_day]:
        del data["days"][day]
    months = sorted(data["months"])
    for month in months[:-KEEP_MONTHS]:
        del data["months"][month]
    stamp = now.isoformat()
    for key in [k for k, until in data["keys"].items() if until < stamp]:
        del data["keys"][key]


def spent(data: dict, vault: str, now: datetime.datetime) -> tuple[int, float]:
    """(stored bytes today, money this month) for a vault, or ALL."""
    day = data["days"].get(_day(now), {}).get(vault, {})
    month = data["months"].get(_month(now), {}).get(vault, {})
    return int(day.get("bytes", 0)), float(month.get("cost", 0.0))


def _add(data: dict, vault: str, nbytes: int, cost: float, now: datetime.datetime) -> None:
    for table, when in (("days", _day(now)), ("months", _month(now))):
        for who in (ALL, vault):
            entry = data[table].setdefault(when, {}).setdefault(who, {"bytes": 0, "cost": 0.0})
            entry["bytes"] += nbytes
            entry["cost"] = round(entry["cost"] + cost, 9)


class Budget:
    """The configured budgets and the ledger they are kept against."""

    def __init__(self, spool: Spool, cfg, *, approve_hint: str = "--approve"):
        self.ledger = Ledger(spool)
        self.cfg = cfg
        self.approve_hint = approve_hint

    def limits(self, vault: str) -> Limits:
        if vault == ALL:
            return Limits(self.cfg.thaw_budget_daily, self.cfg.thaw_budget_monthly)
        v = self.cfg.vault(vault)
        return Limits(v.thaw_budget_daily, v.thaw_budget_monthly)

    def reserve(self, plan: Plan, *, approved: bool = False,
                now: datetime.datetime | None = None) -> None:
        """Charge every fragment ``plan`` will request, or raise BudgetError
        (charging nothing) if that would pass a budget and is not approved."""
        now = now or _now()
        with self.ledger.locked() as data:
            _prune(data, now)
            new = [i for i in plan.thaw if _charged(data, i) is None]
            if not approved:
                over = self._over(data, plan, new, now)
                if over:
                    raise errors.BudgetError(
                        f"thaw of {_what(plan)} refused: {plan.summary()}; it would pass "
                        f"{over}; approve it with {self.approve_hint}")
            for item in new:
                self._charge(data, item, plan.item_cost(item), plan.days, now)
        if new:
            log.debug("ledger: reserved %d fragment(s), %d bytes", len(new),
                      sum(i.size for i in new))

    def charge(self, item: Item, cost: float, days: int,
               now: datetime.datetime | None = None) -> None:
        """Record one restore request about to be sent (once per fragment
        while its restored copy lasts)."""
        now = now or _now()
        with self.ledger.locked() as data:
            _prune(data, now)
            if _charged(data, item) is None:
                self._charge(data, item, cost, days, now)

    def _charge(self, data: dict, item: Item, cost: float, days: int,
                now: datetime.datetime) -> None:
        _add(data, item.bid.vault, item.size, cost, now)
        until = now + datetime.timedelta(days=max(days, 1) + 1)
        data["keys"][_key(item)] = until.isoformat()

    def _over(self, data: dict, plan: Plan, new: list[Item],
              now: datetime.datetime) -> str | None:
        """Which budget the new charges would pass, or None."""
        by_vault: dict[str, tuple[int, float]] = {}
        for item in new:
            b, c = by_vault.get(item.bid.vault, (0, 0.0))
            by_vault[item.bid.vault] = (b + item.size, c + plan.item_cost(item))
        total = (sum(b for b, _ in by_vault.values()), sum(c for _, c in by_vault.values()))
        currency = plan.prices.currency
        for who, (nbytes, cost) in [(ALL, total), *by_vault.items()]:
            limits = self.limits(who)
            day_bytes, month_cost = spent(data, who, now)
            where = "" if who == ALL else f" of vault {who}"
            if limits.daily is not None and nbytes and day_bytes + nbytes > limits.daily:
                return (f"thaw_budget_daily{where} ({human(limits.daily)} a day; "
                        f"{human(day_bytes)} thawed today)")
            if limits.monthly is not None and cost and month_cost + cost > limits.monthly:
                return (f"thaw_budget_monthly{where} ({limits.monthly:.2f} {currency} a month; "
                        f"{month_cost:.2f} {currency} spent this month)")
            if limits.daily == 0 and nbytes:
                return f"thaw_budget_daily{where} (0: every thaw needs approval)"
        return None

    def report(self, now: datetime.datetime | None = None) -> dict:
        """Today's bytes and this month's money, with their limits (status)."""
        now = now or _now()
        data = self.ledger.snapshot()
        out = {}
        vaults = {v for day in data["days"].values() for v in day} | {ALL}
        for who in sorted(vaults):
            day_bytes, month_cost = spent(data, who, now)
            limits = self.limits(who)
            out[who] = {"day": _day(now), "bytes_today": day_bytes,
                        "daily_limit": limits.daily, "month": _month(now),
                        "cost_this_month": round(month_cost, 6),
                        "monthly_limit": limits.monthly}
        return out


def _key(item: Item) -> str:
    return f"{item.bid.vault}/{item.key}"


def _charged(data: dict, item: Item) -> str | None:
    return data["keys"].get(_key(item))


def _what(plan: Plan) -> str:
    if len(plan.archives) == 1:
        return str(plan.archives[0])
    return f"{len(plan.archives)} archives"


class Guard:
    """``reserve``: a restore's or the mount's whole thaw, planned and charged
    before anything is requested; ``request``: what a Thawer calls before each
    RestoreObject.  Both raise BudgetError when over budget and not approved.
    Blocking: call from a thread."""

    def __init__(self, spool: Spool, cfg, *, approved: bool = False,
                 approve_hint: str = "--approve"):
        self.spool, self.cfg, self.approved = spool, cfg, approved
        self.budget = Budget(spool, cfg, approve_hint=approve_hint)

    def plan(self, store, clear, fragments, tier: str, days: int) -> Plan:
        from .plan import add_archive
        return add_archive(Plan(tier, days, self.cfg.prices), self.spool, store, clear,
                           fragments)

    def reserve(self, store, clear, fragments, tier: str, days: int) -> Plan:
        """Plan the thaw of ``fragments`` and charge it whole, or BudgetError."""
        fragments = [n for n in fragments if 1 <= n <= len(clear.fragments)]
        plan = self.plan(store, clear, fragments, tier, days)
        self.budget.reserve(plan, approved=self.approved)
        return plan

    def request(self, bid, n: int, info, tier: str, days: int) -> None:
        """One RestoreObject about to be sent: free if charged already (by a
        restore's or the mount's plan), else charged, or refused over budget."""
        plan = Plan(tier, days, self.cfg.prices)
        plan.archives.append(bid)
        plan.thaw.append(Item(bid, n, info.size, info.storage_class))
        self.budget.reserve(plan, approved=self.approved)


def charged_archives(spool: Spool, vault: str, now: datetime.datetime | None = None) -> set[str]:
    """Archive keys (PREFIX/ULID) of VAULT with a restore charged whose
    restored copy may not have expired yet: what ``ls`` shows as thawing on
    stores that do not report restore status.  Read without the lock (the
    ledger is replaced by rename, never written in place)."""
    try:
        with open(Ledger(spool).path) as f:
            data = json.load(f)
        keys = data["keys"] if isinstance(data, dict) and data.get("version") == 1 else {}
    except (OSError, ValueError, KeyError):
        return set()
    stamp = (now or _now()).isoformat()
    start = vault + "/"
    return {key[len(start):].rpartition("/")[0] for key, until in keys.items()
            if key.startswith(start) and isinstance(until, str) and until >= stamp}
