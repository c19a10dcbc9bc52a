"""The restore queue, shared by everyone reading one archive, and thaw failures.

``SPOOL/restore/VAULT/PREFIX/ULID/chunk.N`` are thawed fragments (downloaded
by thaw, or hard links into the freeze queue).  Each process reading the
archive registers a *reader*: a directory ``.reader-XXXX`` beside them,
made under a temporary name with its flock already held and then renamed,
so that a reader that died (its lock free) is never confused with a live
one.  A restore hard-links each fragment it is about to read into its own
directory, records how far it has read (``at.N``) and unlinks its links as
it consumes them; the shared name goes as soon as no other live reader
still needs it.  A mount reader (``mount``) reads the shared names in
place: while one is registered, shared names stay.  Nobody removes a file
another reader still needs, and the last reader out removes what is left,
including what dead readers left.

A fragment that thaw could not bring back (missing from the vault, or
failing its checks after the bounded downloads) is a permanent failure:
``SPOOL/thaw/…/ULID/chunk.N.failed`` holds the reason (``chunk.0.failed``:
the archive's mark).  Thaw and the mount do not ask for it again until the
user does (a new restore, ``setfattr user.cryophile.thaw``, or a new open
after the failure was reported), which clears the records.  A record also
says what the vault held when thaw gave up (``seen``: the object's size,
time and SHA-256 from a HEAD, or that it was absent): when the vault's
object differs now (uploaded since, or replaced) the record is
stale, and ``ls``, ``check`` and the mount's state drop it instead of
calling the archive damaged; ``check --read-data`` drops the records of
the fragments it reads back whole.

Blocking file I/O: call from threads.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
import threading

from . import errors
from .fsutil import replace_file
from .ids import BackupId
from .spool import PRUNE_RACES, Spool, chunk_name, chunk_number, create_in

READER = ".reader-"
NEW = ".new-"
AT_RE = re.compile(r"^at\.(\d+)$")
FAILED_RE = re.compile(r"^chunk\.(\d+)\.failed$")
PART_RE = re.compile(r"^chunk\.\d+\.part-[0-9a-f]+$")
WARM_RE = re.compile(r"^chunk\.(\d+)\.warm$")
KINDS = {"IntegrityError": errors.IntegrityError, "FormatError": errors.IntegrityError,
         "NotFoundError": errors.NotFoundError}


# --- permanent thaw failures -----------------------------------------------------

def failed_path(spool: Spool, bid: BackupId, n: int) -> str:
    return os.path.join(spool.dir("thaw", bid), f"{chunk_name(n)}.failed")


def look(store, key: str) -> dict | None:
    """What the vault holds under ``key`` now, as a failure record keeps it
    (None when the vault cannot say: such a record is never stale)."""
    try:
        info = store.head(key)
    except errors.NotFoundError:
        return {"absent": True}
    except errors.Error:
        return None
    return {"size": info.size, "modified": _seconds(info.modified),
            "sha256": info.sha256.hex() if info.sha256 else None}


def _seconds(when) -> int | None:
    return int(when.timestamp()) if when is not None else None     # as listings say it


def stale(seen: dict | None, info) -> bool:
    """Whether the object ``info`` (an ObjectInfo from a listing or a HEAD,
    None for absent) is not the one the record saw."""
    if not seen:
        return False                    # a record from before records said what they saw
    if seen.get("absent"):
        return info is not None
    if info is None:
        return False                    # gone since: it still cannot be had
    if info.size != seen.get("size"):
        return True
    now, then = _seconds(info.modified), seen.get("modified")
    if now is not None and then is not None and now != then:
        return True
    sha = info.sha256.hex() if getattr(info, "sha256", None) else None
    return sha is not None and seen.get("sha256") is not None and sha != seen["sha256"]


def record_failure(spool: Spool, bid: BackupId, n: int, exc: errors.Error,
                   seen: dict | None = None) -> None:
    """Fragment n (0: the mark) cannot be brought back: say so (and what the
    vault held then, from ``look``), and drop its requests (all of the
    archive's, when the mark itself failed)."""
    path = failed_path(spool, bid, n)
    text = f"{type(exc).__name__}\n{exc.message}\n"
    if seen is not None:
        text += json.dumps(seen, sort_keys=True) + "\n"
    try:
        create_in(os.path.dirname(path), lambda: replace_file(path, text.encode()))
    except OSError as err:
        raise errors.from_oserror(err, f"cannot record the failure in {path}") from None
    for k in ([n] if n else requests(spool, bid)):
        drop_request(spool, bid, k)


def failures(spool: Spool, bid: BackupId) -> dict[int, errors.Error]:
    """The archive's recorded permanent failures, by fragment number."""
    return {n: exc for n, (exc, _seen) in records(spool, bid).items()}


def records(spool: Spool, bid: BackupId) -> dict[int, tuple[errors.Error, dict | None]]:
    """The archive's failure records: by fragment, the error and what the
    vault held then (None if the record does not say)."""
    found = {}
    qdir = spool.dir("thaw", bid)
    try:
        names = os.listdir(qdir)
    except FileNotFoundError:
        return found
    for name in names:
        m = FAILED_RE.match(name)
        if not m:
            continue
        try:
            with open(os.path.join(qdir, name)) as f:
                kind, _, rest = f.read().partition("\n")
        except FileNotFoundError:
            continue
        message, _, seen = rest.partition("\n")
        found[int(m.group(1))] = (KINDS.get(kind, errors.MissingFragmentError)(
            message.strip() or f"fragment {name} could not be thawed"), _seen(seen))
    return found


def _seen(text: str) -> dict | None:
    try:
        seen = json.loads(text) if text.strip() else None
    except ValueError:
        return None
    return seen if isinstance(seen, dict) else None


def clear_failure(spool: Spool, bid: BackupId, n: int) -> bool:
    """Forget fragment n's record (it proved stale, or was read back whole)."""
    try:
        os.unlink(failed_path(spool, bid, n))
    except FileNotFoundError:
        return False
    prune_dir(spool, "thaw", bid)
    return True


def drop_stale(spool: Spool, bid: BackupId, objects: dict) -> dict[int, errors.Error]:
    """The archive's failure records that still hold against ``objects``
    (fragment number → ObjectInfo, as listed now); stale ones are removed."""
    held = {}
    for n, (exc, seen) in records(spool, bid).items():
        if stale(seen, objects.get(n)):
            clear_failure(spool, bid, n)
        else:
            held[n] = exc
    return held


def failure(spool: Spool, bid: BackupId, n: int) -> errors.Error | None:
    """Why fragment n cannot be had, if thaw gave up on it (or on the mark)."""
    found = failures(spool, bid)
    return found.get(n) or found.get(0)


def clear_failures(spool: Spool, bid: BackupId) -> bool:
    """The user asks again: forget the archive's permanent failures."""
    cleared = False
    for n in failures(spool, bid):
        try:
            os.unlink(failed_path(spool, bid, n))
            cleared = True
        except FileNotFoundError:
            pass
    prune_dir(spool, "thaw", bid)
    return cleared


# --- thaw requests ---------------------------------------------------------------

def request(spool: Spool, bid: BackupId, fragments, warm: bool = False) -> None:
    """Ask thaw for fragments: downloaded into the restore queue, or with
    ``warm`` only restored in the vault (no spool space; a later download
    then finds them ready)."""
    qdir = spool.dir("thaw", bid)
    suffix = ".warm" if warm else ""
    for n in fragments:
        path = os.path.join(qdir, chunk_name(n) + suffix)
        if not os.path.exists(path):
            create_in(qdir, lambda: open(path, "a")).close()


def requests(spool: Spool, bid: BackupId, warm: bool = False) -> list[int]:
    if not warm:
        return spool.fragments("thaw", bid)
    try:
        names = os.listdir(spool.dir("thaw", bid))
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for m in map(WARM_RE.match, names) if m)


def drop_request(spool: Spool, bid: BackupId, n: int, warm: bool | None = None) -> None:
    """Remove fragment n's request (both kinds unless ``warm`` says which)."""
    for suffix in {None: ("", ".warm"), False: ("",), True: (".warm",)}[warm]:
        try:
            os.unlink(os.path.join(spool.dir("thaw", bid), chunk_name(n) + suffix))
        except FileNotFoundError:
            pass


def drop_requests(spool: Spool, bid: BackupId) -> None:
    for n in set(requests(spool, bid)) | set(requests(spool, bid, warm=True)):
        drop_request(spool, bid, n)
    prune_dir(spool, "thaw", bid)


# --- readers ------------------------------------------------------------------------

class Reader:
    """One process's registration as a reader of an archive's restore queue."""

    def __init__(self, spool: Spool, bid: BackupId, kind: str = "restore"):
        self.spool, self.bid, self.kind = spool, bid, kind
        self.top = spool.dir("restore", bid)
        self.dir: str | None = None
        self.fd: int | None = None
        self.at = 1
        self.moving = threading.Lock()   # advance: the reader and its look-ahead thread

    def register(self) -> "Reader":
        for _ in range(PRUNE_RACES):
            if self._try_register():
                clean_dead(self.spool, self.bid)
                return self
        raise errors.SpoolError(f"cannot register a reader in {self.top}: "
                                "it keeps disappearing")

    def _try_register(self) -> bool:
        fd = None
        try:
            tmp = create_in(self.top, lambda: tempfile.mkdtemp(prefix=NEW, dir=self.top))
            fd = os.open(os.path.join(tmp, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                         0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            open(os.path.join(tmp, self.kind), "w").close()
            open(os.path.join(tmp, f"at.{self.at}"), "w").close()
            final = os.path.join(self.top, READER + os.path.basename(tmp)[len(NEW):])
            os.rename(tmp, final)
        except (FileNotFoundError, BlockingIOError):    # a cleaner took it for dead
            if fd is not None:
                os.close(fd)
            return False
        except OSError as exc:
            if fd is not None:
                os.close(fd)
            raise errors.from_oserror(exc, f"cannot register a reader in {self.top}") from None
        self.dir, self.fd = final, fd
        return True

    def take(self, n: int) -> str | None:
        """Fragment n as a link of this reader's own (from the restore queue or
        the freeze queue), or None if neither has it yet."""
        own = os.path.join(self.dir, chunk_name(n))
        if os.path.exists(own):
            return own
        for queue in ("restore", "freeze"):
            try:
                os.link(self.spool.path(queue, self.bid, n), own)
            except FileNotFoundError:
                continue
            except FileExistsError:
                pass
            except OSError as exc:
                raise errors.from_oserror(exc, f"cannot link into {self.dir}") from None
            if queue == "restore" and not others_need(self.spool, self.bid, n, self.dir):
                _unlink(self.spool.path("restore", self.bid, n))
            return own
        return None

    def advance(self, n: int) -> None:
        """Everything before fragment n is consumed: drop those links."""
        with self.moving:
            if n <= self.at:
                return
            for name in os.listdir(self.dir):
                k = chunk_number(name)
                if k is not None and k < n:
                    _unlink(os.path.join(self.dir, name))
            os.rename(os.path.join(self.dir, f"at.{self.at}"), os.path.join(self.dir, f"at.{n}"))
            self.at = n

    def has(self, n: int) -> bool:
        return os.path.exists(os.path.join(self.dir, chunk_name(n)))

    def close(self, release_: bool = True) -> bool:
        """Unregister; the last reader out empties the archive's restore queue
        and drops its remaining thaw requests (unless not ``release_``).
        True if it did."""
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        return release(self.spool, self.bid) if release_ else False


def release(spool: Spool, bid: BackupId) -> bool:
    """If no live reader is left, remove the archive's restore queue and its
    thaw requests (failure records stay).  True if it did."""
    clean_dead(spool, bid)
    if live_readers(spool, bid):
        return False
    top = spool.dir("restore", bid)
    try:
        names = os.listdir(top)
    except FileNotFoundError:
        names = []
    for name in names:
        if chunk_number(name) is not None:
            _unlink(os.path.join(top, name))
    drop_requests(spool, bid)
    prune_dir(spool, "restore", bid)
    return True


def drop_partial(spool: Spool, bid: BackupId) -> None:
    """Remove downloads left unfinished by a thaw that died (call only while
    no thaw runs: a running one's are in progress)."""
    top = spool.dir("restore", bid)
    try:
        names = os.listdir(top)
    except FileNotFoundError:
        return
    for name in names:
        if PART_RE.match(name):
            _unlink(os.path.join(top, name))
    prune_dir(spool, "restore", bid)


def _reader_dirs(spool: Spool, bid: BackupId) -> list[str]:
    top = spool.dir("restore", bid)
    try:
        return [os.path.join(top, d) for d in os.listdir(top)
                if d.startswith(READER) or d.startswith(NEW)]
    except FileNotFoundError:
        return []


def _alive(path: str, remove_if_dead: bool = False) -> bool:
    """Whether the reader directory's lock is held (by a live process); a dead
    reader's directory is removed under its lock if asked."""
    try:
        fd = os.open(os.path.join(path, ".lock"), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        if os.path.basename(path).startswith(NEW):
            # being set up (then it is not empty), or its owner died at once
            if not remove_if_dead:
                return True
            try:
                os.rmdir(path)
                return False
            except FileNotFoundError:
                return False
            except OSError:
                return True
        if remove_if_dead:          # a cleaner got halfway
            shutil.rmtree(path, ignore_errors=True)
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        if remove_if_dead:          # while holding its lock: nobody can take it meanwhile
            shutil.rmtree(path, ignore_errors=True)
        return False
    finally:
        os.close(fd)


def clean_dead(spool: Spool, bid: BackupId) -> None:
    """Remove the directories of readers that died (e.g. a killed restore)."""
    for path in _reader_dirs(spool, bid):
        _alive(path, remove_if_dead=True)


def live_readers(spool: Spool, bid: BackupId, but: str | None = None) -> list[str]:
    return [p for p in _reader_dirs(spool, bid) if p != but and _alive(p)]


def others_need(spool: Spool, bid: BackupId, n: int, me: str | None) -> bool:
    """Whether another live reader may still read the shared fragment n."""
    for path in live_readers(spool, bid, but=me):
        try:
            names = os.listdir(path)
        except FileNotFoundError:
            continue
        if "mount" in names or os.path.basename(path).startswith(NEW):
            return True
        if chunk_name(n) in names:
            continue
        at = [int(m.group(1)) for m in map(AT_RE.match, names) if m]
        if not at or min(at) <= n:
            return True
    return False


def queue_bytes(spool: Spool) -> int:
    """Bytes in the restore queue, each file counted once however many links."""
    seen, total = set(), 0
    for dirpath, _, filenames in os.walk(spool.queue("restore")):
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def prune_dir(spool: Spool, queue: str, bid: BackupId) -> None:
    """Remove the archive's directory in ``queue`` if empty, and empty parents."""
    try:
        os.rmdir(spool.dir(queue, bid))
    except OSError:
        return
    spool.prune(queue, bid)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
