"""Deleting an archive: chunk.0 first, then its fragments, everywhere.

chunk.0 marks an archive complete, so it goes first (the spool's copy, a
listing's cached copy and the vault's): from then on nothing lists the archive, and a kill halfway
leaves only fragments without a mark, which a second ``remove`` finds by
listing ``PREFIX/ULID/`` and finishes.  The spool's freeze queue is marked
ABANDONED before its chunk.0 goes, so that a freeze meeting the leftovers
deletes them from the vault instead of uploading them.

An archive still being written (its backup holds backup/…/ULID/.lock) or
being frozen (a freezer holds freeze/…/ULID/.freezing) is refused.
Synchronous: run it in a thread from trio.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from . import catalog, check, errors, fsutil
from .ids import BackupId
from .markcache import MarkCache
from .spool import ABANDONED, ArchiveFreezeLock, BackupLock, Spool

log = logging.getLogger("cryophile.remove")



class BusyError(errors.UsageError):
    """The archive is being written or frozen right now."""

    errno = 16      # EBUSY


class DependantsError(errors.UsageError):
    """Other archives' chains need the archive (rm -R or --force to go on)."""

    errno = 16      # EBUSY, as zfs destroy of a snapshot with dependants


def chain_entries(spool: Spool, store, vault: str) -> list:
    """What chains in ``vault`` are made of, for ``chains.dependents``: its
    archives (vault and spool), and each backup still being written with
    ``--parent`` (its base must stay until it is sealed)."""
    writing = {w.bid.key: w for w in check.writing_entries(spool, vault)}
    return ([e for e in catalog.list_archives(spool, store, vault)
             if e.bid.key not in writing] + list(writing.values()))


def names(keys, of: BackupId, most: int = 5) -> str:
    """Dependants of ``of`` (their keys, PREFIX/ULID, in its vault) for a
    message: by ULID under its prefix, in full (VAULT/PREFIX/ULID) under
    another one, at most ``most`` of them."""
    shown = sorted(keys, key=lambda k: (k.rpartition("/")[2], k))
    more = f" and {len(shown) - most} more" if len(shown) > most else ""
    return ", ".join(_name(k, of) for k in shown[:most]) + more


def _name(key: str, of: BackupId) -> str:
    prefix, _, ulid = key.rpartition("/")
    return ulid if prefix == of.prefix else f"{of.vault}/{key}"


@dataclasses.dataclass
class Removed:
    bid: BackupId
    objects: int = 0        # vault objects deleted
    spool: bool = False     # the spool had some of it


def remove(spool: Spool, store, bid: BackupId) -> Removed:
    """Delete archive ``bid`` from the spool and the vault (idempotent: a
    second call after a kill finishes the job).  NotFoundError if neither
    has anything of it."""
    backup = BackupLock(spool, bid)
    if not backup.try_acquire():
        raise BusyError(f"{bid} is being written by a running backup: not removed")
    freezing = ArchiveFreezeLock(spool, bid)
    try:     # not taken and the directory still there: a freeze holds it
        if not freezing.acquire() and os.path.isdir(spool.dir("freeze", bid)):
            raise BusyError(f"{bid} is being frozen right now: not removed (try again "
                            "when the freeze has finished)")
        return _remove(spool, store, bid)
    finally:
        freezing.release()
        backup.release()


def _remove(spool: Spool, store, bid: BackupId) -> Removed:
    done = Removed(bid)
    keys = sorted((info.key for info in store.list(bid.key + "/")), key=_mark_first)
    queued = spool.dir("freeze", bid)
    if os.path.isdir(queued):
        done.spool = True
        _touch(os.path.join(queued, ABANDONED))
        _unlink(spool.path("freeze", bid, 0))
    cached = MarkCache(spool).path(bid)     # a listing's copy of chunk.0
    if os.path.exists(cached):
        _unlink(cached)
    for key in keys:          # chunk.0 first
        store.delete(key)
        done.objects += 1
    if os.path.isdir(spool.dir("backup", bid)):
        done.spool = True
        spool.retire_backup(bid)          # a dead backup's leftovers
    for queue in ("freeze", "thaw", "restore"):
        if os.path.isdir(spool.dir(queue, bid)):
            done.spool = True
            try:
                fsutil.remove_tree(spool.dir(queue, bid))
            except OSError as exc:        # said, not reported as removed
                raise errors.from_oserror(
                    exc, f"{bid} is not fully removed (cryophile rm finishes it once "
                    f"fixed): cannot remove {exc.filename}") from None
            spool.prune(queue, bid)
    if not keys and not done.spool:
        raise errors.NotFoundError(f"archive {bid} not found (nothing of it in the vault "
                                   "or the spool)")
    log.debug("removed %s (%d object(s) from the vault)", bid, done.objects)
    return done


def _mark_first(key: str) -> tuple[bool, str]:
    return (not key.endswith("/chunk.0"), key)


def _touch(path: str) -> None:
    try:
        open(path, "a").close()
    except OSError as exc:
        raise errors.from_oserror(exc, f"cannot mark {path}") from None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise errors.from_oserror(exc, f"cannot remove {path}") from None
