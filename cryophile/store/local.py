"""A vault in a local directory (``file:///srv/vaults`` → /srv/vaults/VAULT/…).

Objects are written to a temporary name, fsynced and hard-linked to their
key, so an object is whole or absent and never replaced: link(2) fails with
EEXIST where rename(2) would overwrite, and an existing object then counts
only if it holds the same bytes.  A file on the same filesystem as the spool
is hard-linked instead of copied.
"""

from __future__ import annotations

import datetime
import errno
import os
import shutil
import uuid
from typing import BinaryIO, Iterator

from .. import errors, throttle
from ..fsutil import fsync_dir
from .base import ObjectInfo, State, Store, check_same, file_sha256

COPY_BLOCK = 1 << 20


class LocalStore(Store):
    storage_class = "LOCAL"

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.url = "file://" + self.root

    def _path(self, key: str) -> str:
        return os.path.join(self.root, key)

    def put(self, key, path, *, size, sha256=None, storage_class=None) -> None:
        dst = self._path(key)
        tmp = f"{dst}.tmp-{uuid.uuid4().hex}"
        try:
            os.makedirs(os.path.dirname(dst), mode=0o750, exist_ok=True)
            try:
                os.link(path, tmp)
            except OSError:
                self._copy(path, tmp)
            try:
                os.link(tmp, dst)
            except FileExistsError:
                self._settle(key, path, size, sha256)
            except FileNotFoundError:
                if not os.path.exists(dst):
                    raise
                # a concurrent put of the same key swept our temporary
                self._settle(key, path, size, sha256)
            fsync_dir(os.path.dirname(dst))
        except OSError as exc:
            raise _error(exc, f"cannot store {key} in {self.url}") from None
        finally:
            _unlink(tmp)
        _sweep(dst)

    def _settle(self, key: str, path: str, size: int, sha256: bytes | None) -> None:
        """``key`` exists: success if it holds our bytes, else ConflictError."""
        try:
            existing = file_sha256(self._path(key))
        except FileNotFoundError:       # deleted meanwhile: let the caller retry
            raise errors.TransientStoreError(f"{key} in {self.url} vanished while "
                                             "being stored") from None
        info = self.head(key)
        check_same(self.url, key, size, sha256 or file_sha256(path),
                   ObjectInfo(key, info.size, sha256=existing))

    @staticmethod
    def _copy(src: str, dst: str) -> None:
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            os.fchmod(fout.fileno(), 0o640)
            shutil.copyfileobj(throttle.paced_upload(fin), fout, COPY_BLOCK)
            fout.flush()
            os.fsync(fout.fileno())

    def get(self, key, out: BinaryIO, *, start=0, end=None) -> int:
        try:
            with open(self._path(key), "rb") as f:
                f.seek(start)
                left = None if end is None else end - start
                done = 0
                while left is None or left > 0:
                    unit = throttle.download_block(COPY_BLOCK)
                    block = f.read(unit if left is None else min(unit, left))
                    if not block:
                        break
                    throttle.downloaded(len(block))
                    out.write(block)
                    done += len(block)
                    if left is not None:
                        left -= len(block)
                return done
        except FileNotFoundError:
            raise errors.NotFoundError(f"{key} is not in {self.url}") from None
        except OSError as exc:
            raise _error(exc, f"cannot read {key} from {self.url}") from None

    def head(self, key) -> ObjectInfo:
        try:
            st = os.stat(self._path(key))
        except FileNotFoundError:
            raise errors.NotFoundError(f"{key} is not in {self.url}") from None
        except OSError as exc:
            raise _error(exc, f"cannot read {key} from {self.url}") from None
        return ObjectInfo(key, st.st_size, State.AVAILABLE, self.storage_class,
                          modified=_mtime(st))

    def request_restore(self, key, *, tier, days) -> None:
        self.head(key)

    def list(self, prefix="", *, expected=()) -> Iterator[ObjectInfo]:
        if not os.path.isdir(self.root):
            return
        top = os.path.join(self.root, "")
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            for name in sorted(filenames):
                if ".tmp-" in name:
                    continue
                full = os.path.join(dirpath, name)
                key = full[len(top):]            # relpath, without its cost per file
                if key.startswith(prefix):
                    try:
                        st = os.stat(full)
                    except FileNotFoundError:
                        continue
                    yield ObjectInfo(key, st.st_size, State.AVAILABLE, self.storage_class,
                                     modified=_mtime(st))

    def delete(self, key) -> None:
        path = self._path(key)
        _unlink(path)
        # drop directories the delete left empty, up to the vault root
        parent = os.path.dirname(path)
        while len(parent) > len(self.root):
            try:
                os.rmdir(parent)
            except OSError:
                break
            parent = os.path.dirname(parent)


def _mtime(st: os.stat_result) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(st.st_mtime, datetime.timezone.utc)


def _sweep(dst: str) -> None:
    """Remove temporaries of ``dst`` left by a put that was killed before its rename."""
    directory, name = os.path.split(dst)
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for other in names:
        if other.startswith(name + ".tmp-"):
            _unlink(os.path.join(directory, other))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except (FileNotFoundError, NotADirectoryError):   # nothing there to remove
        pass


def _error(exc: OSError, what: str) -> errors.Error:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return errors.StoreError(f"{what}: no space left on device")
    return errors.StoreError(f"{what}: {exc.strerror or exc}")
