"""What archives exist: the spool's queues and the vault's objects, merged.

A vault is read with one listing (LIST requests only) plus the chunk.0s
not yet in the spool's cache (markcache.py), fetched in parallel."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import logging
import os
import re

from . import errors, ledger, manifest, restorequeue
from .ids import BackupId, ulid_time
from .markcache import MarkCache
from .spool import ABANDONED, BackupLock, Spool
from .store.base import ObjectInfo, State
from .streams import snapshot_name

ARCHIVED_CLASSES = ("GLACIER", "DEEP_ARCHIVE")

log = logging.getLogger("cryophile.catalog")
MARK_RE = re.compile(r"^(?:(.+)/)?([0-9A-HJKMNP-TV-Z]{26})/chunk\.0$")


@dataclasses.dataclass
class Entry:
    bid: BackupId
    created: str
    size: int | None
    fragments: int | None
    state: str
    name: str | None = None
    storage_class: str | None = None
    kind: str = "unknown"         # zfs, btrfs, tar, unknown
    stored: int | None = None     # bytes the vault holds (will hold): fragments and chunk.0
    stream: dict | None = None    # chunk.0's clear stream identity (chains.py)
    parent: str | None = None     # ULID given with backup --parent
    snapshot: str | None = None   # zfs/btrfs snapshot name (with the secret key)
    objects: dict | None = dataclasses.field(default=None, repr=False)  # n -> listed ObjectInfo


def spool_vaults(spool: Spool) -> set[str]:
    found = set()
    for q in ("backup", "freeze", "restore"):
        top = spool.queue(q)
        if os.path.isdir(top):
            found.update(d for d in os.listdir(top) if os.path.isdir(os.path.join(top, d)))
    return found


def _created(ulid: str) -> str:
    return ulid_time(ulid).strftime("%Y-%m-%dT%H:%M:%SZ")


def unsealed_state(spool: Spool, bid: BackupId) -> str:
    """An archive without chunk.0 in the spool: ``writing`` while its backup
    holds the lock, ``dead`` once that process is gone (the next backup or
    freeze removes it), ``abandoned`` once dropped (freeze then deletes what
    the vault has of it)."""
    if os.path.exists(os.path.join(spool.dir("freeze", bid), ABANDONED)):
        return "abandoned"
    lock = BackupLock(spool, bid)
    if not os.path.exists(lock.path):
        return "dead"
    free = lock.try_acquire()
    lock.release()
    return "dead" if free else "writing"


def _sealed(clear, state: str) -> str:
    return state if clear.complete else "incomplete"


def spool_entries(spool: Spool, vault: str, prefix: str,
                  problems: list | None = None) -> dict[str, Entry]:
    entries = {}
    for queue in ("freeze", "backup"):
        unreadable = None if problems is None else []
        for bid in spool.archives(queue, unreadable):
            if bid.vault != vault or not _under(bid.prefix, prefix) or bid.key in entries:
                continue
            mark = spool.path("freeze", bid, 0)
            unsealed = None if os.path.exists(mark) else unsealed_state(spool, bid)
            if unsealed != "writing" and os.path.exists(mark):     # (sealed meanwhile?)
                try:
                    clear, stored = manifest.load_sized(mark)
                except FileNotFoundError:
                    continue                    # frozen and gone meanwhile: the vault has it
                except errors.Error as exc:
                    _skip(bid, exc, problems)
                    continue
                partly = len(spool.fragments("freeze", bid)) < len(clear.fragments) + 1
                entries[bid.key] = Entry(bid, clear.created, clear.size, len(clear.fragments),
                                         _sealed(clear, "freezing" if partly else "queued"),
                                         kind=clear.kind, stored=stored,
                                         stream=clear.stream, parent=clear.parent)
            else:
                entries[bid.key] = Entry(bid, _created(bid.ulid), None, None, unsealed)
        for exc in unreadable or ():
            log.warning("archives in the spool not listed: %s", exc)
            problems.append(exc)
    return entries


def _under(prefix: str, wanted: str) -> bool:
    return not wanted or prefix == wanted or prefix.startswith(wanted + "/")


FRAGMENT_RE = re.compile(r"^(?:(.+)/)?([0-9A-HJKMNP-TV-Z]{26})/chunk\.(\d+)$")
FETCHERS = 8        # chunk.0s fetched at once (boto3's client is thread-safe)


def vault_entries(store, vault: str, prefix: str, cache: MarkCache | None = None,
                  spool: Spool | None = None, problems: list | None = None
                  ) -> dict[str, Entry]:
    """The vault's sealed archives, from one listing (LIST requests only)
    and their chunk.0s: from the cache, else fetched in parallel (and
    cached).  State and storage class come from the listing: an archive
    whose fragments are not all there, at their sizes, is ``damaged``.
    An archive whose chunk.0 cannot be read is left out, with a warning
    and its error added to ``problems``."""
    if cache is None and spool is not None:
        cache = MarkCache(spool)
    cached = cache.read_all(vault, prefix) if cache is not None else {}
    # the keys the cached chunk.0s say the vault holds: the listing places its ranges by them
    expected = [f"{key}/chunk.{n}" for key, clear in cached.items()
                for n in range(len(clear.fragments) + 1)]
    objects: dict[str, dict[int, ObjectInfo]] = {}
    for info in store.list(prefix + "/" if prefix else "", expected=expected):
        m = FRAGMENT_RE.match(info.key)
        if m:
            key = f"{m.group(1)}/{m.group(2)}" if m.group(1) else m.group(2)
            objects.setdefault(key, {})[int(m.group(3))] = info
    if cache is not None:
        cache.forget_missing(vault, prefix, {k for k, o in objects.items() if 0 in o})
    bids = [_bid(vault, key) for key, objs in objects.items() if 0 in objs]
    marks = _marks(store, bids, cache, problems, cached)
    entries = {}
    for bid in bids:
        clear = marks.get(bid.key)
        if clear is None:
            continue
        state, sclass = _listed_state(objects[bid.key], clear)
        entries[bid.key] = Entry(bid, clear.created, clear.size, len(clear.fragments),
                                 _sealed(clear, state), storage_class=sclass, kind=clear.kind,
                                 stored=clear.stored + objects[bid.key][0].size,
                                 stream=clear.stream, parent=clear.parent,
                                 objects=objects[bid.key])
    if cache is not None:
        cache.save(vault)
    return entries


def _bid(vault: str, key: str) -> BackupId:
    prefix, _, ulid = key.rpartition("/")
    return BackupId(vault, prefix, ulid)


def _marks(store, bids: list[BackupId], cache: MarkCache | None,
           problems: list | None = None, cached: dict | None = None
           ) -> dict[str, manifest.ClearInfo]:
    """chunk.0s' clear metadata: from ``cached`` (read from the cache
    already), else the cache, else fetched (and cached)."""
    found: dict[str, manifest.ClearInfo] = {}
    todo = []
    cached = cached or {}
    for bid in bids:
        hit = cached.get(bid.key)
        if hit is None and cache is not None:       # (cached meanwhile by another listing?)
            hit = (cache.get(bid) or (None,))[0]
        if hit is None:
            todo.append(bid)
        else:
            found[bid.key] = hit
    if todo:
        with concurrent.futures.ThreadPoolExecutor(FETCHERS) as pool:
            for bid, clear in zip(todo, pool.map(lambda b: _fetch_mark(store, b, cache), todo)):
                if isinstance(clear, errors.Error):
                    _skip(bid, clear, problems)
                elif clear is not None:
                    found[bid.key] = clear
    return found


def _skip(bid: BackupId, exc: errors.Error, problems: list | None) -> None:
    log.warning("skipping %s: %s", bid, exc)
    if problems is not None:
        problems.append(exc)


def _fetch_mark(store, bid: BackupId, cache: MarkCache | None
                ) -> manifest.ClearInfo | errors.Error | None:
    buf = io.BytesIO()
    try:
        store.get(bid.fragment_key(0), buf)
        clear = manifest.read_clear(buf.getvalue())[0]
        manifest.check_identity(clear, bid)
    except errors.NotFoundError:
        return None                     # removed since the listing
    except (errors.IntegrityError, errors.NotRestoredError) as exc:
        return exc                      # the caller warns (once, from one thread)
    if cache is not None:
        cache.put(bid, buf.getvalue())
    return clear


def _listed_state(objs: dict[int, ObjectInfo], clear) -> tuple[str, str | None]:
    """frozen / thawing / thawed / stored / local, or damaged when a
    fragment is missing or not its size; judged from the listing."""
    if not clear.fragments:
        return "local", None
    for n, frag in enumerate(clear.fragments, 1):
        if n not in objs or objs[n].size != frag.size:
            return "damaged", objs[1].storage_class if 1 in objs else None
    info = objs[1]
    if info.storage_class == "LOCAL":
        return "local", info.storage_class
    # over every fragment, as the mount judges it: thawed once all are
    # readable, thawing while any is being restored
    states = {objs[n].state for n in range(1, len(clear.fragments) + 1)}
    state = (State.AVAILABLE if states == {State.AVAILABLE} else
             State.RESTORING if State.RESTORING in states else State.ARCHIVED)
    return ({State.ARCHIVED: "frozen", State.RESTORING: "thawing",
             State.AVAILABLE: "thawed" if info.storage_class in ARCHIVED_CLASSES
             else "stored"}[state], info.storage_class)


def list_archives(spool: Spool, store, vault: str, prefix: str = "", keyring=None,
                  problems: list | None = None) -> list[Entry]:
    """Every archive of VAULT[/PREFIX], oldest first.  What cannot be read
    of one archive is warned about and added to ``problems`` (the caller
    decides the exit code): an unreadable chunk.0 leaves the archive out;
    with ``keyring``, a manifest that does not decrypt leaves it ``damaged``
    without a name."""
    entries = vault_entries(store, vault, prefix, spool=spool, problems=problems)
    for key, entry in spool_entries(spool, vault, prefix, problems).items():
        entries.setdefault(key, entry)
    result = sorted(entries.values(), key=lambda e: (e.bid.ulid, e.bid.prefix))
    _thaw_states(spool, vault, prefix, result, store)
    if keyring is not None:
        cache = MarkCache(spool)
        locked: list[errors.KeyringError] = []      # archives the key(s) do not open
        for e in result:
            try:
                secret = _manifest(spool, store, cache, e.bid, keyring, locked)
            except errors.IntegrityError as exc:
                exc = type(exc)(f"{e.bid}: {exc.message}")
                log.warning("cannot read the manifest of %s", exc)
                if problems is not None:
                    problems.append(exc)
                e.state = "damaged"
                continue
            e.name = secret.get("name")
            e.snapshot = snapshot_name(secret.get("stream"))
        if locked:
            log.warning("the key(s) given open %s of the %d archive(s) listed (their names "
                        "show as -); give the secret key they are encrypted to: %s",
                        "none" if len(locked) == len(result) else f"{len(result) - len(locked)}",
                        len(result), locked[0])
    return result


def _thaw_states(spool: Spool, vault: str, prefix: str, entries: list[Entry],
                 store=None) -> None:
    """What the spool knows beyond the listing: a fragment thaw gave up on
    (``SPOOL/thaw/…/chunk.N.failed``) makes the archive ``damaged``, unless
    the listing shows that the vault's object is no longer the one thaw saw
    (the record is stale: it is removed); a
    frozen archive with a thaw request waiting, or a restore charged in
    the thaw ledger that has not expired, is ``thawing`` (stores such as
    moto send no restore status in their listings) — or ``thawed`` when
    HEADs say every fragment is readable already (only for archives with
    thaws asked for)."""
    failed, requested = thaw_records(spool, vault, prefix)
    charged = ledger.charged_archives(spool, vault)
    for e in entries:
        if e.bid.key in failed and e.state not in UNSEALED and _still_failed(spool, e):
            e.state = "damaged"
        elif e.state == "frozen" and (e.bid.key in requested or e.bid.key in charged):
            e.state = "thawed" if _readable(store, e) else "thawing"


UNSEALED = ("writing", "dead", "abandoned")


def _readable(store, entry: Entry) -> bool:
    """Every fragment readable now (as the mount judges it): HEADs stop at
    the first one that is not, so a thaw under way costs one request."""
    if store is None or not entry.fragments:
        return False
    try:
        return all(store.head(entry.bid.fragment_key(n)).state is State.AVAILABLE
                   for n in range(1, entry.fragments + 1))
    except errors.Error:
        return False                    # the listing's view stands


def _still_failed(spool: Spool, entry: Entry) -> bool:
    if entry.objects is None:           # not (yet) in the vault: nothing to compare with
        return bool(restorequeue.failures(spool, entry.bid))
    held = restorequeue.drop_stale(spool, entry.bid, entry.objects)
    if not held:
        log.debug("%s: the thaw failure records no longer match the vault: dropped",
                  entry.bid)
    return bool(held)


def thaw_records(spool: Spool, vault: str, prefix: str = "") -> tuple[set[str], set[str]]:
    """Archive keys (PREFIX/ULID) under VAULT/PREFIX with a permanent thaw
    failure recorded, and with thaw requests waiting: one walk of the thaw
    queue (it holds only archives being thawed)."""
    top = os.path.join(spool.queue("thaw"), vault)
    start = os.path.join(top, prefix) if prefix else top
    skip = len(os.path.join(top, ""))
    failed, requested = set(), set()
    for dirpath, _dirs, files in os.walk(start):
        key = dirpath[skip:]
        for name in files:
            if restorequeue.FAILED_RE.match(name):
                failed.add(key)
            elif REQUEST_RE.match(name):
                requested.add(key)
    return failed, requested


REQUEST_RE = re.compile(r"^chunk\.\d+(?:\.warm)?$")


def mark_bytes(spool: Spool, store, bid: BackupId, cache: MarkCache | None = None) -> bytes:
    """A sealed archive's chunk.0: from the spool, the cache, else the vault."""
    path = spool.path("freeze", bid, 0)
    if os.path.exists(path):
        with open(path, "rb") as f:
            return f.read()
    cache = cache or MarkCache(spool)
    hit = cache.get(bid)
    if hit is not None:
        return hit[1]
    buf = io.BytesIO()
    store.get(bid.fragment_key(0), buf)
    manifest.check_identity(manifest.read_clear(buf.getvalue())[0], bid)
    cache.put(bid, buf.getvalue())
    return buf.getvalue()


def _manifest(spool: Spool, store, cache: MarkCache, bid: BackupId, keyring,
              locked: list | None = None) -> dict:
    """The decrypted manifest, or {} when it cannot be read (with the
    keyring's refusal added to ``locked``)."""
    try:
        clear, enc = manifest.read_clear(mark_bytes(spool, store, bid, cache))
        return manifest.read_manifest(enc, clear, keyring.decrypt_session_key)
    except errors.NotFoundError:
        return {}
    except errors.KeyringError as exc:
        log.debug("no name for %s: %s", bid, exc)
        if locked is not None:
            locked.append(exc)
        return {}
    except (ValueError, KeyError, TypeError) as exc:        # decrypted, but not a manifest
        raise errors.FormatError(f"its manifest is malformed ({exc})") from None
