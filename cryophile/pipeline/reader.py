"""Restore: fragments in order → verify → decrypt → decompress → output.

Each fragment's size and SHA-256 are checked against chunk.0 before any of
its bytes are decrypted (the first one: before any of its output is
written, below), so damage is reported before it reaches the
output; the MDC then vouches for the message as a whole (for a restore,
the frame checksums of lz4 and zstd archives do instead: openpgp.Mdc;
manifest.read_manifest has checked chunk.0's SHA-256 sums against the
encrypted manifest).  The next
fragment is verified in a second thread while this one is decrypted, and
output runs in a third, with frames decompressed in two more beside it.

The first fragment, unless a verdict vouches for it, is decrypted and
decompressed while it is still being hashed (its first SPECULATE bytes),
so that the restore does not start with one core idle; its output is held
back (up to HOLD bytes, then the output waits) until the hash has matched,
and dropped if it does not: nothing of a fragment reaches the output
before its SHA-256 has matched chunk.0.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import os
import queue
import threading
from typing import BinaryIO, Callable, Iterator

from .. import errors
from ..manifest import ClearInfo, Fragment
from . import buffers, compress, openpgp, verdict

log = logging.getLogger("cryophile.restore")

BLOCK_SIZE = 1 << 20
SPECULATE = 16 << 20    # bytes of the first fragment decrypted while it is hashed
HOLD = 48 << 20         # bytes of output held back meanwhile, at most
DECOMPRESSORS = 2       # threads: decompression is restore's costliest stage (zstd, lz4)
_DONE = object()


def verify_fragment(path: str, frag: Fragment, n: int) -> None:
    """Hash the fragment now, whatever verdict it carries."""
    open_verified(path, frag, n, trust=False).close()


class VerifiedFile:
    """An open fragment whose SHA-256 matched chunk.0.

    Its bytes are read from the same open file that was hashed, and each
    block read is followed by a check that the file has not been written
    since (its size and mtime): a fragment read in place in a local vault
    cannot change between its check and its use unnoticed.
    """

    def __init__(self, f, n: int, stamp: tuple):
        self.f, self.n, self.stamp = f, n, stamp

    def blocks(self, skip: int = 0) -> Iterator[bytes]:
        try:
            self.f.seek(skip)
            while block := self.f.read(BLOCK_SIZE):
                self.check()
                yield block
        finally:
            self.close()

    def check(self) -> None:
        if stamp(os.fstat(self.f.fileno())) != self.stamp:
            raise errors.IntegrityError(f"fragment chunk.{self.n} changed while it was "
                                        "read: it is damaged or being overwritten")

    def close(self) -> None:
        self.f.close()


def stamp(st: os.stat_result) -> tuple:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def open_fragment(path: str, frag: Fragment, n: int) -> tuple:
    """(open file, its stamp), the size checked."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise errors.MissingFragmentError(f"fragment chunk.{n} is missing ({path})") from None
    st = os.fstat(f.fileno())
    if st.st_size != frag.size:
        f.close()
        raise errors.MissingFragmentError(
            f"fragment chunk.{n} has {st.st_size} bytes, expected {frag.size}: "
            "truncated or damaged")
    return f, stamp(st)


def sha256_of(f, stopped: Callable[[], bool] = lambda: False) -> str | None:
    """The SHA-256 (hex) of the rest of ``f``, read into one reused buffer;
    None if ``stopped()`` turns true meanwhile."""
    h = hashlib.sha256()
    buf = bytearray(BLOCK_SIZE)
    view = memoryview(buf)
    while k := f.readinto(buf):
        if stopped():
            return None
        h.update(view[:k])
    return h.hexdigest()


class Early:
    """SHA-256 of a local vault's first fragments, computed in a thread of its
    own while the restore starts (imports, keys, chunk.0: one core busy, the
    other idle), before what they must match is known.

    ``digest(path, st)`` is the digest of the file at ``path`` if it was that
    very file, unchanged (``st``: its stamp, the same as before and after
    hashing); None otherwise (not hashed: changed meanwhile, a verdict
    already vouches for it, unreadable, or stopped).  It waits while that
    file is being hashed; the thread settles every entry when it ends.
    """

    def __init__(self, paths: list[str]):
        self.paths = list(paths)
        self.found: dict[str, tuple] = {}
        self.done = {path: threading.Event() for path in self.paths}
        self.stopped = False
        threading.Thread(target=self._hash, name="cryophile-early", daemon=True).start()

    def _hash(self) -> None:
        try:
            for path in self.paths:
                try:
                    if not self.stopped:
                        self._one(path)
                except OSError:
                    pass
                finally:
                    self.done[path].set()
        finally:
            for event in self.done.values():
                event.set()

    def _one(self, path: str) -> None:
        with open(path, "rb") as f:
            st = stamp(os.fstat(f.fileno()))
            if verdict.recorded(f.fileno()):
                return                        # read without hashing anyway
            digest = sha256_of(f, lambda: self.stopped)
            if digest is not None and stamp(os.fstat(f.fileno())) == st:
                self.found[path] = st, digest

    def digest(self, path: str, st: tuple) -> str | None:
        if path not in self.done:
            return None
        self.done[path].wait()
        found = self.found.get(path)
        return found[1] if found is not None and found[0] == st else None

    def close(self) -> None:
        self.stopped = True


def open_verified(path: str, frag: Fragment, n: int, trust: bool = True,
                  early: Early | None = None) -> VerifiedFile:
    """Fragment n, hashed and checked against chunk.0, unless (``trust``) a
    verdict of this boot says that this very file, unchanged, has that
    SHA-256 (verdict.py), or ``early`` hashed this very file, unchanged since."""
    f, st = open_fragment(path, frag, n)
    try:
        if trust and verdict.holds(f.fileno(), frag.sha256):
            return VerifiedFile(f, n, st)
        if early is not None and early.digest(path, st) == frag.sha256:
            return VerifiedFile(f, n, st)
        digest = sha256_of(f)
        verified = VerifiedFile(f, n, st)
        verified.check()
        if digest != frag.sha256:
            raise errors.IntegrityError(f"fragment chunk.{n} fails its SHA-256 check: "
                                        "it is damaged")
    except BaseException:
        f.close()
        raise
    return verified


class Ahead:
    """Opens and verifies fragments one ahead of their use, in a thread of its
    own, so that hashing the next fragment overlaps decrypting this one.

    ``open_(n)`` returns a VerifiedFile (or raises).  A failure of the look
    ahead is not reported there: the fragment is opened again when it is
    wanted, in the caller's thread, which then raises what is true by then
    (a fragment thawed meanwhile is found).
    """

    def __init__(self, open_: Callable[[int], VerifiedFile], last: int):
        self.open, self.last = open_, last
        self.pool = concurrent.futures.ThreadPoolExecutor(1, "cryophile-verify")
        self.pending: tuple[int, concurrent.futures.Future] | None = None
        self.lock = threading.Lock()          # get (a reading thread) against close
        self.closed = False

    def get(self, n: int) -> VerifiedFile:
        with self.lock:
            if self.closed:
                raise errors.Interrupted("read stream closed")
            pending, self.pending = self.pending, None
            if n < self.last:
                self.pending = n + 1, self.pool.submit(self.open, n + 1)
        found = None
        if pending is not None:
            k, future = pending
            if k == n and not future.cancel():
                try:
                    found = future.result()
                except Exception:
                    found = None
            else:
                future.add_done_callback(_close_result)
        return found if found is not None else self.open(n)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            if self.pending is not None:
                self.pending[1].add_done_callback(_close_result)
                self.pending = None
        self.pool.shutdown(wait=False, cancel_futures=True)


def _close_result(future: concurrent.futures.Future) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()


class Gate:
    """Output held back until the first fragment's SHA-256 has matched.

    Settled by the verifying thread itself (not by the decrypting thread,
    which may be waiting on the output), or as failed by the restore when
    it ends; ``wait`` returns once settled."""

    def __init__(self):
        self.cond = threading.Condition()
        self.state: bool | None = None
        self.error: BaseException | None = None

    def settle(self, ok: bool, error: BaseException | None = None) -> None:
        with self.cond:
            if self.state is None:
                self.state, self.error = ok, error
                self.cond.notify_all()

    def wait(self) -> bool:
        with self.cond:
            while self.state is None:
                self.cond.wait()
            return self.state


def verified_blocks(clear: ClearInfo, fragment_path: Callable[[int], str],
                    gate: Gate | None = None, early: Early | None = None) -> Iterator[bytes]:
    """The message, fragment by fragment, each verified before it is read.

    Unlike ``Ahead``, the next fragment's failure is the restore's: restore
    waits for each fragment once, and a damaged one ends it.  With ``gate``,
    the first fragment (unless a verdict vouches for it) is read while it is
    hashed, and ``gate`` settled by the hash: the caller holds back the
    output until then."""
    with concurrent.futures.ThreadPoolExecutor(1, "cryophile-verify") as pool:
        def check(n: int, path: str | None = None) -> VerifiedFile:
            return open_verified(path or fragment_path(n), clear.fragments[n - 1], n,
                                 early=early)
        last = len(clear.fragments)
        ahead = None
        try:
            if last and gate is not None:
                path = fragment_path(1)
                f = yield from _speculate(pool, check, path, clear.fragments[0], gate)
                if last > 1:
                    ahead = pool.submit(check, 2)
                yield from f
            elif gate is not None:
                gate.settle(True)
            first = 2 if gate is not None else 1
            if first <= last and ahead is None:
                ahead = pool.submit(check, first)
            for n in range(first, last + 1):
                f = ahead.result()
                ahead = pool.submit(check, n + 1) if n < last else None
                yield from f.blocks()
        finally:
            if ahead is not None:
                ahead.add_done_callback(_close_result)


def _speculate(pool, check, path: str, frag: Fragment, gate: Gate):
    """Yield the first fragment's first SPECULATE bytes while it is hashed in
    ``pool``; return (as ``yield from``'s value) the rest of its blocks, once
    the hash has matched for the very file read here (the same file, unchanged:
    its stamp).  A verdict that holds: nothing is held back."""
    f, st = open_fragment(path, frag, 1)
    hashed = None
    changed = errors.IntegrityError("fragment chunk.1 changed while it was read: it is "
                                    "damaged or being overwritten")
    try:
        if verdict.holds(f.fileno(), frag.sha256):
            gate.settle(True)
            f, found = None, VerifiedFile(f, 1, st)
            return found.blocks()
        hashed = pool.submit(check, 1, path)

        def settle(future: concurrent.futures.Future) -> None:
            """In the verifying thread: the output may go once the very file
            read here, unchanged, has matched (each block read here is
            checked against the same stamp)."""
            if future.cancelled():
                gate.settle(False)
            elif future.exception() is not None:
                gate.settle(False, future.exception())
            else:
                same = future.result().stamp == st
                gate.settle(same, None if same else changed)
        hashed.add_done_callback(settle)
        read = 0
        while read < SPECULATE:
            block = f.read(min(BLOCK_SIZE, SPECULATE - read))
            if not block:
                break
            if stamp(os.fstat(f.fileno())) != st:
                raise changed
            read += len(block)
            yield block
        verified, hashed = hashed.result(), None     # (raises what the hash found)
        if verified.stamp != st or stamp(os.fstat(f.fileno())) != st:
            verified.close()
            raise changed
        return verified.blocks(read)
    finally:
        if f is not None:
            f.close()
        if hashed is not None:                       # left early: close what it opens
            hashed.add_done_callback(_close_result)


def restore(clear: ClearInfo, manifest: dict, unlock, fragment_path: Callable[[int], str],
            out: BinaryIO, frames_vouch: bool = False, early: Early | None = None) -> int:
    """Write the plaintext to ``out``; return its size.  Raises on any damage.

    With ``frames_vouch``, the MDC is not computed when the frames carry
    checksums (openpgp.Mdc): every fragment is checked against its SHA-256
    before use, and the frame checksums check the decrypted stream.
    ``early``: fragments hashed already (Early)."""
    buffers.reuse_buffers()
    mdc = openpgp.Mdc(frames_vouch)
    gate = Gate()
    literal = openpgp.decrypt(openpgp.ByteSource(verified_blocks(clear, fragment_path, gate,
                                                                  early)),
                              unlock, mdc)
    chunks: queue.Queue = queue.Queue(8)
    result: dict = {}
    sink = threading.Thread(target=_sink, name="cryophile-output",
                            args=(manifest["compression"], manifest.get("frame_size"),
                                  chunks, out, result, mdc.frame, gate), daemon=True)
    sink.start()
    try:
        for data in literal:
            if "error" in result:
                break
            chunks.put(data)     # a view of immutable bytes; the sink drains even after an error
    except BaseException as exc:
        literal.close()          # a hash under way ends, and settles the gate
        gate.settle(False, exc)  # (the output held back is dropped)
        if gate.state is False and gate.error is not exc and gate.error is not None:
            raise gate.error from None    # damage the hash found: said as such
        raise
    finally:
        chunks.put(_DONE)        # always, exactly once: the sink waits for it
        sink.join()
        literal.close()          # stops the verifying thread before the caller goes on
    if "error" in result:
        gate.settle(False)       # (settled already, by the hash, unless it never began)
        if gate.state is False and gate.error is not None:
            raise gate.error     # damage the hash found: said as such
        raise result["error"]
    if result["size"] != manifest["size"]:
        raise errors.IntegrityError(
            f"restored {result['size']} bytes, the manifest says {manifest['size']}")
    return result["size"]


def _sink(codec: str, frame_size: int | None, chunks: queue.Queue, out: BinaryIO,
          result: dict, checked: Callable[[bool], None], gate: Gate | None = None) -> None:
    """Decompress and write until _DONE; on an error, note it and keep taking
    items until _DONE, so that the producer never blocks on a full queue.
    Until ``gate`` opens, output is held back (HOLD bytes, then waited for)."""
    done = False

    def items():
        nonlocal done
        while (item := chunks.get()) is not _DONE:
            yield item
        done = True
    size = 0
    held: list = []
    holding = 0

    def release() -> None:
        nonlocal gate, held, size
        if not gate.wait():
            raise errors.Interrupted("restore ended before its first fragment was verified")
        for data in held:
            out.write(data)
            size += len(data)
        held, gate = [], None
    try:
        for data in compress.decompress(codec, items(), frame_size, checked, DECOMPRESSORS):
            if gate is not None:
                if gate.state is None and holding < HOLD:
                    held.append(data)
                    holding += len(data)
                    continue
                release()
            out.write(data)
            size += len(data)
        if gate is not None:
            release()
        out.flush()
        result["size"] = size
    except OSError as exc:
        result["error"] = errors.from_oserror(exc, "cannot write the output")
    except BaseException as exc:
        result["error"] = exc
    held = []
    if not done:
        while chunks.get() is not _DONE:   # let the producer finish
            pass
