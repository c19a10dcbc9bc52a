"""A cache of chunk.0s in the spool: SPOOL/cache/VAULT/PREFIX/ULID.chunk0,
summed up per vault in SPOOL/cache/VAULT.index.

chunk.0 is immutable once written and holds no plaintext (its clear JSON
and the manifest encrypted to the recipients), so a copy may be kept to
list a vault again without fetching every chunk.0: a warm listing costs
only LIST requests.  The cache is not part of the format; deleting it is
always safe.

Every read checks the copy's identity (it must be the chunk.0 of the
archive its file is named after); a copy that does not parse or belongs
elsewhere is dropped and fetched again.  Archives go away (``rm``,
``prune``): ``forget_missing`` drops the copies of archives a complete
listing no longer shows.  Files 0600, directories 0700, written under a
temporary name and renamed, so concurrent listings never see half a file.

The copies are the truth; the index only spares a listing of 10,000
archives 10,000 opens (``ls``, ``prune``, ``check``'s other chain links
and the mount all read through ``read_all``).  It holds, per copy, the clear JSON line read from
it and the stamp of the file it was read from (inode, size, modification
and change time, in nanoseconds).  ``read_all`` still looks at every
file's stamp (one directory scan, no open): an index line is used only
while its file is there with that stamp, else the file is read again (a
replaced, rewritten or new copy) or the line dropped (a removed one).
Each line carries a CRC-32, so a damaged line is read as absent; an index
that does not read at all is read as empty.  It is rewritten whole, under
a temporary name, and renamed, only when a listing found it out of date:
a crash leaves the old index or the new one (and a temporary file, swept
an hour later), and of two concurrent
listings the last rename wins, which costs the next listing at most the
opens of what the other one added.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
import zlib

from . import errors, manifest
from .ids import BackupId
from .spool import Spool, makedirs

log = logging.getLogger("cryophile.catalog")
SUFFIX = ".chunk0"
TMP = ".tmp-"
INDEX_SUFFIX = ".index"
INDEX_MAGIC = b"cryophile-chunk0-index 1\n"
STALE_TMP = 3600         # seconds after which an index write's temporary file is dead

Stamp = tuple[int, int, int, int]       # inode, size, mtime_ns, ctime_ns


def _stamp(st: os.stat_result) -> Stamp:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class MarkCache:
    def __init__(self, spool: Spool):
        self.root = spool.queue("cache")
        self._lock = threading.Lock()       # (puts come from the fetching threads)
        self._index: dict[str, dict[str, tuple[Stamp, bytes]]] = {}   # vault -> key -> line
        self._dirty: set[str] = set()
        self._walked: dict[tuple[str, str], dict[str, str]] = {}   # what read_all saw

    def path(self, bid: BackupId) -> str:
        return os.path.join(self.root, bid.vault, bid.key + SUFFIX)

    def index_path(self, vault: str) -> str:
        return os.path.join(self.root, vault + INDEX_SUFFIX)

    def get(self, bid: BackupId) -> tuple[manifest.ClearInfo, bytes] | None:
        """(clear metadata, whole chunk.0) from the cache, or None."""
        hit = self._read(self.path(bid), bid)
        return None if hit is None else hit[:2]

    def _read(self, path: str, bid: BackupId
              ) -> tuple[manifest.ClearInfo, bytes, Stamp] | None:
        try:
            with open(path, "rb") as f:
                data = f.read()
                stamp = _stamp(os.fstat(f.fileno()))     # of the bytes read
        except OSError:
            return None
        try:
            clear = manifest.read_clear(data)[0]
            manifest.check_identity(clear, bid)
        except errors.Error as exc:
            log.debug("dropping cached chunk.0 of %s: %s", bid, exc)
            self._unlink(path)
            return None
        return clear, data, stamp

    def put(self, bid: BackupId, data: bytes) -> None:
        """Keep a verified chunk.0; a spool that cannot be written only
        costs the next listing its requests."""
        path = self.path(bid)
        try:
            self._replace(path, data)
            stamp = _stamp(os.stat(path))       # (a rename changes the change time)
        except (OSError, errors.SpoolError) as exc:
            log.debug("cannot cache chunk.0 of %s: %s", bid, exc)
            return
        self._note(bid.vault, bid.key, stamp, data)

    def _note(self, vault: str, key: str, stamp: Stamp, data: bytes) -> None:
        line = _clear_line(data)
        with self._lock:
            index = self._index.get(vault)
            if index is not None and line is not None and _indexable(key):
                index[key] = (stamp, line)
                self._dirty.add(vault)

    def read_all(self, vault: str, prefix: str, read: dict[str, bytes] | None = None
                 ) -> dict[str, manifest.ClearInfo]:
        """Archive key (PREFIX/ULID) → clear metadata of every cached
        chunk.0 under VAULT/PREFIX (each checked as ``get`` does), by the
        index where it holds the file's current stamp, else from the file.
        ``read`` receives the whole copies read from their files, by key
        (a caller that needs their bytes then need not read them again)."""
        with self._lock:
            index = self._index.get(vault)
            if index is None:
                index = self._index[vault] = read_index(self.index_path(vault))
        top = os.path.join(self.root, vault)
        files = _scan(top, prefix)
        found: dict[str, manifest.ClearInfo] = {}
        known, lines, stale = [], [], []
        with self._lock:
            for key, (path, stamp) in files.items():
                entry = index.get(key)
                if entry is not None and entry[0] == stamp:
                    known.append(key)
                    lines.append(entry[1])
                else:
                    stale.append(key)
            for key in [k for k in index if _under(k, prefix) and k not in files]:
                del index[key]                  # its copy is gone
                self._dirty.add(vault)
        for key, clear in zip(known, _decode(lines)):
            bid = _bid(vault, key)
            if clear is not None and clear.bid == bid:
                found[key] = clear
            else:                               # (cannot happen unless written so)
                stale.append(key)
        for key in stale:
            path = files[key][0]
            hit = self._read(path, _bid(vault, key))        # (drops a misnamed copy)
            if hit is None:
                files.pop(key)
                with self._lock:
                    if index.pop(key, None) is not None:
                        self._dirty.add(vault)
                continue
            found[key] = hit[0]
            self._note(vault, key, hit[2], hit[1])
            if read is not None:
                read[key] = hit[1]
        self._walked[(vault, prefix)] = {k: p for k, (p, _) in files.items()}
        return found

    def forget_missing(self, vault: str, prefix: str, present: set[str]) -> int:
        """Drop cached chunk.0s under VAULT/PREFIX whose archive key
        (PREFIX/ULID) is not in ``present``; return how many."""
        walked = self._walked.pop((vault, prefix), None)
        if walked is None:
            walked = {k: p for k, (p, _) in _scan(os.path.join(self.root, vault),
                                                   prefix).items()}
        dropped = 0
        for key, path in walked.items():
            if key not in present:
                self._unlink(path)
                dropped += 1
                with self._lock:
                    index = self._index.get(vault)
                    if index is not None and index.pop(key, None) is not None:
                        self._dirty.add(vault)
        return dropped

    def save(self, vault: str) -> None:
        """Write VAULT's index if this listing found it out of date (see
        the module docstring); a spool that cannot be written only costs
        the next listing its opens."""
        with self._lock:
            if vault not in self._dirty:
                return
            self._dirty.discard(vault)
            body = write_index(self._index[vault])
        try:
            self._replace(self.index_path(vault), body)
        except (OSError, errors.SpoolError) as exc:
            log.debug("cannot write the chunk.0 index of vault %s: %s", vault, exc)
            return
        self._sweep()

    def _sweep(self) -> None:
        """Remove the temporary files of index writes that never finished
        (a crash; a write takes milliseconds, so one an hour old is dead)."""
        try:
            with os.scandir(self.root) as entries:
                for entry in entries:
                    if (entry.name.startswith(TMP) and entry.is_file(follow_symlinks=False)
                            and time.time() - entry.stat().st_mtime > STALE_TMP):
                        self._unlink(entry.path)
        except OSError:
            pass

    @classmethod
    def _replace(cls, path: str, data: bytes) -> None:
        """Write ``path`` whole under a temporary name, then rename: a reader
        sees the old file or the new one, never part of one."""
        directory = os.path.dirname(path)
        makedirs(directory)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=TMP)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.rename(tmp, path)
        except BaseException:
            cls._unlink(tmp)
            raise

    @staticmethod
    def _unlink(path: str) -> None:
        try:
            os.unlink(path)
        except OSError:
            pass


def _bid(vault: str, key: str) -> BackupId:
    where, _, ulid = key.rpartition("/")
    return BackupId(vault, where, ulid)


def _under(key: str, prefix: str) -> bool:
    return not prefix or key.startswith(prefix + "/")


def _scan(top: str, prefix: str) -> dict[str, tuple[str, Stamp]]:
    """Archive key → (path, stamp) of every copy under TOP/PREFIX: one
    scan of each directory, one stat per file (no open)."""
    found: dict[str, tuple[str, Stamp]] = {}
    skip = len(os.path.join(top, ""))
    todo = [os.path.join(top, prefix) if prefix else top]
    while todo:
        try:
            with os.scandir(todo.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        todo.append(entry.path)
                    elif entry.name.endswith(SUFFIX) and not entry.name.startswith(TMP):
                        try:
                            stamp = _stamp(entry.stat())
                        except OSError:
                            continue                # removed meanwhile
                        found[entry.path[skip:-len(SUFFIX)]] = (entry.path, stamp)
        except OSError:
            continue                                # (no cache yet, or pruned meanwhile)
    return found


def _clear_line(data: bytes) -> bytes | None:
    """chunk.0's clear JSON line, as read_clear reads it."""
    parts = data.split(b"\n", 2)
    return parts[1] if len(parts) > 1 else None


def _indexable(key: str) -> bool:
    """Whether ``key`` fits in an index line (a copy filed under a name
    that does not is read from its file each time)."""
    if "\t" in key or "\n" in key:
        return False
    try:
        key.encode()
    except UnicodeEncodeError:          # (a file name that is not UTF-8)
        return False
    return True


def _decode(lines: list[bytes]) -> list[manifest.ClearInfo | None]:
    """Each clear JSON line read as read_clear reads it (None where it
    does not read): all at once, as one JSON array, which is twice as
    fast; one by one if that fails."""
    try:
        values = json.loads(b"[" + b",".join(lines) + b"]")
        if len(values) != len(lines):
            raise ValueError("not one value a line")
    except ValueError:
        values = []
        for line in lines:
            try:
                values.append(json.loads(line))
            except ValueError:
                values.append(None)
    result: list[manifest.ClearInfo | None] = []
    for value in values:
        try:
            result.append(None if value is None else manifest.ClearInfo.from_json(value))
        except errors.Error:
            result.append(None)
    return result


def read_index(path: str) -> dict[str, tuple[Stamp, bytes]]:
    """key → (stamp, clear JSON line) of every line of the index at
    ``path`` that reads and whose CRC holds; {} for no index, or one of
    another version."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return {}
    if not data.startswith(INDEX_MAGIC):
        return {}
    index: dict[str, tuple[Stamp, bytes]] = {}
    for line in data[len(INDEX_MAGIC):].split(b"\n"):
        crc, _, rest = line.partition(b"\t")
        try:
            if int(crc, 16) != zlib.crc32(rest) or len(crc) != 8:
                continue
            key, ino, size, mtime, ctime, clear = rest.split(b"\t", 5)
            index[key.decode()] = ((int(ino), int(size), int(mtime), int(ctime)), clear)
        except ValueError:                  # (UnicodeDecodeError too)
            continue
    return index


def write_index(index: dict[str, tuple[Stamp, bytes]]) -> bytes:
    out = [INDEX_MAGIC]
    for key in sorted(index):
        stamp, clear = index[key]
        rest = b"\t".join([key.encode(), *(str(n).encode() for n in stamp), clear])
        out.append(b"%08x\t%s\n" % (zlib.crc32(rest), rest))
    return b"".join(out)
