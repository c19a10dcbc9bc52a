"""Random access to an archive's plaintext, through the seek index.

Blocking: call it from a thread.  Reading on from where the last read
ended continues the current stream; a read elsewhere restarts at the last
index entry at or before it (docs/FORMAT.md, "Resuming decryption").  Each
fragment's SHA-256 is checked before use.  From offset 0 the whole message
is parsed, so the MDC is checked when a read reaches the end; from a seek,
the ciphertext block before it must match the index, and at the end the
MDC packet must follow the literal data.  Frames carry checksums.
Reading, verifying and decrypting run in a thread of their own, a few MiB
ahead of decompression in the caller's thread.
"""

from __future__ import annotations

import bisect
import queue
import threading
from typing import Callable, Iterator

from .. import errors
from ..manifest import ClearInfo
from . import buffers, compress, openpgp
from .reader import Ahead, VerifiedFile, open_fragment, open_verified

BLOCK_SIZE = 1 << 20
SKIP_LIMIT = 32 << 20      # farther than this ahead: seek through the index
PREFETCH = 4               # decrypted blocks ready ahead of decompression
WORKERS = 2                # threads decompressing frames


class PlainReader:
    def __init__(self, clear: ClearInfo, manifest: dict, unlock,
                 fragment_path: Callable[[int], str]):
        buffers.reuse_buffers()
        self.clear, self.manifest = clear, manifest
        self.fragment_path = fragment_path
        self.size = manifest["size"]
        self.layout = openpgp.Layout(manifest["seipd_start"], manifest["stream_size"])
        self.index = [(p, s, bytes.fromhex(iv)) for p, s, iv in manifest["index"]]
        self.starts = [p for p, _, _ in self.index]
        self.verified: dict[int, tuple] = {}     # fragment -> stamp of the file hashed
        self.ahead: Ahead | None = None
        self.lock = threading.Lock()
        self.unlock = unlock
        self.key: bytes | None = None
        self.stream: Iterator[bytes] | None = None
        self.prefetch: Prefetch | None = None
        self.pos = 0
        self.buf = memoryview(b"")

    def read(self, offset: int, size: int) -> bytes | memoryview:
        """Up to ``size`` bytes at ``offset``: bytes, or a read-only view of
        bytes (a stored frame, handed on uncopied)."""
        with self.lock:
            if offset >= self.size or size <= 0:
                return b""
            try:
                return self._read(offset, size)
            except BaseException:
                self.close_stream()       # the next read starts afresh
                raise

    def _read(self, offset: int, size: int) -> bytes | memoryview:
        size = min(size, self.size - offset)
        if self.stream is None or offset < self.pos or offset - self.pos > SKIP_LIMIT \
                and self._entry(offset)[0] > self.pos:
            self._seek(offset)
        self._skip(offset - self.pos)
        first = self._take(size)
        if len(first) == size:        # the usual case: a whole frame, handed on uncopied
            out = first
        else:                         # pieces (views of fresh blocks) joined: one copy
            parts, got = [first], len(first)
            while got < size:
                part = self._take(size - got)
                parts.append(part)
                got += len(part)
            out = b"".join(parts)
        if self.pos == self.size:
            self._finish()
        return out
    def _finish(self) -> None:
        """At the end of the plaintext, run the stream to its end: that checks
        the MDC (or, from a seek, that the MDC packet is where it belongs) and
        the last frame, so that no read of the end is served unverified."""
        if self.buf or any(len(block) for block in self.stream):
            raise errors.IntegrityError("archive holds more data than its stated size")

    def _take(self, n: int) -> bytes | memoryview:
        """Up to n bytes of the current block: the block itself when it is
        bytes taken whole, else a view of it."""
        if not self.buf:
            block = next(self.stream, None)
            if block is None:
                raise errors.IntegrityError("archive ends before its stated size")
            if isinstance(block, bytes) and len(block) <= n:
                self.pos += len(block)
                return block
            self.buf = memoryview(block)
        part, self.buf = self.buf[:n], self.buf[n:]
        self.pos += len(part)
        return part

    def _skip(self, n: int) -> None:
        while n > 0:
            n -= len(self._take(n))

    def _entry(self, offset: int) -> tuple[int, int, bytes]:
        i = bisect.bisect_right(self.starts, offset) - 1
        return self.index[i] if i >= 0 else (0, -1, b"")

    def _seek(self, offset: int) -> None:
        plain, stream_offset, iv = self._entry(offset)
        codec, frames = self.manifest["compression"], self.manifest.get("frame_size")
        self.buf = memoryview(b"")
        self.close_stream()
        if stream_offset <= 0 or plain == 0:
            mdc = openpgp.Mdc(frames_vouch=True)     # as restore: checksummed frames vouch

            def literal():
                src = openpgp.ByteSource(self._blocks(0))
                yield from openpgp.decrypt(src, self._unlock_and_remember, mdc)
            self.prefetch = Prefetch(literal())
            self.stream = compress.decompress(codec, self.prefetch, frames, mdc.frame, WORKERS)
            self.pos = 0
            return
        if self.key is None:
            src = openpgp.ByteSource(self._blocks(0))
            pkesks, _ = openpgp.read_session_packets(src)
            self._unlock_and_remember(pkesks)
        start, iv_in_src = self.layout.resume_start(stream_offset, self.clear.fragment_size)

        def literal_from():
            src = openpgp.ByteSource(self._blocks(start))
            yield from openpgp.decrypt_from(src, self.layout, self.key, stream_offset, iv,
                                            iv_in_src)
        self.prefetch = Prefetch(literal_from())
        self.stream = compress.decompress(codec, self.prefetch, frames, None, WORKERS)
        self.pos = plain

    def close_stream(self) -> None:
        """Stop the decryption thread of the current stream, if any."""
        if self.prefetch is not None:
            self.prefetch.close()
            self.prefetch = None
        if self.ahead is not None:
            self.ahead.close()
            self.ahead = None
        self.stream = None

    def _unlock_and_remember(self, pkesks):
        algo, key = self.unlock(pkesks)
        self.key = key
        return algo, key

    def _blocks(self, start: int) -> Iterator[bytes]:
        """Message bytes from offset ``start`` on, fragment by fragment; the
        next fragment is verified in another thread while this one is read."""
        fsize = self.clear.fragment_size
        n, skip = start // fsize + 1, start % fsize
        if self.ahead is not None:
            self.ahead.close()
        self.ahead = ahead = Ahead(self._open, len(self.clear.fragments))
        for n in range(n, len(self.clear.fragments) + 1):
            yield from ahead.get(n).blocks(skip)
            skip = 0

    def _open(self, n: int) -> VerifiedFile:
        """Fragment n, hashed unless this very file was hashed before (and
        has not been written since)."""
        frag, path = self.clear.fragments[n - 1], self.fragment_path(n)
        if n in self.verified:
            f, stamp = open_fragment(path, frag, n)
            if stamp == self.verified[n]:
                return VerifiedFile(f, n, stamp)
            f.close()
        found = open_verified(path, frag, n)
        self.verified[n] = found.stamp
        return found


_END = object()


class Prefetch:
    """Runs an iterator in a thread of its own, up to PREFETCH items ahead.

    Items must not change after they are yielded (views of bytes are fine);
    the iterator's exception is raised where the item would have been.
    """

    def __init__(self, source: Iterator):
        self.queue: queue.Queue = queue.Queue(PREFETCH)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(source,),
                                       name="cryophile-decrypt", daemon=True)
        self.thread.start()

    def _run(self, source: Iterator) -> None:
        try:
            for item in source:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as exc:       # handed to the consumer
            self._put(_Failed(exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:          # its open fragments, in this thread
                close()

    def _put(self, item) -> bool:
        while not self.stopped.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        return self

    def __next__(self):
        item = self.queue.get()
        if item is _END:
            self.queue.put(_END)           # stay exhausted
            raise StopIteration
        if isinstance(item, _Failed):
            self.queue.put(item)
            raise item.exc
        return item

    def close(self) -> None:
        """Stop the thread; a consumer still waiting gets an error, not a hang."""
        self.stopped.set()
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        self.queue.put_nowait(_Failed(errors.Interrupted("read stream closed")))


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc
