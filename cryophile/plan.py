"""Thaw plans: what a thaw will request, how long it takes and what it costs,
worked out before anything is requested.

A plan looks at each fragment a thaw would need: one already in the spool
(restore or freeze queue) or readable in the vault (restored, or in a class
that needs no restore) needs no request; one being restored needs no new
request; one in an archived class is to thaw: one RestoreObject, its stored
bytes, retrieval by GB and per 1,000 requests from the price table.  Only
HEAD requests are made here.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re

from . import errors, ids, manifest
from .ids import BackupId, human
from .prices import GB, PriceTable
from .spool import Spool
from .store.base import State

MARK_RE = re.compile(r"^(?:(.+)/)?([0-9A-HJKMNP-TV-Z]{26})/chunk\.0$")

# Typical time until a restored copy is readable, by class and tier (AWS's figures).
WAIT = {
    ("GLACIER", "Expedited"): ("1–5 min", 5 * 60),
    ("GLACIER", "Standard"): ("3–5 h", 5 * 3600),
    ("GLACIER", "Bulk"): ("5–12 h", 12 * 3600),
    ("DEEP_ARCHIVE", "Standard"): ("up to 12 h", 12 * 3600),
    ("DEEP_ARCHIVE", "Bulk"): ("up to 48 h", 48 * 3600),
}


def effective_tier(storage_class: str, tier: str) -> str:
    """Deep Archive has no Expedited tier: the store asks for Standard instead."""
    if storage_class == "DEEP_ARCHIVE" and tier == "Expedited":
        return "Standard"
    return tier


def typical_wait(storage_class: str, tier: str) -> tuple[str, int]:
    """('3–5 h', seconds at most) for a restore; ('none', 0) if no restore is needed."""
    return WAIT.get((storage_class, effective_tier(storage_class, tier)), ("none", 0))


@dataclasses.dataclass(frozen=True)
class Item:
    """One fragment of an archive and what it needs."""

    bid: BackupId
    n: int
    size: int                   # stored bytes
    storage_class: str

    @property
    def key(self) -> str:
        return self.bid.fragment_key(self.n)


@dataclasses.dataclass
class Plan:
    tier: str
    days: int
    prices: PriceTable
    archives: list[BackupId] = dataclasses.field(default_factory=list)
    thaw: list[Item] = dataclasses.field(default_factory=list)        # to request
    restoring: list[Item] = dataclasses.field(default_factory=list)   # requested already
    readable: list[Item] = dataclasses.field(default_factory=list)    # download only
    local: int = 0                                                    # in the spool

    @property
    def fragments(self) -> int:
        return len(self.thaw)

    @property
    def requests(self) -> int:
        return len(self.thaw)

    @property
    def stored_bytes(self) -> int:
        return sum(i.size for i in self.thaw)

    @property
    def download_bytes(self) -> int:
        return sum(i.size for i in self.thaw + self.restoring + self.readable
                   if i.storage_class != "LOCAL")      # a local vault: no transfer

    def item_cost(self, item: Item) -> float:
        return self.prices.thaw_cost(item.storage_class,
                                     effective_tier(item.storage_class, self.tier), item.size, 1)

    @property
    def cost(self) -> float:
        """Retrieval and restore requests: what the thaw itself costs."""
        total = 0.0
        for cls, (count, size) in self.by_class().items():
            total += self.prices.thaw_cost(cls, effective_tier(cls, self.tier), size, count)
        for item in self.readable:     # retrieval fees of IA and Instant Retrieval
            total += self.prices.thaw_cost(item.storage_class, self.tier, item.size, 0)
        return total

    @property
    def transfer_out(self) -> float:
        return self.download_bytes / GB * self.prices.transfer_out_per_gb

    def by_class(self) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for item in self.thaw:
            count, size = out.get(item.storage_class, (0, 0))
            out[item.storage_class] = (count + 1, size + item.size)
        return out

    @property
    def wait(self) -> tuple[str, int]:
        """The longest typical wait among the classes to thaw or being thawed."""
        waits = [typical_wait(i.storage_class, self.tier) for i in self.thaw + self.restoring]
        return max(waits, key=lambda w: w[1], default=("none", 0))

    @property
    def tiers(self) -> str:
        used = sorted({effective_tier(i.storage_class, self.tier) for i in self.thaw})
        return ", ".join(used) or self.tier

    def money(self, amount: float) -> str:
        return f"{amount:.4f} {self.prices.currency}" if amount < 0.01 and amount \
            else f"{amount:.2f} {self.prices.currency}"

    def summary(self) -> str:
        """One line, for messages and logs."""
        return (f"{self.fragments} fragment(s), {human(self.stored_bytes)} stored, "
                f"{self.requests} restore request(s), {self.tiers} tier, {self.days} day(s), "
                f"typically {self.wait[0]}, {self.money(self.cost)}")

    def to_json(self) -> dict:
        return {
            "archives": [str(b) for b in self.archives],
            "fragments": self.fragments, "stored_bytes": self.stored_bytes,
            "requests": self.requests, "tier": self.tier, "days": self.days,
            "restoring": len(self.restoring), "readable": len(self.readable) + self.local,
            "by_class": {cls: {"fragments": c, "stored_bytes": s,
                               "tier": effective_tier(cls, self.tier),
                               "wait": typical_wait(cls, self.tier)[0]}
                         for cls, (c, s) in self.by_class().items()},
            "wait": self.wait[0], "wait_seconds_max": self.wait[1],
            "currency": self.prices.currency, "cost": round(self.cost, 9),
            "transfer_out": round(self.transfer_out, 9),
            "total": round(self.cost + self.transfer_out, 9),
            "prices": self.prices.as_dict(),
        }

    def table(self) -> str:
        rows = [("archives", str(len(self.archives))),
                ("fragments to thaw", str(self.fragments)),
                ("stored bytes to thaw", f"{self.stored_bytes} ({human(self.stored_bytes)})"),
                ("restore requests", str(self.requests)),
                ("already restoring", str(len(self.restoring))),
                ("readable now", str(len(self.readable) + self.local)),
                ("tier", self.tiers), ("days", str(self.days))]
        for cls, (count, size) in sorted(self.by_class().items()):
            rows.append((f"  {cls}", f"{count} fragment(s), {human(size)}, "
                         f"typically {typical_wait(cls, self.tier)[0]}"))
        rows += [("expected wait", self.wait[0]),
                 ("cost (retrieval + requests)", self.money(self.cost)),
                 ("transfer out", self.money(self.transfer_out)),
                 ("total", self.money(self.cost + self.transfer_out))]
        width = max(len(k) for k, _ in rows)
        source = self.prices.as_dict()["source"] or "the configuration's [prices]"
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows) + \
            f"\nprices: {source}, as of {self.prices.as_dict()['as_of']}; check them\n"


# --- building plans (blocking: run in a thread from trio) -----------------

def in_spool(spool: Spool, bid: BackupId, n: int) -> bool:
    return any(os.path.exists(spool.path(q, bid, n)) for q in ("restore", "freeze"))


def add_archive(plan: Plan, spool: Spool, store, clear: manifest.ClearInfo,
                fragments: list[int] | None = None) -> Plan:
    """Add one archive's fragments (all, or those numbered) to ``plan``."""
    bid = clear.bid
    plan.archives.append(bid)
    numbers = range(1, len(clear.fragments) + 1) if fragments is None else fragments
    for n in numbers:
        if in_spool(spool, bid, n):
            plan.local += 1
            continue
        try:
            info = store.head(bid.fragment_key(n))
        except errors.NotFoundError:
            missing = errors.MissingFragmentError(
                f"fragment chunk.{n} of {bid} is missing from {store.url}")
            missing.fragment = n        # facts for the thaw queue's failure records:
            missing.seen = {"absent": True}     # what the vault held (restorequeue.look)
            raise missing from None
        item = Item(bid, n, info.size, info.storage_class)
        {State.ARCHIVED: plan.thaw, State.RESTORING: plan.restoring,
         State.AVAILABLE: plan.readable}[info.state].append(item)
    return plan


def read_clear(spool: Spool, store, bid: BackupId) -> manifest.ClearInfo:
    """An archive's clear metadata, from the spool if it has chunk.0, else the vault."""
    for q in ("restore", "freeze"):
        path = spool.path(q, bid, 0)
        if os.path.exists(path):
            return manifest.load(path)[0]
    buf = io.BytesIO()
    store.get(bid.fragment_key(0), buf)
    clear = manifest.read_clear(buf.getvalue())[0]
    manifest.check_identity(clear, bid)
    return clear


def find(store, vault: str, prefix: str) -> list[BackupId]:
    """Every archive in the vault under ``prefix``."""
    found = []
    for info in store.list(prefix + "/" if prefix else ""):
        m = MARK_RE.match(info.key)
        if m:
            found.append(BackupId(vault, m.group(1) or "", m.group(2)))
    return sorted(found, key=lambda b: (b.prefix, b.ulid))


def parse_target(text: str, vault_uuid) -> tuple[str, str, str | None]:
    """VAULT[/PREFIX][/ULID] → (vault uuid, prefix, ulid or None); the vault
    may be an alias (``vault_uuid`` resolves it)."""
    vault, _, rest = text.strip("/").partition("/")
    parts = [p for p in rest.split("/") if p] if rest else []
    ulid = None
    if parts and ids.ULID_RE.match(parts[-1]):
        ulid = ids.parse_ulid(parts.pop())
    return vault_uuid(vault), ids.parse_prefix("/".join(parts) or None), ulid
