"""Streaming OpenPGP: SEIPD v1 (AES-256, MDC) around one literal data packet.

pgpy holds whole messages in memory, so it only makes and opens the session
key packets (see keys.py); the bulk data is framed and encrypted here.

Both the SEIPD packet and the literal packet use partial body lengths of
exactly ``CHUNK`` bytes (the last one a definite length), so every header
sits at a computable place: ``Layout`` holds that arithmetic for the writer
and the random-access reader alike.  docs/FORMAT.md describes it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import os
import queue
import struct
import threading
import warnings
from typing import Callable, Iterable, Iterator

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
        from cryptography.hazmat.decrepit.ciphers.modes import CFB
    except ImportError:  # cryptography < 43
        from cryptography.hazmat.primitives.ciphers.modes import CFB

from ..errors import FormatError, IntegrityError
from . import lz4raw

AES256 = 9
BLOCK = 16
CHUNK_EXP = 20
CHUNK = 1 << CHUNK_EXP          # partial body chunk of both packets
TAG_PKESK = 1
TAG_SKESK = 3
TAG_SEIPD = 18
TAG_LITERAL = 11
MDC_HEADER = b"\xd3\x14"
MDC_LEN = 22
PREFIX_LEN = BLOCK + 2
LITERAL_HEADER_LEN = 6          # b'b', name length 0, 4-octet date
READ_SIZE = 1 << 20


def definite_length(n: int) -> bytes:
    if n < 192:
        return bytes([n])
    if n < 8384:
        n -= 192
        return bytes([(n >> 8) + 192, n & 0xFF])
    return b"\xff" + struct.pack(">I", n)


def packet(tag: int, body: bytes) -> bytes:
    return bytes([0xC0 | tag]) + definite_length(len(body)) + body


def partial_packet_len(body: int) -> int:
    """Length of a packet of ``body`` bytes framed like PartialWriter does."""
    return 1 + body + body // CHUNK + len(definite_length(body % CHUNK))


def in_partial_chunk(b: int) -> int:
    """Offset of body byte b from its packet's tag octet, if b's chunk is a
    partial one: then every chunk before it has a one-octet length too."""
    return 2 + b + b // CHUNK


def in_packet(b: int, body_size: int) -> int:
    """Offset of body byte b from the tag octet of a packet of ``body_size``
    body bytes.  The last chunk's definite length takes 1, 2 or 5 octets."""
    full = body_size // CHUNK
    if b < full * CHUNK:
        return in_partial_chunk(b)
    return 1 + full + len(definite_length(body_size % CHUNK)) + b


class Layout:
    """Where things sit in the message.

    Coordinates: *stream* offset k (the literal data, i.e. the compressed
    stream); *ciphertext* offset c, equal to the offset in the decrypted
    SEIPD plaintext (prefix, literal packet, MDC); SEIPD *body* offset
    b = c + 1 (the version octet comes first); *message* offset m in the
    concatenation of the fragments.

    While an archive is written its size is not known yet (``stream_size``
    None): positions are then computed as if every chunk were a partial one,
    which is exact for all but the last chunk of each packet.
    """

    def __init__(self, seipd_start: int, stream_size: int | None):
        self.seipd_start = seipd_start
        self.stream_size = stream_size
        if stream_size is None:
            self.literal_body = self.seipd_body = self.message_size = None
            return
        self.literal_body = stream_size + LITERAL_HEADER_LEN
        self.ciphertext_size = PREFIX_LEN + partial_packet_len(self.literal_body) + MDC_LEN
        self.seipd_body = self.ciphertext_size + 1
        self.message_size = seipd_start + partial_packet_len(self.seipd_body)

    def _in(self, b: int, body_size: int | None) -> int:
        return in_partial_chunk(b) if body_size is None else in_packet(b, body_size)

    def stream_to_ciphertext(self, k: int) -> int:
        return PREFIX_LEN + self._in(k + LITERAL_HEADER_LEN, self.literal_body)

    def ciphertext_to_message(self, c: int) -> int:
        return self.seipd_start + self._in(c + 1, self.seipd_body)

    @staticmethod
    def resume_block(k: int) -> int:
        """The aligned ciphertext offset c0 whose preceding 16 bytes the seek
        index records for stream offset k.  The writer picks it before the
        archive's size is known, as if k's chunk were partial, so it is at
        most 4 + 15 bytes before k's true ciphertext offset (never after)."""
        c = PREFIX_LEN + in_partial_chunk(k + LITERAL_HEADER_LEN)
        return c - c % BLOCK

    def resume_start(self, k: int, fragment_size: int) -> tuple[int, bool]:
        """Where ``decrypt_from`` reads from for stream offset k: (message
        offset, whether it starts at the ciphertext block before c0).  That
        block is read, to be checked against the index, when it lies in the
        same fragment as c0, so that no earlier fragment is needed."""
        c0 = self.resume_block(k)
        m0 = self.ciphertext_to_message(c0)
        if c0 >= BLOCK:
            before = self.ciphertext_to_message(c0 - BLOCK)
            if before // fragment_size == m0 // fragment_size:
                return before, True
        return m0, False

    @staticmethod
    def chunk_state(b: int, body_size: int) -> tuple[int, bool]:
        """(bytes left in the chunk holding body byte b, is that chunk partial)."""
        if b < body_size // CHUNK * CHUNK:
            return CHUNK - b % CHUNK, True
        return body_size - b, False


class PartialWriter:
    """Frames a packet body with partial lengths of CHUNK bytes.

    Zero-copy: ``write`` and ``close`` return lists of buffers (views of the
    bytes written, which must not change afterwards) with the length octets
    between them.
    """

    def __init__(self, tag: int):
        self.head = bytes([0xC0 | tag])
        self.parts: collections.deque = collections.deque()
        self.size = 0

    def _start(self) -> list:
        out, self.head = ([self.head] if self.head else []), b""
        return out

    def write(self, data) -> list:
        out = self._start()
        if data:
            self.parts.append(memoryview(data))
            self.size += len(data)
        while self.size >= CHUNK:
            out.append(PARTIAL_OCTET)
            need = CHUNK
            while need:
                part = self.parts[0]
                if len(part) <= need:
                    out.append(self.parts.popleft())
                    need -= len(part)
                else:
                    out.append(part[:need])
                    self.parts[0] = part[need:]
                    need = 0
            self.size -= CHUNK
        return out

    def close(self) -> list:
        out = self._start()
        out.append(definite_length(self.size))
        out.extend(self.parts)
        self.parts.clear()
        self.size = 0
        return out


PARTIAL_OCTET = bytes([0xE0 + CHUNK_EXP])


class HashThread:
    """A hash computed in a thread of its own: ``update`` queues the buffer
    (which must not change afterwards), ``digest`` waits for the rest.  The
    MDC's SHA-1 then runs beside AES-CFB (both serial, both GIL-free) instead
    of after it."""

    DEPTH = 8

    def __init__(self, hash_):
        self.hash = hash_
        self.queue: queue.Queue = queue.Queue(self.DEPTH)
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name="cryophile-mdc", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (data := self.queue.get()) is not None:
            self.hash.update(data)

    def update(self, data) -> None:
        if not self.stopped:            # an abandoned message: nobody hashes any more
            self.queue.put(data)

    def digest(self) -> bytes:
        self.stop()
        return self.hash.digest()

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.queue.put(None)
            self.thread.join()


class Encryptor:
    """Turns literal data into the bytes of a SEIPD packet.

    ``write`` and ``close`` return lists of buffers: message bytes.
    ``want_iv(c0, fn)`` asks for ``fn(iv)`` to be called with the 16
    ciphertext bytes before the aligned offset c0 as soon as they exist
    (the seek index needs them).  With ``threaded``, the MDC is hashed in a
    thread of its own (``stop`` ends it if the message is abandoned).
    """

    def __init__(self, session_key: bytes, timestamp: int, threaded: bool = False):
        self.cipher = Cipher(algorithms.AES(session_key), CFB(bytes(BLOCK))).encryptor()
        self.mdc = HashThread(hashlib.sha1()) if threaded else hashlib.sha1()
        self.literal = PartialWriter(TAG_LITERAL)
        self.seipd = PartialWriter(TAG_SEIPD)
        self.produced = 0
        self.tail = b""                   # the last 32 ciphertext bytes
        self.waiting: list[tuple[int, Callable[[bytes], None]]] = []
        prefix = os.urandom(BLOCK)
        self.out = self.seipd.write(b"\x01") + self._encrypt([prefix + prefix[-2:]])
        self.out += self._encrypt(self.literal.write(b"b\x00" + struct.pack(">I", timestamp)))

    def _encrypt(self, parts: list, hashed: bool = True) -> list:
        out = []
        for part in parts:
            if hashed:
                self.mdc.update(part)
            ct = self.cipher.update(part)
            self._resolve(ct)
            out += self.seipd.write(ct)
        return out

    def _resolve(self, ct: bytes) -> None:
        start = self.produced
        self.produced += len(ct)
        if self.waiting:
            still = []
            for c0, fn in self.waiting:
                if c0 > self.produced:
                    still.append((c0, fn))
                elif c0 == 0:
                    fn(bytes(BLOCK))
                else:
                    fn((self.tail + ct[:c0 - start])[-BLOCK:])
            self.waiting = still
        self.tail = (self.tail + ct[-32:])[-32:]

    def want_iv(self, c0: int, fn: Callable[[bytes], None]) -> None:
        if c0 > self.produced:
            self.waiting.append((c0, fn))
        elif c0 == 0:
            fn(bytes(BLOCK))
        else:                   # already produced: it is in the 32-byte tail
            end = len(self.tail) - (self.produced - c0)
            if end < BLOCK:
                raise AssertionError("seek index asked for ciphertext already gone")
            fn(self.tail[end - BLOCK:end])

    def write(self, data) -> list:
        out = self.out + self._encrypt(self.literal.write(data))
        self.out = []
        return out

    def stop(self) -> None:
        if isinstance(self.mdc, HashThread):
            self.mdc.stop()

    def close(self) -> list:
        out = self.out + self._encrypt(self.literal.close())
        self.mdc.update(MDC_HEADER)
        out += self._encrypt([MDC_HEADER + self.mdc.digest()], hashed=False)
        final = self.cipher.finalize()
        if final:
            self._resolve(final)
            out += self.seipd.write(final)
        return out + self.seipd.close()


# --- reading -----------------------------------------------------------------

class ByteSource:
    """Reads from an iterator of byte blocks without copying large blocks."""

    def __init__(self, blocks: Iterable[bytes]):
        self.blocks = iter(blocks)
        self.buf = memoryview(b"")

    def read(self, n: int) -> memoryview:
        """Up to n bytes; empty only at the end."""
        while not self.buf:
            block = next(self.blocks, None)
            if block is None:
                return memoryview(b"")
            self.buf = memoryview(block)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_exact(self, n: int, what: str) -> bytes:
        parts = bytearray()
        while len(parts) < n:
            part = self.read(n - len(parts))
            if not part:
                raise FormatError(f"archive ends inside the {what}: fragments missing or truncated")
            parts += part
        return bytes(parts)

    def at_end(self) -> bool:
        return not self._fill()

    def _fill(self) -> bool:
        while not self.buf:
            block = next(self.blocks, None)
            if block is None:
                return False
            self.buf = memoryview(block)
        return True


def read_length(src) -> tuple[int, bool]:
    """A new-format length: (length, is partial)."""
    first = src.read_exact(1, "packet header")[0]
    if first < 192:
        return first, False
    if first < 224:
        return ((first - 192) << 8) + src.read_exact(1, "packet header")[0] + 192, False
    if first == 255:
        return struct.unpack(">I", src.read_exact(4, "packet header"))[0], False
    return 1 << (first & 0x1F), True


def read_header(src) -> tuple[int, bytes, int, bool]:
    """(tag, raw header bytes, first length, partial) of the next packet."""
    tag_octet = src.read_exact(1, "packet header")[0]
    if not tag_octet & 0x80:
        raise FormatError("not an OpenPGP message (bad packet tag)")
    if tag_octet & 0x40:
        raw = bytearray([tag_octet])
        recorder = _Recorder(src, raw)
        length, partial = read_length(recorder)
        return tag_octet & 0x3F, bytes(raw), length, partial
    tag, kind = (tag_octet >> 2) & 0x0F, tag_octet & 3
    if kind == 3:
        raise FormatError("OpenPGP packets of indeterminate length are not supported")
    size = src.read_exact(1 << kind, "packet header")
    return tag, bytes([tag_octet]) + size, int.from_bytes(size, "big"), False


class _Recorder:
    def __init__(self, src, raw: bytearray):
        self.src, self.raw = src, raw

    def read_exact(self, n: int, what: str) -> bytes:
        data = self.src.read_exact(n, what)
        self.raw += data
        return data


class BodyReader:
    """Reads one packet body across its partial-length chunks."""

    def __init__(self, src, left: int, partial: bool, what: str):
        self.src, self.left, self.partial, self.what = src, left, partial, what

    def read(self, n: int) -> memoryview:
        while self.left == 0:
            if not self.partial:
                return memoryview(b"")
            self.left, self.partial = read_length(self.src)
        data = self.src.read(min(n, self.left))
        if not data:
            raise FormatError(f"archive ends inside the {self.what}: "
                              "fragments missing or truncated")
        self.left -= len(data)
        return data

    def read_exact(self, n: int, what: str) -> bytes:
        return ByteSource.read_exact(self, n, what)

    def rest(self) -> Iterator[memoryview]:
        while data := self.read(READ_SIZE):
            yield data


def _update(cipher, ct) -> bytes | memoryview:
    """cipher.update(ct), into new bytes that are not zero-filled first."""
    if lz4raw.fresh is None or len(ct) < 65536:
        return cipher.update(ct)
    out, buf = lz4raw.fresh(len(ct) + BLOCK - 1)      # (update_into's margin before 42)
    done = cipher.update_into(ct, buf)
    buf.release()
    return memoryview(out)[:done]


class Decrypted:
    """The SEIPD plaintext, decrypted as read; tracks the MDC hash (in a
    thread of its own: SHA-1 costs more than the decryption)."""

    def __init__(self, body: BodyReader, key: bytes, iv: bytes = bytes(BLOCK),
                 check_mdc: bool = True, policy: "Mdc | None" = None):
        self.body = body
        self.cipher = Cipher(algorithms.AES(key), CFB(iv)).decryptor()
        self.mdc = BackgroundHash() if check_mdc else None
        self.policy = policy or Mdc()
        self.held = b""           # the last 20 bytes: maybe the MDC value
        self.buf = memoryview(b"")

    def read(self, n: int) -> memoryview:
        if not self.buf:
            ct = self.body.read(READ_SIZE)
            if not ct:
                return memoryview(b"")
            pt = _update(self.cipher, ct)
            if self.mdc is not None and self.policy.wanted:
                if len(pt) >= 20:       # hash all but the last 20 bytes seen
                    self.mdc.update(self.held)
                    self.mdc.update(memoryview(pt)[:-20])
                    self.held = bytes(pt[-20:])
                else:
                    joined = self.held + pt
                    self.mdc.update(joined[:-20])
                    self.held = joined[-20:]
            self.buf = memoryview(pt)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_exact(self, n: int, what: str) -> bytes:
        return ByteSource.read_exact(self, n, what)

    def close(self) -> None:
        if self.mdc is not None:
            self.mdc.close()


class Mdc:
    """Whether the MDC is still to be checked.

    The MDC vouches for the decrypted message; so do, for lz4 and zstd
    archives, the frame checksums, and for the ciphertext the fragments'
    SHA-256 sums checked against the manifest before use.  A whole restore
    that has both may drop the MDC's SHA-1 (as much CPU as decrypting):
    ``frame(checked)`` is told of each frame in order, and once the first
    frame is found checksummed the MDC is no longer computed, and every
    later frame must carry a checksum too (an archive mixing them is not
    one cryophile writes).  With ``frames_vouch`` False (the default) the
    MDC is always checked.
    """

    def __init__(self, frames_vouch: bool = False):
        self.frames_vouch = frames_vouch
        self.wanted = True
        self.frames = 0

    def frame(self, checked: bool) -> None:
        if self.frames == 0 and checked and self.frames_vouch:
            self.wanted = False
        elif not self.wanted and not checked:
            raise IntegrityError("a compressed frame without a checksum follows frames with "
                                 "one: archive damaged or not written by cryophile")
        self.frames += 1


class BackgroundHash:
    """SHA-1 of what ``update`` is given, computed in another thread, at most
    AHEAD updates behind.  Buffers must not change after ``update``."""

    AHEAD = 4

    def __init__(self):
        self.sha1 = hashlib.sha1()
        self.pool = concurrent.futures.ThreadPoolExecutor(1, "cryophile-mdc")
        self.pending: collections.deque = collections.deque()

    def update(self, data) -> None:
        if len(data) < 4096:                 # not worth a hand-off; keeps the order
            self._drain(0)
            self.sha1.update(data)
            return
        self._drain(self.AHEAD - 1)
        self.pending.append(self.pool.submit(self.sha1.update, data))

    def _drain(self, keep: int) -> None:
        while len(self.pending) > keep:
            self.pending.popleft().result()

    def digest(self) -> bytes:
        self._drain(0)
        return self.sha1.digest()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def read_session_packets(src: ByteSource) -> tuple[list[bytes], BodyReader]:
    """Collect the PKESK packets; return them and the SEIPD body reader."""
    pkesks = []
    while True:
        tag, raw, length, partial = read_header(src)
        if tag == TAG_SEIPD:
            return pkesks, BodyReader(src, length, partial, "encrypted data")
        if partial:
            raise FormatError("unexpected partial length before the encrypted data")
        body = src.read_exact(length, "session key packet")
        if tag == TAG_PKESK:
            pkesks.append(raw + body)
        elif tag != TAG_SKESK:
            raise FormatError(f"unexpected OpenPGP packet (tag {tag}) before the encrypted data")


def decrypt(src: ByteSource, unlock: Callable[[list[bytes]], tuple[int, bytes]],
            mdc: Mdc | None = None) -> Iterator[memoryview]:
    """Yield the literal data of an encrypted message; verify the MDC at the
    end (unless ``mdc`` says the frames vouch for it).

    ``unlock(pkesks)`` returns (symmetric algorithm, session key).
    """
    pkesks, body = read_session_packets(src)
    algo, key = unlock(pkesks)
    if algo != AES256:
        raise FormatError(f"symmetric algorithm {algo} is not AES-256")
    if body.read_exact(1, "encrypted data")[0] != 1:
        raise FormatError("encrypted data packet is not version 1")
    plain = Decrypted(body, key, policy=mdc)
    prefix = plain.read_exact(PREFIX_LEN, "encrypted data")
    if prefix[14:16] != prefix[16:18]:
        raise IntegrityError("session key does not decrypt the archive (quick check failed)")
    tag, _, length, partial = read_header(plain)
    if tag != TAG_LITERAL:
        raise FormatError(f"expected a literal data packet, found tag {tag}")
    try:
        literal = BodyReader(plain, length, partial, "literal data")
        header = literal.read_exact(2, "literal data header")
        literal.read_exact(header[1] + 4, "literal data header")
        yield from literal.rest()
        trailer = check_trailer(plain, src)
        if plain.policy.wanted and plain.mdc.digest() != trailer[2:]:
            raise IntegrityError("modification detection code mismatch: archive damaged")
    finally:
        plain.close()


def check_trailer(plain: Decrypted, src: ByteSource) -> bytes:
    """After the literal data: the MDC packet, then the end of the SEIPD
    packet and of the message.  Returns the MDC packet."""
    trailer = plain.read_exact(MDC_LEN, "modification detection code")
    if trailer[:2] != MDC_HEADER or plain.read(1):
        raise IntegrityError("no modification detection code right after the literal data: "
                             "archive damaged or misread")
    if not src.at_end():
        raise FormatError("data after the end of the OpenPGP message")
    return trailer


def decrypt_from(src: ByteSource, layout: Layout, key: bytes, stream_offset: int,
                 iv: bytes, iv_in_src: bool = False) -> Iterator[memoryview]:
    """Literal data from a seek index entry on, without earlier fragments.

    ``src`` starts at message offset ``layout.ciphertext_to_message(c0)``,
    c0 = ``Layout.resume_block(stream_offset)``; ``iv`` is the ciphertext
    block before c0 (from the seek index).  With ``iv_in_src``, ``src``
    starts 16 ciphertext bytes earlier and those must equal ``iv``: a check
    that the reader is where the index says.  The MDC cannot be computed
    from the middle (callers verify fragment SHA-256s), but when the
    literal data ends the MDC packet's header must follow, and then the end
    of the message: a misplaced read cannot get that far unnoticed.
    """
    c = layout.stream_to_ciphertext(stream_offset)
    c0 = Layout.resume_block(stream_offset)
    first = c0 - BLOCK if iv_in_src else c0
    left, partial = Layout.chunk_state(first + 1, layout.seipd_body)
    body = BodyReader(src, left, partial, "encrypted data")
    if iv_in_src and body.read_exact(BLOCK, "encrypted data") != iv:
        raise IntegrityError(f"the seek index does not match the archive at stream offset "
                             f"{stream_offset}: archive damaged or misread")
    plain = Decrypted(body, key, iv, check_mdc=False)
    plain.read_exact(c - c0, "encrypted data")
    left, partial = Layout.chunk_state(stream_offset + LITERAL_HEADER_LEN, layout.literal_body)
    literal = BodyReader(plain, left, partial, "literal data")
    yield from literal.rest()
    check_trailer(plain, src)
