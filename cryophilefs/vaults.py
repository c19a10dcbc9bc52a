"""What each vault holds, merged from the spool and the store, cached.

chunk.0 is immutable, so an archive's clear metadata and encrypted manifest
are read once per mount; a refresh only lists keys and reads the new marks
(several at once, from the spool's chunk.0 cache that ``cryophile ls``
shares when it has them, so a mount after an ``ls`` makes LIST requests only).
Each listing is told the keys the known archives hold (the first one: those
the chunk.0 cache names), so that its requests are placed as a warm
``cryophile ls`` places them: one LIST per 1,000 keys of an unchanged vault.
Listings are refreshed when a directory is read or a name is missing, at
most every ``REFRESH`` seconds per vault.  All I/O here is blocking and runs
in threads (``trio.to_thread.run_sync``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import time

import trio

from cryophile import catalog, errors, manifest, restorequeue
from cryophile.ids import BackupId, ulid_time
from cryophile.markcache import MarkCache
from cryophile.spool import Spool
from cryophile.store.base import State
from cryophile.store.local import LocalStore

log = logging.getLogger("cryophilefs")
REFRESH = 2.0


@dataclasses.dataclass
class Archive:
    bid: BackupId
    size: int
    clear: manifest.ClearInfo | None = None
    encrypted: bytes = b""            # the encrypted manifest, from chunk.0
    name: str | None = None
    manifest: dict | None = None      # decrypted on first open (needs the secret key)
    ready: trio.Event = dataclasses.field(default_factory=trio.Event)   # set once sealed
    readers: int = 0
    verified: dict = dataclasses.field(default_factory=dict)   # fragment -> stamp hashed
    heads: dict = dataclasses.field(default_factory=dict)      # fragment -> (HEAD, when)
    mark_size: int = 0                # chunk.0's bytes

    @property
    def stored(self) -> int:
        """Bytes the vault holds (or will, once frozen): fragments and chunk.0,
        as ``cryophile ls`` and ``prune`` count them."""
        return (self.clear.stored if self.clear else 0) + self.mark_size

    @property
    def mtime_ns(self) -> int:
        return int(ulid_time(self.bid.ulid).timestamp() * 1e9)

    @property
    def fragments(self) -> int:
        return len(self.clear.fragments) if self.clear else 0

    @classmethod
    def from_mark(cls, bid: BackupId, data: bytes) -> "Archive":
        clear, encrypted = manifest.read_clear(data)
        manifest.check_identity(clear, bid)
        archive = cls(bid, clear.size, clear, encrypted, mark_size=len(data))
        archive.ready.set()
        return archive


def read_mark(spool: Spool, store, bid: BackupId, cache: MarkCache | None = None,
              copy: bytes | None = None) -> bytes:
    """chunk.0's bytes: from the spool if it is still there, else ``copy``
    (the cache's, read already), else the listing cache that ``cryophile
    ls`` shares (markcache.py), else the vault (and then cached)."""
    for queue in ("freeze", "restore"):
        try:
            with open(spool.path(queue, bid, 0), "rb") as f:
                return f.read()
        except FileNotFoundError:
            pass
    if copy is not None:
        return copy
    return catalog.mark_bytes(spool, store, bid, cache or MarkCache(spool))


def local_fragment(store, bid: BackupId, n: int) -> str | None:
    """A local vault's own copy of a fragment (read in place: it is immutable)."""
    if isinstance(store, LocalStore):
        path = os.path.join(store.root, bid.fragment_key(n))
        if os.path.exists(path):
            return path
    return None


def object_keys(bid: BackupId, clear) -> list[str]:
    """The keys an archive's chunk.0 says the vault holds for it."""
    return [bid.fragment_key(n) for n in range(len(clear.fragments) + 1)]


def scan(spool: Spool, store, vault: str, known: set[str],
         expected: list[str] | None = None) -> tuple[dict[str, Archive], str | None]:
    """New archives of ``vault`` (spool first, then store); and a store error,
    if any.  ``expected``: the keys the vault is known to hold, which place
    the listing's requests (None: those of the chunk.0 cache)."""
    cache = MarkCache(spool)
    copies: dict[str, bytes] = {}       # the copies read_all read whole: not read again
    if expected is None:
        expected = [k for key, clear in cache.read_all(vault, "", copies).items()
                    for k in object_keys(_bid(vault, key), clear)]
    bids: dict[str, BackupId] = {}
    for bid in spool.archives("freeze"):
        if bid.vault == vault and os.path.exists(spool.path("freeze", bid, 0)):
            bids[bid.key] = bid
    problem = None
    try:
        for info in store.list("", expected=expected):
            m = catalog.MARK_RE.match(info.key)
            if m:
                bid = BackupId(vault, m.group(1) or "", m.group(2))
                bids.setdefault(bid.key, bid)
    except errors.Error as exc:
        problem = f"cannot list vault {vault} ({store.url}): {exc}"

    def one(bid: BackupId) -> Archive | errors.Error | None:
        try:
            return Archive.from_mark(bid, read_mark(spool, store, bid, cache,
                                                    copies.get(bid.key)))
        except errors.NotFoundError:
            return None       # frozen and gone from the spool between the looks
        except errors.Error as exc:
            return exc
    new = [bid for key, bid in bids.items() if key not in known]
    found = {}
    with concurrent.futures.ThreadPoolExecutor(catalog.FETCHERS, "cryophilefs-marks") as pool:
        for bid, got in zip(new, pool.map(one, new)):
            if isinstance(got, errors.Error):
                problem = f"skipping archive {bid}: {got}"
            elif got is not None:
                found[bid.key] = got
    return found, problem


def _bid(vault: str, key: str) -> BackupId:
    prefix, _, ulid = key.rpartition("/")
    return BackupId(vault, prefix, ulid)


def state(spool: Spool, store, archive: Archive) -> tuple[str, str | None]:
    """(state, storage class): writing, queued, freezing, frozen, thawing, thawed,
    local, stored; incomplete for a stream sealed although cut short."""
    bid = archive.bid
    if not archive.ready.is_set():
        return "writing", None
    where, sclass = _where(spool, store, archive)
    if not getattr(archive.clear, "complete", True):
        return "incomplete", sclass
    return where, sclass


def _where(spool: Spool, store, archive: Archive) -> tuple[str, str | None]:
    """Judged over every fragment: ``thawed`` once each is readable (in
    the restore queue, or readable in the vault), ``thawing`` while one is
    not and a thaw is asked for or under way, else ``frozen``.  The vault is
    asked fragment by fragment only until one that is not readable decides,
    and a readable answer is kept (``_head``): a stat costs at most one
    HEAD once each fragment was seen readable, none once all were."""
    bid = archive.bid
    n = archive.fragments
    if _failed(spool, store, bid):
        return "damaged", None          # thaw gave up on a fragment (until asked again)
    queued = spool.fragments("freeze", bid)
    if os.path.isdir(spool.dir("freeze", bid)) and queued:
        return ("queued" if len(queued) == n + 1 else "freezing"), None
    here = {k for k in spool.fragments("restore", bid) if k}
    sclass = None
    for k in range(1, n + 1):
        if k in here:
            continue
        try:
            info = _head(store, archive, k)
        except errors.NotFoundError:
            return "damaged", sclass
        sclass = sclass or info.storage_class
        if info.storage_class == LocalStore.storage_class:
            return "local", info.storage_class
        if info.storage_class not in catalog.ARCHIVED_CLASSES:
            return "stored", sclass         # readable without a thaw
        if info.state is State.AVAILABLE:   # readable now, whatever is still queued
            continue
        if info.state is State.RESTORING or _thaw_asked(spool, bid):
            return "thawing", sclass
        return "frozen", sclass
    return "thawed", sclass


READABLE_TTL = 600.0    # seconds a HEAD saying "readable" stands (a vault's restore lasts days)


def _head(store, archive: Archive, n: int):
    """HEAD of fragment n, or the archive's last one while it said the
    fragment is readable (other answers are asked again: they change when a
    thaw starts or ends)."""
    hit = archive.heads.get(n)
    now = time.monotonic()
    if hit is not None and now - hit[1] < READABLE_TTL:
        return hit[0]
    info = store.head(archive.bid.fragment_key(n))
    if info.state is State.AVAILABLE:
        archive.heads[n] = (info, now)
    else:
        archive.heads.pop(n, None)
    return info


def _failed(spool: Spool, store, bid: BackupId) -> bool:
    """Thaw gave up on a fragment, and the vault still holds what it saw
    then (a record the vault's object no longer matches is dropped)."""
    records = restorequeue.records(spool, bid)
    if not records:
        return False
    now = {}
    for n, (_exc, seen) in records.items():
        if seen:                        # else nothing to compare: the record holds
            try:
                now[n] = store.head(bid.fragment_key(n))
            except errors.NotFoundError:
                pass
            except errors.Error:
                return True             # the vault cannot say: the record holds
    return bool(restorequeue.drop_stale(spool, bid, now))


def _thaw_asked(spool: Spool, bid: BackupId) -> bool:
    """A thaw request waits in the spool: a download, or a warm one (restore
    only in the vault, as `cryophile restore` asks for the fragments beyond
    its window) that no thawer has sent yet."""
    return bool(restorequeue.requests(spool, bid) or restorequeue.requests(spool, bid, warm=True))


def local_count(spool: Spool, store, archive: Archive) -> int:
    """How many fragments can be read without a thaw."""
    bid = archive.bid
    return sum(1 for n in range(1, archive.fragments + 1)
               if os.path.exists(spool.path("restore", bid, n))
               or os.path.exists(spool.path("freeze", bid, n))
               or local_fragment(store, bid, n))


class Listings:
    """Refreshes the archive side of the tree from the spool and the stores."""

    def __init__(self, spool: Spool, stores, on_found):
        self.spool, self.stores = spool, stores
        self.on_found = on_found            # (vault, {key: Archive}) -> None
        self.known: dict[str, set[str]] = {}
        self.keys: dict[str, dict[str, list[str]]] = {}   # vault -> archive -> its object keys
        self.when: dict[str, float] = {}
        self.locks: dict[str, trio.Lock] = {}
        self.problems: dict[str, str] = {}

    def add(self, archive: Archive) -> None:
        self.known.setdefault(archive.bid.vault, set()).add(archive.bid.key)
        if archive.clear is not None:
            self.keys.setdefault(archive.bid.vault, {})[archive.bid.key] = object_keys(
                archive.bid, archive.clear)

    def forget(self, bid: BackupId) -> None:
        """An archive deleted through the mount."""
        self.known.get(bid.vault, set()).discard(bid.key)
        self.keys.get(bid.vault, {}).pop(bid.key, None)

    async def refresh(self, vault: str, force: bool = False) -> None:
        lock = self.locks.setdefault(vault, trio.Lock())
        started = time.monotonic()
        async with lock:                    # concurrent lookups share one refresh
            if not force and self.when.get(vault, -REFRESH) > started - REFRESH:
                return
            known = set(self.known.get(vault, ()))
            store = self.stores(vault)
            expected = None                 # the first listing: the chunk.0 cache's keys
            if vault in self.when:
                expected = [k for keys in self.keys.get(vault, {}).values() for k in keys]
            found, problem = await trio.to_thread.run_sync(
                scan, self.spool, store, vault, known, expected)
            self.when[vault] = time.monotonic()
            self._report(vault, problem)
            for archive in found.values():
                self.add(archive)
            self.on_found(vault, found)

    def _report(self, vault: str, problem: str | None) -> None:
        """A failing store is logged once, not at every refresh."""
        if problem and self.problems.get(vault) != problem:
            log.warning("%s", problem)
        if problem:
            self.problems[vault] = problem
        else:
            self.problems.pop(vault, None)
