"""Cut the message into fragments in the spool, each whole before it is queued.

A finished fragment is fsynced and moved to the freeze queue by a thread of
its own, in order, while the next one is written: an fsync takes tens of
milliseconds per 64 MiB, which would otherwise stall the whole pipeline
behind it.  At most ``SYNC_DEPTH`` fragments wait for it, so the data not
yet on disk stays bounded; ``close`` returns once every fragment is queued.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from typing import Callable

from .. import errors
from ..manifest import Fragment
from ..fsutil import fsync_dir
from ..store.base import file_sha256
from . import verdict


SYNC_DEPTH = 2


class Splitter:
    """Writes message bytes as backup/…/chunk.N, then moves each whole one to freeze/.

    ``before_fragment()`` runs before a fragment is started (backpressure).
    """

    def __init__(self, work_dir: str, queue_dir: str, fragment_size: int,
                 before_fragment: Callable[[], None] = lambda: None):
        self.work_dir, self.queue_dir = work_dir, queue_dir
        self.fragment_size = fragment_size
        self.before_fragment = before_fragment
        self.fragments: list[Fragment] = []
        self.file = None
        self.hash = None
        self.used = 0
        self.total = 0
        self.syncing: queue.Queue = queue.Queue(SYNC_DEPTH)
        self.sync_error: BaseException | None = None
        self.syncer: threading.Thread | None = None

    def _open(self) -> None:
        self.before_fragment()
        path = os.path.join(self.work_dir, f"chunk.{len(self.fragments) + 1}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise errors.from_oserror(exc, f"cannot write {path}", errors.SPOOL_FULL) from None
        self.file = os.fdopen(fd, "wb", buffering=0)
        self.hash = hashlib.sha256()
        self.used = 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.file is None:
                self._open()
            part = view[:self.fragment_size - self.used]
            self._write(part)
            view = view[len(part):]
            if self.used == self.fragment_size:
                self._finish()

    def _write(self, part) -> None:
        try:
            self.file.write(part)
        except OSError as exc:
            raise errors.from_oserror(exc, f"cannot write to the spool {self.work_dir}",
                                      errors.SPOOL_FULL) from None
        self.hash.update(part)
        self.used += len(part)
        self.total += len(part)

    def _finish(self) -> None:
        self._check()
        if self.syncer is None:
            self.syncer = threading.Thread(target=self._sync, name="cryophile-fsync",
                                           daemon=True)
            self.syncer.start()
        self.fragments.append(Fragment(self.used, self.hash.hexdigest()))
        self.syncing.put((self.file, len(self.fragments), self.hash.digest()))
        self.file = None

    def _sync(self) -> None:
        """The fsync thread: each finished fragment to disk, then into the queue."""
        while (item := self.syncing.get()) is not None:
            file, n, sha256 = item
            try:
                if self.sync_error is None:
                    record_sha256(file.fileno(), sha256)
                    verdict.record(file.fileno(), sha256.hex())
                    os.fsync(file.fileno())
                    file.close()
                    publish(self.work_dir, self.queue_dir, f"chunk.{n}")
            except OSError as exc:
                self.sync_error = errors.from_oserror(exc, f"cannot queue fragment {n}",
                                                      errors.SPOOL_FULL)
            except BaseException as exc:
                self.sync_error = exc
            finally:
                file.close()

    def _check(self) -> None:
        if self.sync_error is not None:
            raise self.sync_error

    def _stop_syncing(self) -> None:
        if self.syncer is not None:
            self.syncing.put(None)
            self.syncer.join()
            self.syncer = None

    def close(self) -> list[Fragment]:
        if self.file is not None and self.used:
            self._finish()
        self._stop_syncing()
        self._check()
        return self.fragments

    def abort(self) -> None:
        self.sync_error = self.sync_error or errors.Interrupted("backup aborted")
        self._stop_syncing()
        if self.file is not None:
            self.file.close()
            self.file = None


SHA256_XATTR = "user.cryophile.sha256"


def record_sha256(fd: int, sha256: bytes) -> None:
    """Keep the fragment's SHA-256 with it (an extended attribute), so that
    freeze need not read it all again to hash it.  A filesystem without
    user xattrs just goes without."""
    try:
        os.setxattr(fd, SHA256_XATTR, sha256)
    except OSError:
        pass


def fragment_sha256(path: str) -> bytes:
    """The SHA-256 the writer recorded with a fragment, else hashed now.
    Bytes changed on disk since are still caught: by the vault, which checks
    an upload against it (S3), and by restore, against the manifest."""
    try:
        recorded = os.getxattr(path, SHA256_XATTR)
    except OSError:
        recorded = b""
    return recorded if len(recorded) == 32 else file_sha256(path)


def publish(work_dir: str, queue_dir: str, name: str) -> None:
    """Link a whole, fsynced file from work_dir into queue_dir, then unlink it."""
    src, dst = os.path.join(work_dir, name), os.path.join(queue_dir, name)
    try:
        os.link(src, dst)
    except FileExistsError:
        os.unlink(dst)             # left by an earlier attempt at the same ULID
        os.link(src, dst)
    fsync_dir(queue_dir)
    os.unlink(src)
