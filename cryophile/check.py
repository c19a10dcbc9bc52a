"""Checking archives in their vault without restoring them.

Three depths, none of which writes plaintext anywhere:

- metadata (the default): one LIST and each chunk.0; every fragment present
  with the size chunk.0 records, in the storage class expected (chunk.0
  STANDARD, fragments the vault's class; a local vault has none), no
  object that chunk.0 does not know, chains of incrementals unbroken.
  No secret key, no thaw.
- ``read_data``: also every fragment is thawed if need be, downloaded and
  hashed against its SHA-256 in chunk.0 (nothing kept on disk).  Still no
  secret key.
- ``decrypt``: also the whole message is decrypted through the MDC and
  decompressed into nothing; fragments are downloaded into a temporary
  directory (in the spool) for that, and removed afterwards.

Each problem is a ``Problem`` (one line for the user); the exit code is the
worst of them: damaged 9, missing or truncated 8, storage 10, a stream
sealed incomplete 14.
Synchronous: a CLI runs it directly.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import logging
import os
import re
import shutil
import tempfile
import time
from typing import Callable, Iterable

from . import chains, errors, manifest, restorequeue
from .ids import BackupId
from .markcache import MarkCache
from .spool import being_written
from .store.base import State

log = logging.getLogger("cryophile.check")

OBJECT_RE = re.compile(r"^(?:(.+)/)?([0-9A-HJKMNP-TV-Z]{26})/chunk\.(\d+)$")
MARK_CLASS = "STANDARD"      # chunk.0 is never archived (freeze.LIST_CLASS)
NO_CLASS = ("LOCAL",)        # stores without storage classes
POLL_MIN, POLL_MAX = 1.0, 300.0
MARK_FETCHES = 8             # chunk.0s read at once

DAMAGED, MISSING, STORAGE, INCOMPLETE = "damaged", "missing", "storage", "incomplete"
EXIT = {DAMAGED: errors.IntegrityError.exit_code, MISSING: errors.MissingFragmentError.exit_code,
        STORAGE: errors.StoreError.exit_code, INCOMPLETE: errors.IncompleteStreamError.exit_code}


@dataclasses.dataclass
class Problem:
    archive: str           # VAULT/PREFIX/ULID
    kind: str              # damaged | missing | storage | incomplete
    message: str
    key: str | None = None

    def __str__(self) -> str:
        return f"{self.archive}: {self.message}"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Archive:
    """What the vault holds of one archive directory PREFIX/ULID/."""

    bid: BackupId
    objects: dict[int, object] = dataclasses.field(default_factory=dict)   # n -> ObjectInfo
    clear: manifest.ClearInfo | None = None
    encrypted: bytes = b""

    # what chain resolution looks at (the interface of catalog entries)
    @property
    def stream(self) -> dict | None:
        return self.clear.stream if self.clear else None

    @property
    def parent(self) -> str | None:
        return self.clear.parent if self.clear else None


def fetch_marks(store, archives: Iterable[Archive], workers: int = MARK_FETCHES,
                cache: MarkCache | None = None) -> dict[str, errors.Error | None]:
    """Read each archive's chunk.0 (several at a time: they are small and
    one request each) into ``clear``/``encrypted``; by key, None or why not.
    Store failures other than a missing or archived object are raised.
    With ``cache``, a copy the spool keeps stands for the vault's (chunk.0 is
    immutable), read as ``ls`` reads it: through the vault's cache index
    where it holds the copy's current stamp (then only ``clear`` is filled:
    chains and plans need nothing else), else from the copy; what is
    fetched is kept, and the index written if it was out of date.  Without
    ``cache``: ``check`` reads the vault's own.  (A copy that does not read
    or belongs elsewhere is dropped by the cache and fetched again.)"""
    archives = list(archives)
    indexed = _indexed(cache, archives)

    def one(archive: Archive) -> errors.Error | None:
        if 0 not in archive.objects:
            return None
        hit = indexed.get(archive.bid.key)
        if hit is not None:
            archive.clear = hit
            return None
        try:        # (no usable copy: read_all has looked at every one, index or not)
            buf = io.BytesIO()
            store.get(archive.bid.fragment_key(0), buf)
            data = buf.getvalue()
            clear, encrypted = manifest.read_clear(data)
            manifest.check_identity(clear, archive.bid)
        except (errors.NotFoundError, errors.NotRestoredError, errors.IntegrityError) as exc:
            return exc
        if cache is not None:
            cache.put(archive.bid, data)
        archive.clear, archive.encrypted = clear, encrypted
        return None
    with concurrent.futures.ThreadPoolExecutor(workers, "cryophile-marks") as pool:
        found = {a.bid.key: r for a, r in zip(archives, pool.map(one, archives))}
    if cache is not None:
        for vault in {a.bid.vault for a in archives}:
            cache.save(vault)
    return found


def _indexed(cache: MarkCache | None, archives: list[Archive]
             ) -> dict[str, manifest.ClearInfo]:
    """Clear metadata of the archives' cached chunk.0s, by key, read through
    each vault's cache index under the archives' longest common prefix."""
    if cache is None:
        return {}
    found: dict[str, manifest.ClearInfo] = {}
    for vault in {a.bid.vault for a in archives}:
        mine = [a for a in archives if a.bid.vault == vault and 0 in a.objects]
        if not mine:
            continue
        prefix = os.path.commonpath([a.bid.prefix for a in mine])   # whole segments
        found.update(cache.read_all(vault, prefix))
    return found


def exit_code(problems: Iterable[Problem]) -> int:
    kinds = {p.kind for p in problems}
    for kind in (DAMAGED, MISSING, STORAGE, INCOMPLETE):
        if kind in kinds:
            return EXIT[kind]
    return 0


def scan(store, vault: str, prefix: str = "", ulid: str | None = None) -> dict[str, Archive]:
    """The vault's archive directories under PREFIX (or the one archive)."""
    where = f"{prefix}/" if prefix else ""
    if ulid:
        where += ulid + "/"
    found: dict[str, Archive] = {}
    for info in store.list(where):
        m = OBJECT_RE.match(info.key)
        if not m:
            continue
        bid = BackupId(vault, m.group(1) or "", m.group(2))
        found.setdefault(bid.key, Archive(bid)).objects[int(m.group(3))] = info
    return found


class Checker:
    def __init__(self, store, storage_class: str, *, queued: Callable[[BackupId], bool],
                 parents: Callable[[list], dict] | None = None,
                 restore: tuple[str, int] = ("Standard", 1), cache: MarkCache | None = None,
                 widen: Callable[[], tuple[Iterable[Archive], Iterable]] | None = None,
                 spool=None, read_data: bool = False):
        self.store = store
        self.cache = cache                    # chunk.0s of the chains' other links
        self.widen = widen                    # the whole vault's archives and queued ones
        self.spool = spool                    # its thaw failure records are confirmed or dropped
        self.reading = read_data              # read_data will follow: it settles the records
        self.storage_class = storage_class
        self.queued = queued                  # bid -> still in the spool's freeze queue?
        self.parents = parents or chains.parents
        self.tier, self.days = restore
        self.problems: list[Problem] = []
        self.checked: list[Archive] = []

    def problem(self, archive: Archive, kind: str, message: str, key: str | None = None):
        p = Problem(str(archive.bid), kind, message, key)
        log.debug("%s", p)
        self.problems.append(p)

    # --- metadata ------------------------------------------------------------

    def metadata(self, archives: dict[str, Archive], context: Iterable[Archive] = (),
                 queued: Iterable = ()) -> None:
        """Check ``archives``; ``context`` (other archives of the vault) and
        ``queued`` (sealed archives still in the spool, with bid, stream and
        parent) only serve as links of their chains."""
        others = [a for a in context if a.bid.key not in archives]
        marks = fetch_marks(self.store, archives.values())     # the vault's own
        marks.update(fetch_marks(self.store, others, cache=self.cache))
        for archive in sorted(archives.values(), key=lambda a: (a.bid.prefix, a.bid.ulid)):
            if 0 not in archive.objects:
                if not self.queued(archive.bid):
                    self.problem(archive, MISSING,
                                 f"{len(archive.objects)} object(s) without chunk.0: left by an "
                                 "interrupted backup or rm (cryophile rm removes them)")
                continue
            if self._mark(archive, marks[archive.bid.key]):
                if not archive.clear.complete:
                    self.problem(archive, INCOMPLETE, f"sealed incomplete: its "
                                 f"{archive.clear.kind} stream was cut short when it was "
                                 "written, so it is not a whole backup (restore gives what "
                                 "it holds and exits 14)")
                self._fragments(archive)
                self._records(archive)
                self.checked.append(archive)
        self._chains([a for a in others if a.clear is not None], list(queued))

    def _mark(self, archive: Archive, failure: errors.Error | None) -> bool:
        key = archive.bid.fragment_key(0)
        info = archive.objects[0]
        if info.storage_class not in NO_CLASS and info.storage_class != MARK_CLASS:
            self.problem(archive, STORAGE, f"chunk.0 is in storage class {info.storage_class}, "
                         f"expected {MARK_CLASS} (listing and restore need it readable)", key)
        if isinstance(failure, errors.NotRestoredError):
            self.problem(archive, STORAGE, "chunk.0 is archived: it cannot be read without "
                         "a thaw", key)
        elif isinstance(failure, errors.NotFoundError):
            self.problem(archive, MISSING, "chunk.0 vanished while checking", key)
        elif failure is not None:
            self.problem(archive, DAMAGED, f"chunk.0: {failure}", key)
        return failure is None

    def _fragments(self, archive: Archive) -> None:
        frags = archive.clear.fragments
        for n, frag in enumerate(frags, 1):
            key = archive.bid.fragment_key(n)
            info = archive.objects.get(n)
            if info is None:
                self.problem(archive, MISSING, f"chunk.{n} is missing", key)
                continue
            if info.size != frag.size:
                kind = MISSING if info.size < frag.size else DAMAGED
                self.problem(archive, kind, f"chunk.{n} has {info.size} bytes, chunk.0 "
                             f"records {frag.size}", key)
            if info.storage_class not in NO_CLASS and info.storage_class != self.storage_class:
                self.problem(archive, STORAGE, f"chunk.{n} is in storage class "
                             f"{info.storage_class}, expected {self.storage_class}", key)
        for n in sorted(set(archive.objects) - set(range(len(frags) + 1))):
            self.problem(archive, DAMAGED, f"chunk.{n} is not one of the {len(frags)} "
                         "fragments chunk.0 records", archive.bid.fragment_key(n))

    def _records(self, archive: Archive) -> None:
        """The spool's thaw failure records of the archive: dropped when the
        vault's object is no longer the one thaw saw, or chunk.0 (just read)
        for the mark's; else reported (without read_data: reading it again
        settles a record, see read_each)."""
        if self.spool is None:
            return
        if restorequeue.clear_failure(self.spool, archive.bid, 0):
            log.info("%s: chunk.0 reads: its thaw failure record is dropped", archive.bid)
        held = restorequeue.drop_stale(self.spool, archive.bid, archive.objects)
        if self.reading:
            return
        for n, exc in sorted(held.items()):
            kind = DAMAGED if isinstance(exc, errors.IntegrityError) else MISSING
            self.problem(archive, kind, f"chunk.{n}: a thaw gave up on it ({exc}); "
                         "--read-data reads it again", archive.bid.fragment_key(n))

    def _chains(self, context: list, queued: list) -> None:
        """Links are looked for among the context first; a chain broken there
        is looked for again in the whole vault (``widen``: a base may live
        under another prefix), which costs one more listing only then."""
        checked = {a.bid.key: a for a in self.checked}
        links = self.parents([*self.checked, *context, *queued])
        if self.widen is not None and any(isinstance(links.get(u), chains.Missing)
                                          for u in checked):
            known = {a.bid.key for a in [*self.checked, *context]}
            more, more_queued = self.widen()
            more = [a for a in more if a.bid.key not in known and 0 in a.objects]
            fetch_marks(self.store, more, cache=self.cache)
            links = self.parents([*self.checked, *context, *queued,
                                  *(a for a in more if a.clear is not None), *more_queued])
        for key, archive in checked.items():
            up = links.get(key)
            if up is not None and not isinstance(up, str):
                self.problem(archive, MISSING, "chain broken: needs "
                             f"{getattr(up, 'what', up)}, which is not in the vault")

    # --- data ------------------------------------------------------------------

    def read_data(self, archive: Archive) -> None:
        """Thaw, download and hash every fragment of ``archive``."""
        self.read_each(archive, lambda n, key: _HashSink())

    def read_each(self, archive: Archive, sink_for) -> list[int]:
        """Download each present, right-sized fragment into ``sink_for(n, key)``
        and check it; return the fragments that passed."""
        frags = archive.clear.fragments
        todo = [n for n in range(1, len(frags) + 1)
                if n in archive.objects and archive.objects[n].size == frags[n - 1].size]
        for n in todo:
            self._ask_restore(archive.bid.fragment_key(n))
        good = []
        for n in todo:
            key = archive.bid.fragment_key(n)
            try:
                self._wait_restored(key)
                sink = sink_for(n, key)
                try:
                    self.store.get(key, sink)
                finally:
                    sink.close()
            except errors.NotFoundError:
                self.problem(archive, MISSING, f"chunk.{n} vanished while checking", key)
                continue
            if sink.size != frags[n - 1].size:
                self.problem(archive, MISSING, f"chunk.{n}: read {sink.size} bytes, "
                             f"expected {frags[n - 1].size}", key)
            elif sink.hexdigest() != frags[n - 1].sha256:
                self.problem(archive, DAMAGED, f"chunk.{n} fails its SHA-256 check: "
                             "it is damaged", key)
            else:
                good.append(n)
                if self.spool is not None:      # read back whole: a thaw's verdict is stale
                    if restorequeue.clear_failure(self.spool, archive.bid, n):
                        log.info("%s: chunk.%d reads back whole: its thaw failure record is "
                                 "dropped", archive.bid, n)
        return good

    def decrypt(self, archive: Archive, unlock, workdir: str) -> None:
        """read_data, then decrypt and decompress into nothing (MDC, frame
        checksums, size): fragments go through ``workdir``, then are removed."""
        from .pipeline import reader
        tmp = tempfile.mkdtemp(prefix=f".check-{archive.bid.ulid}-", dir=workdir)
        try:
            def path(n: int) -> str:
                return os.path.join(tmp, f"chunk.{n}")
            good = self.read_each(archive, lambda n, key: _HashSink(open(path(n), "wb")))
            if len(good) != len(archive.clear.fragments):
                return                      # already reported; nothing to decrypt through
            try:
                body = manifest.read_manifest(archive.encrypted, archive.clear, unlock)
                reader.restore(archive.clear, body, unlock, path, _Null())
            except (errors.IntegrityError, errors.MissingFragmentError) as exc:
                kind = DAMAGED if isinstance(exc, errors.IntegrityError) else MISSING
                self.problem(archive, kind, f"does not decrypt: {exc}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _ask_restore(self, key: str) -> None:
        try:
            if self.store.head(key).state is State.ARCHIVED:
                log.info("requesting restore of %s (%s tier, %d days)", key, self.tier, self.days)
                self.store.request_restore(key, tier=self.tier, days=self.days)
        except errors.NotFoundError:
            pass                            # reported when read

    def _wait_restored(self, key: str) -> None:
        delay = POLL_MIN
        while (state := self.store.head(key).state) is not State.AVAILABLE:
            if state is State.ARCHIVED:
                self.store.request_restore(key, tier=self.tier, days=self.days)
            log.debug("%s is being restored; next look in %.0f s", key, delay)
            time.sleep(delay)
            delay = min(delay * 2, POLL_MAX)


class _HashSink:
    """Hashes what store.get writes, optionally passing it on to a file."""

    def __init__(self, f=None):
        self.f, self.hash, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.hash.update(data)
        self.size += len(data)
        if self.f is not None:
            self.f.write(data)
        return len(data)

    def hexdigest(self) -> str:
        return self.hash.hexdigest()

    def close(self) -> None:
        if self.f is not None:
            self.f.close()


class _Null:
    def write(self, data) -> int:
        return len(data)

    def flush(self) -> None:
        pass


@dataclasses.dataclass
class Link:
    """An archive as chain resolution sees it (bid, stream, parent)."""

    bid: BackupId
    stream: dict | None
    parent: str | None
    stored: int | None = None       # a queued archive's bytes in the vault once frozen


def queued_entries(spool, vault: str, prefix: str = "") -> list[Link]:
    """Sealed archives of VAULT[/PREFIX] in the spool's freeze queue.  One
    whose chunk.0 cannot be read is an error: the base it needs is unknown."""
    found = []
    for bid in spool.archives("freeze"):
        if bid.vault != vault or not (not prefix or bid.prefix == prefix
                                      or bid.prefix.startswith(prefix + "/")):
            continue
        try:
            clear, stored = manifest.load_sized(spool.path("freeze", bid, 0))
        except FileNotFoundError:
            continue                  # not sealed, or frozen and gone meanwhile
        except OSError as exc:
            raise errors.from_oserror(exc, f"cannot read chunk.0 of {bid} in the freeze "
                                           "queue") from None
        except errors.Error as exc:   # its base would not be known: never guessed
            raise type(exc)(f"chunk.0 of {bid} in the freeze queue: {exc.message} "
                            f"(`cryophile rm {bid}` removes the archive)") from None
        found.append(Link(bid, clear.stream, clear.parent, stored))
    return found


def writing_entries(spool, vault: str, prefix: str = "") -> list[Link]:
    """Backups of VAULT[/PREFIX] still being written whose base is known
    (``--parent``, or an incremental zfs/btrfs stream recognised as it comes
    in): that base must stay (spool.being_written)."""
    found = []
    for bid in spool.archives("backup"):
        if bid.vault != vault or not (not prefix or bid.prefix == prefix
                                      or bid.prefix.startswith(prefix + "/")):
            continue
        record = being_written(spool, bid)
        if record is not None and (record[0] or record[1]):
            found.append(Link(bid, record[1], record[0]))
    return found
