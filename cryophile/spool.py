"""The local queues: SPOOL/{backup,freeze,thaw,restore}/VAULT/PREFIX/ULID/chunk.N.

A fragment is written in backup/, fsynced, hard-linked into freeze/ and
unlinked from backup/: a fragment in freeze/ is always whole.  chunk.0 comes
last.  A backup holds an flock on backup/…/ULID/.lock while it runs; a
backup/ directory whose lock is free belongs to a backup that died, and is
removed (with what it queued) by the next run.  A process freezing an
archive holds an flock on freeze/…/ULID/.freezing (one freezer per archive)
and a freeze daemon holds freeze/.daemon shared (backups then wait for it
rather than freeze inline); freeze/…/ULID/.ledger lists what was uploaded.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
from typing import Iterator

from . import errors
from .fsutil import replace_file
from .ids import BackupId, ULID_RE

log = logging.getLogger("cryophile.spool")

QUEUES = ("backup", "freeze", "thaw", "restore")
DEFAULT = "/var/spool/cryophile"
CHUNK_RE = re.compile(r"^chunk\.(\d+)$")
ABANDONED = "ABANDONED"      # in freeze/…/ULID: delete what the vault has of it
FREEZING = ".freezing"       # in freeze/…/ULID: flock held by the process freezing it


def chunk_name(n: int) -> str:
    return f"chunk.{n}"


def chunk_number(name: str) -> int | None:
    m = CHUNK_RE.match(name)
    return int(m.group(1)) if m else None


PRUNE_RACES = 5     # tries when another process prunes a directory we create in


def makedirs(path: str) -> None:
    """``path`` and any missing parent, each created 0700 (os.makedirs would give
    the parents, the spool root and vault and prefix directories, its default mode)."""
    for _ in range(PRUNE_RACES):
        try:
            _makedirs_private(path)
            return
        except FileNotFoundError as exc:    # a parent pruned by another process meanwhile,
            missing = exc                   # or a filesystem that makes none (/proc)
        except OSError as exc:
            raise _cannot_create(path, exc) from None
    if os.path.isdir(os.path.dirname(missing.filename)):
        raise _cannot_create(path, missing)
    raise errors.SpoolError(f"cannot create {path}: its parent keeps disappearing")


# What to do about a spool directory that cannot be made, by errno
_REMEDY = {errno.ENOENT: "its filesystem makes no new directories",
           errno.ENOTDIR: "move it away",
           errno.EROFS: "remount it read-write",
           errno.EACCES: "check ownership and permissions",
           errno.EPERM: "check ownership and permissions"}


def _cannot_create(path: str, exc: OSError) -> errors.Error:
    remedy = _REMEDY.get(exc.errno)
    if remedy is None:
        return errors.from_oserror(exc, f"cannot create {path}")
    joint = ":" if exc.errno == errno.ENOENT else " or"    # no remedy there but moving
    return errors.SpoolError(f"cannot create {path}: {exc.filename}: {exc.strerror}; "
                             f"{remedy}{joint} choose another spool (-S DIR)")


def _makedirs_private(path: str) -> None:
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        _makedirs_private(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not os.path.isdir(path):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path) from None


def create_in(directory: str, make):
    """``make()`` something inside ``directory``, re-creating the directory if
    another process pruned it (empty queue directories are removed) meanwhile."""
    for _ in range(PRUNE_RACES):
        makedirs(directory)
        try:
            return make()
        except FileNotFoundError:
            continue
    raise errors.SpoolError(f"cannot create in {directory}: it keeps disappearing")


class Spool:
    def __init__(self, root: str):
        self.root = os.path.abspath(root)

    def queue(self, name: str) -> str:
        return os.path.join(self.root, name)

    def dir(self, queue: str, bid: BackupId) -> str:
        return os.path.join(self.root, queue, bid.vault, bid.key)

    def path(self, queue: str, bid: BackupId, n: int) -> str:
        return os.path.join(self.dir(queue, bid), chunk_name(n))

    def ensure(self) -> None:
        for q in QUEUES:
            makedirs(self.queue(q))
        if not os.access(self.queue("backup"), os.W_OK):
            raise errors.SpoolError(f"spool {self.root} is not writable (use -S DIR or fix permissions)")

    def archives(self, queue: str, problems: list | None = None) -> Iterator[BackupId]:
        """Every VAULT/PREFIX/ULID directory in a queue.  A directory that
        cannot be read is a SpoolError, not an empty queue: raised, or with
        ``problems`` added to it and skipped.  One removed meanwhile is gone."""
        def unreadable(exc: OSError) -> None:
            if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
                return
            error = errors.from_oserror(exc, f"cannot read {exc.filename}")
            error.path = exc.filename
            if problems is None:
                raise error from None
            problems.append(error)
        top = self.queue(queue)
        try:
            vaults = sorted(os.listdir(top))
        except OSError as exc:
            unreadable(exc)
            return
        for vault in vaults:
            vdir = os.path.join(top, vault)
            if not os.path.isdir(vdir):
                continue
            for dirpath, dirnames, filenames in os.walk(vdir, onerror=unreadable):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                name = os.path.basename(dirpath)
                if dirpath != vdir and ULID_RE.match(name) and (
                        filenames or not dirnames):
                    rel = os.path.relpath(os.path.dirname(dirpath), vdir)
                    yield BackupId(vault, "" if rel == "." else rel, name)
                    dirnames.clear()

    def fragments(self, queue: str, bid: BackupId) -> list[int]:
        try:
            names = os.listdir(self.dir(queue, bid))
        except FileNotFoundError:
            return []
        return sorted(n for n in map(chunk_number, names) if n is not None)

    def link_queued(self, bid: BackupId, n: int) -> bool:
        """Take fragment n of an archive not yet frozen from the freeze queue into
        the restore queue (a hard link, so a freeze finishing meanwhile cannot
        take it away).  False if the freeze queue does not have it."""
        src, dest = self.path("freeze", bid, n), self.path("restore", bid, n)
        if not os.path.exists(src):
            return os.path.exists(dest)
        try:
            create_in(os.path.dirname(dest), lambda: os.link(src, dest))
        except FileExistsError:
            pass
        except errors.SpoolError:
            return os.path.exists(dest)       # the source went: frozen meanwhile
        return True

    def exists(self, bid: BackupId) -> bool:
        return any(os.path.exists(self.dir(q, bid)) for q in ("backup", "freeze"))

    def remove_dir(self, queue: str, bid: BackupId) -> None:
        """Remove an archive's directory and the prefix directories it leaves empty."""
        path = self.dir(queue, bid)
        shutil.rmtree(path, ignore_errors=True)
        self.prune(queue, bid)

    def prune(self, queue: str, bid: BackupId) -> None:
        top = self.queue(queue)
        path = os.path.dirname(self.dir(queue, bid))
        while len(path) > len(top):
            try:
                os.rmdir(path)
            except OSError:
                return
            path = os.path.dirname(path)

    def unfrozen_bytes(self) -> int:
        """Bytes waiting in backup/ and freeze/ (the spool_max bound); each
        file once, however many links (a fragment being moved from backup/
        to freeze/ is linked into both for a moment)."""
        seen, total = set(), 0
        for q in ("backup", "freeze"):
            for dirpath, _, filenames in os.walk(self.queue(q)):
                for name in filenames:
                    try:
                        st = os.lstat(os.path.join(dirpath, name))
                    except FileNotFoundError:
                        continue
                    if (st.st_dev, st.st_ino) not in seen:
                        seen.add((st.st_dev, st.st_ino))
                        total += st.st_size
        return total

    # --- crash recovery ---------------------------------------------------

    def clean_dead_backups(self) -> list[BackupId]:
        """Remove backups that died before chunk.0; return their ids."""
        dead = []
        for bid in list(self.archives("backup", problems=[])):   # (unreadable: not ours to clean)
            lock = BackupLock(self, bid)
            if not lock.try_acquire():
                continue                    # still running
            try:
                if os.path.exists(self.path("freeze", bid, 0)):
                    self.retire_backup(bid)     # sealed: only its work directory was left
                    continue
                log.warning("removing incomplete backup %s: it stopped before completion "
                            "and is not restorable", bid)
                self.abandon(bid)
                dead.append(bid)
            finally:
                lock.release()
        return dead

    def retire_backup(self, bid: BackupId) -> None:
        """Remove backup/…/ULID without a moment in which it exists without its
        lock file (which would make it look dead): rename it away first."""
        path = self.dir("backup", bid)
        gone = os.path.join(os.path.dirname(path), f".done-{bid.ulid}-{os.getpid()}")
        try:
            os.rename(path, gone)
        except FileNotFoundError:
            return
        shutil.rmtree(gone, ignore_errors=True)
        self.prune("backup", bid)


    def abandon(self, bid: BackupId) -> None:
        """Drop a backup that will never complete; freeze then deletes what
        the vault already has of it (see ABANDONED)."""
        fdir = self.dir("freeze", bid)
        for n in self.fragments("freeze", bid):
            os.unlink(os.path.join(fdir, chunk_name(n)))
        create_in(fdir, lambda: open(os.path.join(fdir, ABANDONED), "w")).close()
        self.retire_backup(bid)


class FileLock:
    """An exclusive flock on a file, never waited for: it tells whether the
    process that holds it (a backup, a thaw daemon) is alive."""

    def __init__(self, path: str):
        self.path = path
        self.fd: int | None = None

    def acquire(self, create: bool = True) -> bool:
        """True if now held, False if another process holds it.  Without
        ``create``, a missing file counts as free (its owner never got going)."""
        flags = os.O_RDWR | os.O_CLOEXEC
        if create:
            makedirs(os.path.dirname(self.path))
            flags |= os.O_CREAT
        try:
            self.fd = os.open(self.path, flags, 0o600)
        except FileNotFoundError:
            return True
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            self.release()
            return False

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


PARENT_FILE = "parent"
STREAM_FILE = "stream"


class BackupLock(FileLock):
    """backup/…/ULID/.lock, held while a backup writes."""

    def __init__(self, spool: Spool, bid: BackupId):
        super().__init__(os.path.join(spool.dir("backup", bid), ".lock"))
        self.bid = bid

    def create(self, parent_ulid: str | None = None) -> None:
        """Make backup/…/ULID/ with its lock already held: the directory is
        built under a temporary name and renamed, so that no other process
        ever sees it without its lock (and takes it for a dead backup).
        ``parent_ulid`` (``backup --parent``) is recorded in it as
        ``parent`` from the first moment, so that prune and rm never delete
        the base of a backup still being written (``writing_parent``)."""
        final = os.path.dirname(self.path)
        parent = os.path.dirname(final)
        try:
            tmp = create_in(parent, lambda: tempfile.mkdtemp(prefix=".new-", dir=parent))
            fd = os.open(os.path.join(tmp, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                         0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if parent_ulid:
                with open(os.path.join(tmp, PARENT_FILE), "w") as f:
                    f.write(parent_ulid + "\n")
        except OSError as exc:
            raise errors.from_oserror(exc, f"cannot create a backup in {parent}") from None
        try:
            os.rename(tmp, final)
        except OSError:
            os.close(fd)
            shutil.rmtree(tmp, ignore_errors=True)
            raise errors.UsageError(f"archive {self.bid} is being written by another "
                                    "backup") from None
        self.fd = fd

    def try_acquire(self) -> bool:
        return self.acquire(create=False)


def note_stream(spool: Spool, bid: BackupId, stream: dict) -> None:
    """Record, in backup/…/ULID/stream, the clear identity of an incremental
    zfs/btrfs stream being written (what chunk.0 will say at the seal):
    its base is then known to prune and rm before there is a chunk.0.
    Written whole or not at all; a failure to write it is raised (a base
    left unprotected is not a detail)."""
    final = os.path.join(spool.dir("backup", bid), STREAM_FILE)
    try:
        replace_file(final, json.dumps(stream).encode())
    except OSError as exc:
        raise errors.from_oserror(exc, f"cannot record the stream of {bid}") from None


def being_written(spool: Spool, bid: BackupId) -> tuple[str | None, dict | None] | None:
    """(``--parent`` ULID, stream identity) of backup ``bid`` while it is
    being written (its lock held), either None when not recorded; None when
    it is not being written."""
    directory = spool.dir("backup", bid)
    try:
        with open(os.path.join(directory, PARENT_FILE)) as f:
            parent = f.read().strip()
    except OSError:
        parent = None
    try:
        with open(os.path.join(directory, STREAM_FILE)) as f:
            stream = json.load(f)
    except (OSError, ValueError):
        stream = None
    lock = BackupLock(spool, bid)
    free = lock.try_acquire()
    lock.release()
    if free:
        return None
    return (parent if parent and ULID_RE.match(parent) else None,
            stream if isinstance(stream, dict) else None)


class ArchiveFreezeLock:
    """freeze/…/ULID/.freezing: only one process (freeze daemon, mount, inline
    freeze of a backup) uploads or sweeps an archive at a time.  Never
    waited for: a busy archive is somebody else's work."""

    def __init__(self, spool: Spool, bid: BackupId):
        self.path = os.path.join(spool.dir("freeze", bid), FREEZING)
        self.fd: int | None = None

    def acquire(self) -> bool:
        try:    # no makedirs: a directory that is gone was frozen and removed
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except (FileNotFoundError, NotADirectoryError):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # the previous holder may have removed the directory meanwhile
            same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except (BlockingIOError, FileNotFoundError):
            same = False
        if not same:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class FreezeDaemonLock:
    """freeze/.daemon, held shared by every process that keeps freezing the
    whole spool (`cryophile freeze`, a mount): a backup that finds it free
    knows that nobody will make room for it."""

    def __init__(self, spool: Spool):
        self.path = os.path.join(spool.queue("freeze"), ".daemon")
        self.fd: int | None = None

    def _open(self) -> int:
        makedirs(os.path.dirname(self.path))
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise errors.from_oserror(exc, f"cannot open {self.path}") from None

    def hold(self) -> None:
        self.fd = self._open()
        fcntl.flock(self.fd, fcntl.LOCK_SH)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def anyone_freezing(self) -> bool:
        return flock_held(self.path)


def flock_held(path: str) -> bool:
    """Does a process hold an flock on ``path``?  A probe: it never waits and
    never creates the file (where there is none, nobody holds it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise errors.from_oserror(exc, f"cannot open {path}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
