"""A cache of chunk.0s in the spool: SPOOL/cache/VAULT/PREFIX/ULID.chunk0.

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
"""

from __future__ import annotations

import logging
import os
import tempfile

from . import errors, manifest
from .ids import BackupId
from .spool import Spool, makedirs

log = logging.getLogger("cryophile.catalog")
SUFFIX = ".chunk0"


class MarkCache:
    def __init__(self, spool: Spool):
        self.root = spool.queue("cache")

    def path(self, bid: BackupId) -> str:
        return os.path.join(self.root, bid.vault, bid.key + SUFFIX)

    def get(self, bid: BackupId) -> tuple[manifest.ClearInfo, bytes] | None:
        """(clear metadata, whole chunk.0) from the cache, or None."""
        path = self.path(bid)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return None
        try:
            clear = manifest.read_clear(data)[0]
            manifest.check_identity(clear, bid)
        except errors.Error as exc:
            log.debug("dropping cached chunk.0 of %s: %s", bid, exc)
            self._unlink(path)
            return None
        return clear, data

    def put(self, bid: BackupId, data: bytes) -> None:
        """Keep a verified chunk.0; a spool that cannot be written only
        costs the next listing its requests."""
        path = self.path(bid)
        try:
            makedirs(os.path.dirname(path))
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.rename(tmp, path)
            except BaseException:
                self._unlink(tmp)
                raise
        except (OSError, errors.SpoolError) as exc:
            log.debug("cannot cache chunk.0 of %s: %s", bid, exc)

    def read_all(self, vault: str, prefix: str) -> dict[str, manifest.ClearInfo]:
        """Archive key (PREFIX/ULID) → clear metadata of every cached
        chunk.0 under VAULT/PREFIX (each checked as ``get`` does)."""
        top = os.path.join(self.root, vault)
        start = os.path.join(top, prefix) if prefix else top
        skip = len(os.path.join(top, ""))
        found = {}
        for dirpath, _dirs, files in os.walk(start):
            for name in files:
                if name.startswith(".tmp-") or not name.endswith(SUFFIX):
                    continue
                key = os.path.join(dirpath, name)[skip:-len(SUFFIX)]
                where, _, ulid = key.rpartition("/")
                hit = self.get(BackupId(vault, where, ulid))     # (drops a misnamed copy)
                if hit is not None:
                    found[key] = hit[0]
        return found

    def forget_missing(self, vault: str, prefix: str, present: set[str]) -> int:
        """Drop cached chunk.0s under VAULT/PREFIX whose archive key
        (PREFIX/ULID) is not in ``present``; return how many."""
        top = os.path.join(self.root, vault)
        start = os.path.join(top, prefix) if prefix else top
        dropped = 0
        skip = len(os.path.join(top, ""))
        for dirpath, _dirs, files in os.walk(start):
            for name in files:
                if name.startswith(".tmp-") or not name.endswith(SUFFIX):
                    continue
                full = os.path.join(dirpath, name)
                if full[skip:-len(SUFFIX)] not in present:
                    self._unlink(full)
                    dropped += 1
        return dropped

    @staticmethod
    def _unlink(path: str) -> None:
        try:
            os.unlink(path)
        except OSError:
            pass
