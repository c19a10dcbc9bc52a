"""ArchiveWriter: bytes in, an archive in the spool out.

Three stages in threads, with bounded queues between them so that memory
stays flat: frames are compressed by a pool of threads (frames are
independent); a worker takes them in order and encrypts them (AES-CFB and
the SHA-1 MDC); a writer hashes (SHA-256) and writes the fragments.  lz4, zstd, cryptography and hashlib release the GIL on large
buffers, so the stages overlap on several cores.

In the caller's thread, every buffer also goes past a streams.Watcher (no
copy, per-record work) so that close() knows whether a zfs, btrfs or tar
stream ended as its kind must, and records what the stream was.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import logging
import os
import queue
import threading
from typing import Callable

from .. import __version__, errors, keys, manifest, streams
from ..fsutil import fsync_dir
from ..ids import BackupId
from ..spool import BackupLock, Spool, makedirs, note_stream
from . import buffers, compress, openpgp
from .split import Splitter, publish

log = logging.getLogger("cryophile.backup")

INDEX_INTERVAL = 16 << 20          # a seek point at least every 16 MiB of input
QUEUE_DEPTH = 4
NOTE_WITHIN = 64 << 20         # a stream's base is named within this much input, or never
COMPRESSORS = 2
_DONE = object()


def _frame_view(view: memoryview) -> memoryview:
    return view


def _drain(q: queue.Queue) -> None:
    """Empty a queue so that a producer blocked on put wakes up."""
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return


class ArchiveWriter:
    def __init__(self, spool: Spool, bid: BackupId, recipients: list,
                 compression: str = "lz4", fragment_size: int = 64 << 20,
                 name: str | None = None, created: datetime.datetime | None = None,
                 before_fragment: Callable[[], None] = lambda: None,
                 parent: str | None = None, stop: threading.Event | None = None):
        self.spool, self.bid, self.name, self.parent = spool, bid, name, parent
        # set by abort: a ``before_fragment`` given the same event (a wait for
        # spool room) ends at once instead of holding the abort up
        self.stopped = stop or threading.Event()
        buffers.reuse_buffers()     # each read and each frame is a fresh ~1 MiB buffer
        self.watcher = streams.Watcher()
        self.stream: streams.Stream | None = None     # what the input was, once closed
        self.compression = compress.check_codec(compression)
        self.compress = compress.compressor(compression)
        self.created = created or datetime.datetime.now(datetime.timezone.utc)
        self.recipients = recipients
        if spool.exists(bid):
            raise errors.UsageError(f"archive {bid} already exists in the spool")
        self.lock = BackupLock(spool, bid)
        self.lock.create(parent)
        self.work_dir = spool.dir("backup", bid)
        self.queue_dir = spool.dir("freeze", bid)
        makedirs(self.queue_dir)
        self.session_key = os.urandom(32)
        self.pkesks = keys.make_pkesks(recipients, self.session_key)
        self.stamp = int(self.created.timestamp())
        self.enc = openpgp.Encryptor(self.session_key, self.stamp, threaded=True)
        self.split = Splitter(self.work_dir, self.queue_dir, fragment_size, before_fragment)
        self.layout = openpgp.Layout(len(self.pkesks), None)   # size not known yet
        self.split.write(self.pkesks)
        self.frame = bytearray()
        self.plain_size = 0           # input bytes taken (caller's thread)
        self.stream_size = 0          # compressed bytes (worker's thread)
        self.plain_done = 0
        self.index: list[list] = []
        self.next_index = 0
        self.indexed_fragment = 0
        self.error: BaseException | None = None
        self.pool = concurrent.futures.ThreadPoolExecutor(COMPRESSORS, "cryophile-compress")
        self.frames: queue.Queue = queue.Queue(QUEUE_DEPTH)
        self.parts: queue.Queue = queue.Queue(QUEUE_DEPTH)
        self.worker = threading.Thread(target=self._work, name="cryophile-encrypt", daemon=True)
        self.writer = threading.Thread(target=self._write, name="cryophile-write", daemon=True)
        self.worker.start()
        self.writer.start()
        self.closed = self.aborted = False
        self.noting = parent is None    # until the stream's base is known (_note_stream)

    # --- caller's side ------------------------------------------------------

    def write(self, data) -> None:
        """Take input; ``data`` may be reused by the caller afterwards.  Given
        ``bytes`` (or a view of bytes), which cannot change, whole frames of it
        are compressed where they are, without a copy."""
        self._check()
        view = memoryview(data)
        frame = _frame_view if isinstance(view.obj, bytes) else bytes
        self.watcher.feed(view)
        self.plain_size += len(view)
        if self.noting:
            self._note_stream()
        fs = compress.FRAME_SIZE
        if self.frame:
            take = view[:fs - len(self.frame)]
            self.frame += take
            view = view[len(take):]
            if len(self.frame) < fs:
                return
            self._put((fs, self.pool.submit(self.compress, self.frame)))
            self.frame = bytearray()
        while len(view) >= fs:          # whole frames straight from the caller's buffer
            self._put((fs, self.pool.submit(self.compress, frame(view[:fs]))))
            view = view[fs:]
        self.frame += view

    def _note_stream(self) -> None:
        """Once the input is recognised as an incremental zfs or btrfs stream,
        record what it was sent from (``spool.STREAM_FILE``): prune and rm
        must not delete the base of a backup still being written, and before
        the seal only this says which archive that is."""
        kind, walker = self.watcher.kind, self.watcher.walker
        if kind is None:
            return                                  # not recognised yet
        ids = walker.identity()[0] if walker is not None else {}
        if not ids and walker is not None and self.plain_size < NOTE_WITHIN:
            return                                  # its first record still to come
        self.noting = False
        if ids.get("fromguid") or ids.get("clone_uuid"):
            note_stream(self.spool, self.bid, {"kind": kind, "complete": None, **ids})

    def _put(self, item) -> None:
        while True:
            self._check()
            try:
                self.frames.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self, incomplete: str = "refuse", allow_empty: bool = True) -> str:
        """Seal the archive (chunk.0); return the backup id.

        Input recognised as a zfs, btrfs or tar stream that does not end as
        its kind must (cut short): with ``incomplete="refuse"`` the archive
        is abandoned and IncompleteStreamError raised; with ``"mark"`` it is
        sealed with ``complete: false`` (state ``incomplete``).  Empty input
        with ``allow_empty=False``: abandoned, EmptyInputError.  Either way
        ``self.stream`` then tells what the input was.
        """
        if incomplete not in ("refuse", "mark"):
            raise ValueError(f"incomplete={incomplete!r}: use 'refuse' or 'mark'")
        self._check()
        self.stream = self.watcher.finish()
        if self.plain_size == 0 and not allow_empty:
            self._refuse(errors.EmptyInputError(
                "the input is empty: nothing was backed up (--allow-empty keeps an "
                "empty archive)"))
        if self.stream.complete is False:
            if incomplete == "refuse":
                self._refuse(errors.IncompleteStreamError(
                    f"the input is a {self.stream.kind} stream that is not whole: "
                    f"{self.stream.reason}; the archive was abandoned"))
            log.warning("backup %s: the %s stream is not whole (%s): sealed as incomplete",
                        self.bid, self.stream.kind, self.stream.reason)
        if self.frame or self.plain_size == 0 and self.compression != "none":
            # an empty input still gets one frame, so that `lz4 -d` accepts it
            self._put((len(self.frame), self.pool.submit(self.compress, bytes(self.frame))))
            self.frame.clear()
        self._put(_DONE)
        self.worker.join()
        self.writer.join()
        self.pool.shutdown()
        self._check()
        self.closed = True
        fragments = self.split.close()
        self._seal(fragments)
        return str(self.bid)

    def _refuse(self, exc: errors.Error):
        self.abort()
        raise exc

    def abort(self) -> None:
        """Stop and remove everything this backup queued."""
        if self.closed or self.aborted:
            return
        self.aborted = True
        self.stopped.set()
        self.error = self.error or errors.Interrupted("backup aborted")
        _drain(self.frames)               # only this thread puts: room is left
        self.frames.put(_DONE)
        self.pool.shutdown(wait=False, cancel_futures=True)
        # every wait of these threads ends now (the stop, the error, _DONE): no
        # time limit, since a thread left running could write into the spool
        # after it was abandoned
        self.worker.join()
        self.writer.join()
        self.enc.stop()
        self.split.abort()
        self.spool.abandon(self.bid)
        self.lock.release()

    # --- worker -------------------------------------------------------------

    def _work(self) -> None:
        try:
            while True:
                item = self.frames.get()
                if self.error is not None:
                    return
                if item is _DONE:
                    self._forward(self.enc.close())
                    return
                plain_len, data = item[0], item[1].result()
                self._index_point()
                self._forward(self.enc.write(data))
                self.stream_size += len(data)
                self.plain_done += plain_len
        except BaseException as exc:      # handed to the caller's thread
            self.error = self.error or exc
            _drain(self.frames)
        finally:
            self._forward(_DONE)

    def _forward(self, item) -> None:
        while self.error is None or item is _DONE:
            try:
                self.parts.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _write(self) -> None:
        try:
            while (parts := self.parts.get()) is not _DONE:
                for part in parts:
                    self.split.write(part)
        except BaseException as exc:
            self.error = self.error or exc
            while self.parts.get() is not _DONE:
                pass

    def _index_point(self) -> None:
        """Record a seek point at this frame if one is due."""
        c = self.layout.stream_to_ciphertext(self.stream_size)
        c0 = c - c % openpgp.BLOCK
        fragment = self.layout.ciphertext_to_message(c0) // self.split.fragment_size
        frame_fragment = self.layout.ciphertext_to_message(c) // self.split.fragment_size
        if fragment != frame_fragment:
            return              # the block straddles fragments: take the next frame
        if self.plain_done < self.next_index and fragment <= self.indexed_fragment and self.index:
            return
        entry = [self.plain_done, self.stream_size, None]
        self.index.append(entry)
        self.next_index = self.plain_done + INDEX_INTERVAL
        self.indexed_fragment = fragment
        self.enc.want_iv(c0, lambda iv: entry.__setitem__(2, iv.hex()))

    # --- sealing ------------------------------------------------------------

    def _seal(self, fragments) -> None:
        layout = openpgp.Layout(len(self.pkesks), self.stream_size)
        if layout.message_size != self.split.total:
            raise AssertionError("message size does not match its layout")
        clear = manifest.ClearInfo(
            vault=self.bid.vault, prefix=self.bid.prefix, ulid=self.bid.ulid,
            created=self.created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            size=self.plain_size, stored=self.split.total,
            fragment_size=self.split.fragment_size, fragments=fragments,
            stream=self.stream.clear(), parent=self.parent)
        body = {
            "format": manifest.FORMAT_VERSION, "software": f"cryophile {__version__}",
            "backup_id": str(self.bid), "vault": self.bid.vault, "prefix": self.bid.prefix,
            "ulid": self.bid.ulid, "name": self.name, "created": clear.created,
            "size": self.plain_size, "compression": self.compression,
            "frame_size": compress.FRAME_SIZE, "cipher": "AES-256",
            "recipients": [r.fingerprint for r in self.recipients],
            "fragment_size": self.split.fragment_size,
            "fragments": [[f.size, f.sha256] for f in fragments],
            "stream_size": self.stream_size, "seipd_start": len(self.pkesks),
            "partial_chunk": openpgp.CHUNK, "index": self.index,
            "stream": self.stream.manifest(), "parent": self.parent,
        }
        session_key = os.urandom(32)
        data = manifest.encode(clear, body, keys.make_pkesks(self.recipients, session_key),
                               session_key, self.stamp)
        path = os.path.join(self.work_dir, "chunk.0")
        try:
            with open(path, "wb") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self._fsync_parents()
            publish(self.work_dir, self.queue_dir, "chunk.0")
        except OSError as exc:
            raise errors.from_oserror(exc, "cannot write chunk.0 to the spool",
                                      errors.SPOOL_FULL) from None
        self.finish()
        log.debug("sealed %s: %d bytes in %d fragments", self.bid, self.plain_size, len(fragments))

    def _fsync_parents(self) -> None:
        """The sealed archive's directory survives a crash of the machine too:
        fsync freeze/VAULT/PREFIX… up to the queue before chunk.0 is published
        (publish fsyncs freeze/…/ULID itself), so a failure publishes nothing."""
        top = self.spool.queue("freeze")
        path = os.path.dirname(self.queue_dir)
        while len(path) >= len(top):
            fsync_dir(path)
            path = os.path.dirname(path)

    def finish(self) -> None:
        """After the seal: freeze may take chunk.0 once backup/…/ULID and its lock
        are gone (a subclass may hold them a while to keep the archive withdrawable)."""
        self.spool.retire_backup(self.bid)
        self.lock.release()
