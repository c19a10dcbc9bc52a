"""Restore: fragments in order → verify → decrypt → decompress → output.

Each fragment's size and SHA-256 are checked against chunk.0 before any of
its bytes are decrypted, so damage is reported before it reaches the
output; the MDC then vouches for the message as a whole.  The next
fragment is verified in a second thread while this one is decrypted, and
decompression and output run in a third.
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
from . import compress, openpgp

log = logging.getLogger("cryophile.restore")

BLOCK_SIZE = 1 << 20
_DONE = object()


def verify_fragment(path: str, frag: Fragment, n: int) -> None:
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise errors.MissingFragmentError(f"fragment chunk.{n} is missing ({path})") from None
    if size != frag.size:
        raise errors.MissingFragmentError(
            f"fragment chunk.{n} has {size} bytes, expected {frag.size}: truncated or damaged")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK_SIZE):
            h.update(block)
    if h.hexdigest() != frag.sha256:
        raise errors.IntegrityError(f"fragment chunk.{n} fails its SHA-256 check: it is damaged")


def _blocks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while block := f.read(BLOCK_SIZE):
            yield block


def verified_blocks(clear: ClearInfo, fragment_path: Callable[[int], str]) -> Iterator[bytes]:
    """The message, fragment by fragment, each verified before it is read."""
    with concurrent.futures.ThreadPoolExecutor(1, "cryophile-verify") as pool:
        def check(n: int):
            path = fragment_path(n)
            verify_fragment(path, clear.fragments[n - 1], n)
            return path
        ahead = pool.submit(check, 1) if clear.fragments else None
        for n in range(1, len(clear.fragments) + 1):
            path = ahead.result()
            ahead = pool.submit(check, n + 1) if n < len(clear.fragments) else None
            yield from _blocks(path)


def restore(clear: ClearInfo, manifest: dict, unlock, fragment_path: Callable[[int], str],
            out: BinaryIO) -> int:
    """Write the plaintext to ``out``; return its size.  Raises on any damage."""
    literal = openpgp.decrypt(openpgp.ByteSource(verified_blocks(clear, fragment_path)), unlock)
    chunks: queue.Queue = queue.Queue(8)
    result: dict = {}
    sink = threading.Thread(target=_sink, name="cryophile-output",
                            args=(manifest["compression"], manifest.get("frame_size"),
                                  chunks, out, result), daemon=True)
    sink.start()
    try:
        for data in literal:
            if "error" in result:
                break
            chunks.put(data)     # a view of immutable bytes; the sink drains even after an error
    finally:
        chunks.put(_DONE)        # always, exactly once: the sink waits for it
        sink.join()
        literal.close()          # stops the verifying thread before the caller goes on
    if "error" in result:
        raise result["error"]
    if result["size"] != manifest["size"]:
        raise errors.IntegrityError(
            f"restored {result['size']} bytes, the manifest says {manifest['size']}")
    return result["size"]


def _sink(codec: str, frame_size: int | None, chunks: queue.Queue, out: BinaryIO,
          result: dict) -> None:
    """Decompress and write until _DONE; on an error, note it and keep taking
    items until _DONE, so that the producer never blocks on a full queue."""
    done = False

    def items():
        nonlocal done
        while (item := chunks.get()) is not _DONE:
            yield item
        done = True
    size = 0
    try:
        for data in compress.decompress(codec, items(), frame_size):
            out.write(data)
            size += len(data)
        out.flush()
        result["size"] = size
    except OSError as exc:
        result["error"] = errors.from_oserror(exc, "cannot write the output")
    except BaseException as exc:
        result["error"] = exc
    if not done:
        while chunks.get() is not _DONE:   # let the producer finish
            pass
