"""What archives exist: the spool's queues and the vault's objects, merged."""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import re

from . import errors, manifest
from .ids import BackupId, ulid_time
from .spool import ABANDONED, BackupLock, Spool
from .store.base import State

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


def spool_entries(spool: Spool, vault: str, prefix: str) -> dict[str, Entry]:
    entries = {}
    for queue in ("freeze", "backup"):
        for bid in spool.archives(queue):
            if bid.vault != vault or not _under(bid.prefix, prefix) or bid.key in entries:
                continue
            mark = spool.path("freeze", bid, 0)
            unsealed = None if os.path.exists(mark) else unsealed_state(spool, bid)
            if unsealed != "writing" and os.path.exists(mark):     # (sealed meanwhile?)
                clear = manifest.load(mark)[0]
                partly = len(spool.fragments("freeze", bid)) < len(clear.fragments) + 1
                entries[bid.key] = Entry(bid, clear.created, clear.size, len(clear.fragments),
                                         _sealed(clear, "freezing" if partly else "queued"),
                                         kind=clear.kind)
            else:
                entries[bid.key] = Entry(bid, _created(bid.ulid), None, None, unsealed)
    return entries


def _under(prefix: str, wanted: str) -> bool:
    return not wanted or prefix == wanted or prefix.startswith(wanted + "/")


def vault_entries(store, vault: str, prefix: str) -> dict[str, Entry]:
    entries = {}
    for info in store.list(prefix + "/" if prefix else ""):
        m = MARK_RE.match(info.key)
        if not m:
            continue
        bid = BackupId(vault, m.group(1) or "", m.group(2))
        buf = io.BytesIO()
        try:
            store.get(info.key, buf)
            clear = manifest.read_clear(buf.getvalue())[0]
            manifest.check_identity(clear, bid)
        except errors.Error as exc:
            log.warning("skipping %s: %s", bid, exc)
            continue
        state, sclass = _state(store, bid, clear)
        entries[bid.key] = Entry(bid, clear.created, clear.size, len(clear.fragments),
                                 _sealed(clear, state), storage_class=sclass, kind=clear.kind)
    return entries


def _state(store, bid: BackupId, clear) -> tuple[str, str | None]:
    """frozen / thawing / thawed / local, judged by the first fragment."""
    if not clear.fragments:
        return "local", None
    try:
        info = store.head(bid.fragment_key(1))
    except errors.NotFoundError:
        return "damaged", None
    if info.storage_class == "LOCAL":
        return "local", info.storage_class
    return ({State.ARCHIVED: "frozen", State.RESTORING: "thawing",
             State.AVAILABLE: "thawed" if info.storage_class in ("GLACIER", "DEEP_ARCHIVE")
             else "stored"}[info.state], info.storage_class)


def list_archives(spool: Spool, store, vault: str, prefix: str = "", keyring=None) -> list[Entry]:
    entries = vault_entries(store, vault, prefix)
    for key, entry in spool_entries(spool, vault, prefix).items():
        entries.setdefault(key, entry)
    result = sorted(entries.values(), key=lambda e: (e.bid.ulid, e.bid.prefix))
    if keyring is not None:
        for e in result:
            e.name = _name(spool, store, e, keyring)
    return result


def _name(spool: Spool, store, entry: Entry, keyring) -> str | None:
    try:
        path = spool.path("freeze", entry.bid, 0)
        if os.path.exists(path):
            data = open(path, "rb").read()
        else:
            buf = io.BytesIO()
            store.get(entry.bid.fragment_key(0), buf)
            data = buf.getvalue()
        clear, enc = manifest.read_clear(data)
        return manifest.read_manifest(enc, clear, keyring.decrypt_session_key).get("name")
    except errors.NotFoundError:
        return None
    except errors.KeyringError as exc:
        log.debug("no name for %s: %s", entry.bid, exc)
        return None
