"""The read path never serves wrong bytes: random access through the seek
index, the verification a reader can do on its own, and the ends of it.

Archives are written in-process (ArchiveWriter on a spool in a tmp dir, small
fragments) and read back with PlainReader and reader.restore."""

from __future__ import annotations

import hashlib
import io
import os
import random
import tempfile
import threading
from pathlib import Path
from unittest import mock

import lz4.frame
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryophile import errors, ids, keys, manifest
from cryophile.pipeline import compress, lz4raw, openpgp, plainreader, reader, verdict, writer
from cryophile.spool import Spool
from tests.fsrig import fskeys  # noqa: F401

VAULT = "0b8c3a7e-5a1d-4f7e-9a53-3f1c2d4e5f60"
MiB = 1 << 20
CHUNK = openpgp.CHUNK


@pytest.fixture(scope="module")
def ring(fskeys):
    return keys.load_certificates([str(fskeys[0])]), keys.load_secret_keys([str(fskeys[1])], None)


def mixed(n: int, seed: int = 0) -> bytes:
    """Runs of random and of repeated bytes: both codecs compress it a little."""
    rnd = random.Random(seed)
    out = bytearray()
    while len(out) < n:
        if rnd.random() < 0.5:
            out += rnd.randbytes(rnd.randint(1, 20000))
        else:
            out += bytes([rnd.randrange(256)]) * rnd.randint(1, 3000)
    return bytes(out[:n])


class Built:
    """An archive written to a spool: its fragments, chunk.0 and plaintext."""

    def __init__(self, root: str, recipients, secret, data: bytes, codec: str,
                 fragment_size: int, pieces: int = 3, bid: ids.BackupId | None = None):
        self.spool = Spool(root)
        self.spool.ensure()
        self.bid = bid or ids.BackupId(VAULT, "p", ids.new_ulid())
        self.data, self.secret = data, secret
        w = writer.ArchiveWriter(self.spool, self.bid, recipients, codec, fragment_size)
        step = max(1, -(-len(data) // pieces))
        for i in range(0, len(data), step):
            w.write(data[i:i + step])
        w.close()
        self.clear, encrypted = manifest.load(self.path(0))
        self.body = manifest.read_manifest(encrypted, self.clear, secret.decrypt_session_key)

    def path(self, n: int) -> str:
        return self.spool.path("freeze", self.bid, n)

    def reader(self) -> plainreader.PlainReader:
        return plainreader.PlainReader(self.clear, self.body, self.secret.decrypt_session_key,
                                       self.path)

    def read(self, offset: int, size: int) -> bytes:
        """A read that seeks through the index, as after an lseek."""
        r = self.reader()
        try:
            return r.read(offset, size)
        finally:
            r.close_stream()

    def restore(self) -> bytes:
        out = io.BytesIO()
        reader.restore(self.clear, self.body, self.secret.decrypt_session_key, self.path, out)
        return out.getvalue()


# --- the layout, against real framing ----------------------------------------

def framed(tag: int, body: bytes) -> bytes:
    w = openpgp.PartialWriter(tag)
    return b"".join(bytes(p) for p in w.write(body) + w.close())


def around_chunks(draw_n: int, delta: int) -> int:
    return max(0, draw_n * CHUNK + delta)


EDGE_DELTAS = [-5, -1, 0, 1, 2, 190, 191, 192, 193, 8382, 8383, 8384, 8385, CHUNK - 1]
body_sizes = st.one_of(st.builds(around_chunks, st.integers(0, 3), st.sampled_from(EDGE_DELTAS)),
                       st.integers(0, 3 * CHUNK + 9000))


@settings(max_examples=60, deadline=None, database=None)
@given(size=body_sizes, picks=st.lists(st.floats(0, 1), min_size=1, max_size=8))
def test_in_packet_matches_partial_writer(size, picks):
    body = random.Random(size).randbytes(size)
    packet = framed(openpgp.TAG_LITERAL, body)
    assert len(packet) == openpgp.partial_packet_len(size)
    edges = [size - 1, size // CHUNK * CHUNK, size // CHUNK * CHUNK - 1]
    for b in [int(p * size) for p in picks] + edges:
        if 0 <= b < size:
            at = openpgp.in_packet(b, size)
            left, partial = openpgp.Layout.chunk_state(b, size)
            n = min(16, left)               # the rest of b's chunk
            assert packet[at:at + n] == body[b:b + n], (size, b)
            assert partial == (b < size // CHUNK * CHUNK)
            assert 0 < left <= CHUNK and (partial or b + left == size)


@settings(max_examples=40, deadline=None, database=None)
@given(stream_size=body_sizes, seipd_start=st.integers(0, 2000), pick=st.floats(0, 1))
def test_layout_places_stream_bytes_in_the_message(stream_size, seipd_start, pick):
    """Frame a message by hand (no encryption: CFB keeps offsets) and check that
    every coordinate function lands on the right byte."""
    rnd = random.Random(stream_size)
    stream = rnd.randbytes(stream_size)
    plain = (rnd.randbytes(18) + framed(openpgp.TAG_LITERAL, rnd.randbytes(6) + stream)
             + openpgp.MDC_HEADER + rnd.randbytes(20))
    message = bytes(seipd_start) + framed(openpgp.TAG_SEIPD, b"\x01" + plain)
    layout = openpgp.Layout(seipd_start, stream_size)
    assert layout.message_size == len(message) and layout.ciphertext_size == len(plain)
    for k in {int(pick * stream_size), stream_size - 1, 0}:
        if not 0 <= k < stream_size:
            continue
        c = layout.stream_to_ciphertext(k)
        assert plain[c] == stream[k]
        m = layout.ciphertext_to_message(c)
        assert message[m] == plain[c]
        c0 = layout.resume_block(k)
        assert c0 % 16 == 0 and c - 19 <= c0 <= c
        assert message[layout.ciphertext_to_message(c0)] == plain[c0]


# --- reading archives of many sizes from every index entry --------------------

def sizes_near(n: int) -> list[int]:
    return [n * MiB + d for d in (-7, -6, -1, 0, 1, 180, 186, 8000, 8378, 9000) if n * MiB + d >= 0]


SIZES = sorted({0, 1, 2, 17, 185, 186, 1000, *sizes_near(1), *sizes_near(2), *sizes_near(3)})


def check_every_entry(built: Built, rnd: random.Random, reads: int = 12) -> None:
    data, frame = built.data, built.body["frame_size"]
    index = built.body["index"]
    assert not data or index[0][:2] == [0, 0]
    for i, (plain, _, _) in enumerate(index):
        end = len(data) if i >= len(index) - 3 else min(len(data), plain + 2 * frame + 5)
        assert built.read(plain, end - plain) == data[plain:end], ("entry", plain)
    for tail in (1, 1000, frame, frame + 1):
        start = max(0, len(data) - tail)
        assert built.read(start, tail) == data[start:], ("tail", tail)
    for _ in range(reads):
        off = rnd.randrange(len(data) + 1)
        size = rnd.choice([1, 4096, frame, rnd.randrange(1, 3 * MiB)])
        assert built.read(off, size) == data[off:off + size], ("read", off, size)
    whole = built.reader()
    try:   # sequential reads in kernel-sized pieces from 0: through the MDC check
        got = b"".join(whole.read(o, 128 << 10) for o in range(0, len(data), 128 << 10))
        assert got == data and whole.read(len(data), 10) == b""
    finally:
        whole.close_stream()
    assert built.restore() == data


@pytest.mark.timeout(600)
@pytest.mark.parametrize("codec", compress.CODECS)
def test_every_seek_lands_right_at_edge_sizes(ring, tmp_path, codec):
    recipients, secret = ring
    rnd = random.Random(codec)
    for i, size in enumerate(SIZES):
        fragment_size = (MiB, MiB + 7, 300_001)[i % 3]
        data = os.urandom(size) if codec == "none" else mixed(size, size)
        built = Built(str(tmp_path / str(size)), recipients, secret, data, codec, fragment_size)
        check_every_entry(built, rnd, reads=4)


@pytest.mark.timeout(600)
@settings(max_examples=25, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(size=st.one_of(st.sampled_from(SIZES), st.integers(0, 5 * MiB)),
       codec=st.sampled_from(compress.CODECS),
       fragment_size=st.sampled_from([MiB, MiB + 7, 300_001, 65536 + 3]),
       frame_size=st.sampled_from([MiB, 65536 + 13, 200_000]),
       seed=st.integers(0, 1 << 30))
def test_every_seek_lands_right_property(ring, monkeypatch, size, codec, fragment_size,
                                         frame_size, seed):
    recipients, secret = ring
    monkeypatch.setattr(compress, "FRAME_SIZE", frame_size)
    monkeypatch.setattr(writer, "INDEX_INTERVAL", max(frame_size, 256 << 10))
    data = random.Random(seed).randbytes(size) if seed % 2 else mixed(size, seed)
    with tempfile.TemporaryDirectory() as root:
        built = Built(root, recipients, secret, data, codec, fragment_size, pieces=1 + seed % 4)
        check_every_entry(built, random.Random(seed))


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_archives_without_frame_checksums_still_read(ring, tmp_path, monkeypatch, codec):
    """As written before frames had checksums (same seek index convention)."""
    plain = {"lz4": lambda data: lz4.frame.compress(
                 data, compression_level=0, block_size=lz4.frame.BLOCKSIZE_MAX1MB,
                 content_checksum=False, store_size=True),
             "zstd": lambda data: zstandard.ZstdCompressor(level=1).compress(data)}[codec]
    monkeypatch.setattr(compress, "compressor", lambda name: plain)
    recipients, secret = ring
    data = mixed(2 * MiB + 8000, 5)
    built = Built(str(tmp_path), recipients, secret, data, codec, MiB + 7)
    check_every_entry(built, random.Random(5), reads=3)


@pytest.mark.timeout(300)
def test_tail_and_dd_of_a_large_uncompressed_archive(ring, tmp_path):
    """48.5 MiB, -C none, default fragments: `tail -c 1000` and `dd bs=1M skip=48`."""
    recipients, secret = ring
    data = os.urandom(48 * MiB + MiB // 2)
    built = Built(str(tmp_path), recipients, secret, data, "none", 64 * MiB)
    assert built.read(len(data) - 1000, 1000) == data[-1000:]
    assert built.read(48 * MiB, MiB) == data[48 * MiB:]


# --- what a reader verifies on its own ----------------------------------------

def old_in_packet(b: int, body_size: int | None = None) -> int:
    """A layout that forgets the last chunk's longer length header."""
    return 2 + b + b // CHUNK


@pytest.mark.parametrize("codec", compress.CODECS)
def test_a_misplaced_seek_is_never_served(ring, tmp_path, monkeypatch, codec):
    """With positions off by a few bytes, reads to the end fail rather than
    return wrong bytes: the IV check, the MDC packet's place, frame checks."""
    recipients, secret = ring
    data = os.urandom(3 * MiB + 500_000)
    built = Built(str(tmp_path), recipients, secret, data, codec, MiB + 7)
    monkeypatch.setattr(openpgp, "in_packet", old_in_packet)
    last = built.body["index"][-1][0]
    for start in (last, len(data) - 1000):
        try:
            got = built.read(start, len(data))
        except errors.IntegrityError:
            continue
        assert got == data[start:], "wrong bytes served"


def test_reading_to_the_end_checks_the_mdc(ring, tmp_path):
    """A stream that decrypts but whose MDC does not match fails at the end,
    even when the reader takes exactly the stated size."""
    recipients, secret = ring
    data = os.urandom(200_000)
    built = Built(str(tmp_path), recipients, secret, data, "none", MiB)
    # flip a plaintext bit through CFB: the next block garbles, the MDC catches it;
    # then give the fragment a matching SHA-256 so that only the MDC can tell
    path = built.path(1)
    raw = bytearray(Path(path).read_bytes())
    raw[-100] ^= 1
    Path(path).write_bytes(raw)
    built.clear.fragments[0] = manifest.Fragment(len(raw), hashlib.sha256(raw).hexdigest())
    r = built.reader()
    with pytest.raises(errors.IntegrityError):
        r.read(0, len(data))
    r.close_stream()


def test_a_seek_index_entry_that_disagrees_is_refused(ring, tmp_path):
    recipients, secret = ring
    data = os.urandom(3 * MiB)
    built = Built(str(tmp_path), recipients, secret, data, "none", MiB + 7)
    plain, stream, iv = built.body["index"][-1]
    built.body["index"][-1] = [plain, stream, bytes(16).hex()]
    with pytest.raises(errors.IntegrityError, match="seek index"):
        built.read(plain, 100)


def test_a_stream_longer_than_the_stated_size_is_refused(ring, tmp_path):
    recipients, secret = ring
    data = os.urandom(MiB + 5000)
    built = Built(str(tmp_path), recipients, secret, data, "none", MiB)
    built.body["size"] = len(data) - 10
    for offset in (0, len(data) - 1000):
        with pytest.raises(errors.IntegrityError, match="more data"):
            built.read(offset, len(data))


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_frames_are_checksummed(codec):
    frame = compress.compressor(codec)(mixed(100_000))
    if codec == "lz4":
        assert frame[4] & 0x04                  # FLG: content checksum
    else:
        assert frame[4] & 0x04                  # Frame_Header_Descriptor: checksum flag
    bad = bytearray(frame)
    bad[-2] ^= 0xFF                              # the checksum itself
    with pytest.raises(errors.IntegrityError):
        b"".join(compress.decompress(codec, [bytes(bad)]))


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_only_the_last_frame_may_be_short(codec):
    c = compress.compressor(codec)
    good = [c(b"a" * 100), c(b"b" * 100), c(b"c" * 30)]
    assert b"".join(compress.decompress(codec, good, 100)) == b"a" * 100 + b"b" * 100 + b"c" * 30
    for frames in ([c(b"a" * 100), c(b"b" * 99), c(b"c" * 30)], [c(b"a" * 101)]):
        with pytest.raises(errors.IntegrityError):
            b"".join(compress.decompress(codec, frames, 100))


@pytest.fixture(params=["liblz4", "lz4.block", "lz4.frame"])
def lz4_decoder(request, monkeypatch):
    """Every way lz4 frames are read: one-block frames as raw blocks checked
    with xxhash, decoded by the system's liblz4 (lz4raw) or, without it, by
    python-lz4; and python-lz4's frame decoder (without xxhash installed)."""
    if request.param == "liblz4":
        assert lz4raw.decompress is not None, "liblz4.so.1 (package liblz4-1) not found"
    else:
        monkeypatch.setattr(lz4raw, "decompress", None)
    if request.param == "lz4.frame":
        monkeypatch.setattr(compress, "xxhash", None)
    return request.param


FRAME_VARIANTS = {
    "lz4": lambda data: lz4.frame.compress(data, block_size=lz4.frame.BLOCKSIZE_MAX64KB,
                                           block_checksum=True, content_checksum=True),
    "lz4-nosize": lambda data: lz4.frame.compress(data, store_size=False,
                                                  content_checksum=False),
    "zstd-nosize": lambda data: zstandard.ZstdCompressor(write_content_size=False,
                                                         write_checksum=True).compress(data),
}


@settings(max_examples=80, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=5000) | st.builds(mixed, st.integers(0, 300_000)),
       frame_size=st.integers(1, 200_000), cuts=st.lists(st.integers(1, 70_000), max_size=30),
       variant=st.sampled_from(["lz4", "zstd", *FRAME_VARIANTS]), workers=st.sampled_from([1, 2]))
def test_frames_decompress_across_any_chunking(lz4_decoder, data, frame_size, cuts, variant,
                                               workers):
    """Frames found by their headers, whatever the chunks (one octet, many frames)."""
    codec = variant.split("-")[0]
    c = FRAME_VARIANTS.get(variant) or compress.compressor(codec)
    stream = b"".join(c(data[i:i + frame_size]) for i in range(0, len(data), frame_size))
    chunks, pos = [], 0
    for cut in cuts + [len(stream)]:
        chunks.append(stream[pos:pos + cut])
        pos += cut
    chunks = [x for x in chunks if x] + ([stream[pos:]] if stream[pos:] else [])
    assert b"".join(compress.decompress(codec, chunks, frame_size, workers=workers)) == data
    if len(stream) > 1:
        with pytest.raises(errors.IntegrityError, match="ends inside a frame|unexpected size"):
            b"".join(compress.decompress(codec, [stream[:-1]], frame_size, workers=workers))


class Beyond(Exception):
    """The chunk source failed (a fragment outside a range, or not here)."""


@settings(max_examples=60, deadline=None, database=None)
@given(frames=st.integers(1, 12), frame_size=st.integers(1, 5000), cut=st.integers(0, 1 << 20),
       codec=st.sampled_from(["lz4", "zstd"]), workers=st.sampled_from([1, 2, 3]))
def test_a_failing_source_fails_no_frame_before_it(frames, frame_size, cut, codec, workers):
    """The chunk source fails somewhere after frame k: every frame before the
    failure comes out whole and in order, whatever the number of workers
    (which read frames ahead), and the failure only then."""
    c = compress.compressor(codec)
    data = mixed(frames * frame_size, cut)
    parts = [c(data[i:i + frame_size]) for i in range(0, len(data), frame_size)]
    k = cut % (len(parts) + 1)          # frames before the failure
    tail = b"".join(parts[k:])[:cut % 7] if k < len(parts) else b""

    def chunks():
        yield from parts[:k]
        if tail:
            yield tail                   # part of the next frame, then the failure
        raise Beyond("chunk source failed")
    got = []
    with pytest.raises(Beyond):
        for out in compress.decompress(codec, chunks(), frame_size, workers=workers):
            got.append(bytes(out))
    assert b"".join(got) == data[:k * frame_size]


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=3000) | st.builds(mixed, st.integers(0, 70_000)) |
       st.builds(os.urandom, st.integers(0, 70_000)),
       flip=st.integers(0, 1 << 30), bit=st.integers(0, 7))
def test_a_damaged_lz4_frame_never_gives_wrong_bytes(lz4_decoder, data, flip, bit):
    """Any one bit flipped anywhere in a frame (header, block size, stored or
    compressed block, checksum): the right bytes or IntegrityError."""
    frame = compress.compressor("lz4")(data)
    assert b"".join(compress.decompress("lz4", [frame], len(data) or 1)) == data
    bad = bytearray(frame)
    bad[flip % len(bad)] ^= 1 << bit
    try:
        got = b"".join(compress.decompress("lz4", [bytes(bad)], len(data) or 1, workers=2))
    except errors.IntegrityError:
        return
    assert got == data


@settings(max_examples=400, deadline=None, database=None)
@given(data=st.binary(max_size=3000) | st.builds(mixed, st.integers(0, 70_000)),
       size_delta=st.sampled_from([0, 0, 0, -1, 1, -1000, 5000]),
       flip=st.integers(0, 1 << 30), bit=st.integers(0, 8), cut=st.integers(0, 3))
def test_raw_lz4_blocks_decode_as_python_lz4_does(data, size_delta, flip, bit, cut):
    """liblz4 straight into the result (lz4raw) against python-lz4, over
    intact, bit-flipped and truncated blocks and wrong stated sizes: the
    same bytes, or both refuse (None)."""
    assert lz4raw.decompress is not None
    block = bytearray(lz4.block.compress(data, store_size=False))
    if bit < 8:
        block[flip % len(block)] ^= 1 << bit
    block = bytes(block[:len(block) - cut])
    size = len(data) + size_delta
    try:
        want = lz4.block.decompress(block, uncompressed_size=size) if size > 0 else None
    except Exception:
        want = None
    if want is not None and len(want) != size:
        want = None
    got = lz4raw.decompress(memoryview(b"+" + block)[1:], size)
    assert got == want
    assert got is None or type(got) is bytes


@pytest.mark.parametrize("kind", ["stored", "compressed"])
def test_lz4_frames_read_as_blocks_are_checked(kind):
    data = {"stored": os.urandom(5000), "compressed": b"abc" * 5000}[kind]
    frame = compress.compressor("lz4")(data)
    assert (frame[18] >> 7) == (kind == "stored")
    out = list(compress.decompress("lz4", [frame], 1 << 20))
    assert b"".join(out) == data
    if kind == "stored":
        assert isinstance(out[0], memoryview)      # handed on without a copy
    for where, what in ((-1, "content checksum"), (14, "header checksum")):
        bad = bytearray(frame)
        bad[where] ^= 0x10
        with pytest.raises(errors.IntegrityError, match=what):
            list(compress.decompress("lz4", [bytes(bad)], 1 << 20))
    with pytest.raises(errors.IntegrityError, match="unexpected length|ends inside"):
        list(compress.decompress("lz4", [frame + b"\0"], 1 << 20))


def test_lz4_block_claiming_more_than_lz4_can_expand_is_refused():
    """A header claiming a huge size over a small compressed block is refused
    before anything of that size is allocated."""
    frame = bytearray(compress.compressor("lz4")(b"ab" * 50))
    frame[6:14] = (1 << 40).to_bytes(8, "little")
    frame[14] = (compress.xxhash.xxh32(bytes(frame[4:14])).intdigest() >> 8) & 0xFF
    with pytest.raises(errors.IntegrityError, match="unexpected size"):
        list(compress.decompress("lz4", [bytes(frame)]))


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_frames_decompressed_in_threads_come_in_order(codec):
    """Frames decompressed side by side come out in order, a damaged one
    raises where it stands, and a reader that stops early stops them."""
    c = compress.compressor(codec)
    frames = [c(bytes([i]) * 1000) for i in range(20)]
    assert b"".join(compress.decompress(codec, frames, 1000, workers=2)) == \
        b"".join(bytes([i]) * 1000 for i in range(20))
    bad = bytearray(frames[7])
    bad[-1] ^= 1
    got = []
    with pytest.raises(errors.IntegrityError):
        for out in compress.decompress(codec, frames[:7] + [bytes(bad)] + frames[8:], 1000,
                                       workers=2):
            got.append(bytes(out))
    assert got == [bytes([i]) * 1000 for i in range(7)]
    stream = compress.decompress(codec, frames, 1000, workers=2)
    assert bytes(next(stream)) == bytes(1000)
    stream.close()


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_a_frame_claiming_more_than_a_frame_holds_is_refused(codec):
    frame = bytearray(compress.compressor(codec)(b"x" * 1000))
    with pytest.raises(errors.IntegrityError, match="unexpected size"):
        b"".join(compress.decompress(codec, [bytes(frame)], 999))
    frame[:4] = b"\0\0\0\0"
    with pytest.raises(errors.IntegrityError, match="not an? (lz4|zstd) frame"):
        b"".join(compress.decompress(codec, [bytes(frame)], 1000))


@pytest.mark.parametrize("change", ["overwrite", "append"])
def test_a_fragment_written_to_after_its_check_is_refused(ring, tmp_path, change):
    """Fragments read in place (a local vault) are read from the file that was
    hashed, and refused if it is written to between the check and the read."""
    recipients, secret = ring
    built = Built(str(tmp_path), recipients, secret, mixed(300_000, 3), "none", 100_000)
    frag = built.clear.fragments[0]
    os.utime(built.path(1), (1e9, 1e9))       # written long ago, as in a vault
    verified = reader.open_verified(built.path(1), frag, 1)
    blocks = verified.blocks()
    with open(built.path(1), "r+b") as f:
        if change == "overwrite":
            f.seek(10)
            f.write(bytes([f.read(1)[0] ^ 1]))
        else:
            f.seek(0, os.SEEK_END)
            f.write(b"x")
    with pytest.raises(errors.IntegrityError, match="changed while it was read"):
        list(blocks)
    assert verified.f.closed


# --- restore ends on every failure --------------------------------------------

class Damaged:
    """fragment_path for reader.restore that fails or hands back a bad file."""

    def __init__(self, built: Built, tmp: Path, kind: str, n: int):
        self.built, self.kind, self.n = built, kind, n
        self.bad = tmp / "bad"
        raw = bytearray(Path(built.path(n)).read_bytes())
        if kind == "flipped":
            raw[len(raw) // 2] ^= 1
        elif kind == "truncated":
            raw = raw[:len(raw) // 2]
        self.bad.write_bytes(raw)

    def __call__(self, n: int) -> str:
        if n != self.n:
            return self.built.path(n)
        if self.kind == "missing":
            raise errors.MissingFragmentError(f"fragment chunk.{n} is missing")
        return str(self.bad)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["flipped", "truncated", "missing"])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("codec", compress.CODECS)
def test_restore_raises_and_ends(ring, tmp_path, codec, kind, where):
    recipients, secret = ring
    data = mixed(2 * MiB + 300_000, 3)
    built = Built(str(tmp_path / "a"), recipients, secret, data, codec, 256 << 10)
    n = len(built.clear.fragments)
    damaged = Damaged(built, tmp_path, kind, {"first": 1, "middle": n // 2, "last": n}[where])
    out = io.BytesIO()
    result: dict = {}

    def run():
        try:
            reader.restore(built.clear, built.body, secret.decrypt_session_key, damaged, out)
        except BaseException as exc:
            result["error"] = exc
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "restore hangs"
    assert isinstance(result.get("error"), (errors.IntegrityError, errors.MissingFragmentError))
    assert threading.active_count() < 20
    if where == "first":                 # read while hashed, but nothing of it output
        assert out.getvalue() == b""
    else:
        assert data.startswith(out.getvalue())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("codec", compress.CODECS)
def test_restore_drops_the_mdc_only_where_frames_vouch(ring, tmp_path, monkeypatch, codec):
    """A restore computes the MDC's SHA-1 only for archives without frame
    checksums; damage of the decrypted stream is caught either way."""
    recipients, secret = ring
    data = os.urandom(32 * MiB)
    built = Built(str(tmp_path), recipients, secret, data, codec, 8 * MiB)
    hashed = []
    update = openpgp.BackgroundHash.update
    monkeypatch.setattr(openpgp.BackgroundHash, "update",
                        lambda self, b: (hashed.append(len(b)), update(self, b))[1])
    out = io.BytesIO()
    reader.restore(built.clear, built.body, secret.decrypt_session_key, built.path, out,
                   frames_vouch=True)
    assert out.getvalue() == data
    if codec == "none":
        assert sum(hashed) > len(data)
    else:       # bounded by the queues between decryption and decompression
        assert sum(hashed) < 24 * MiB
    # a bit flipped through CFB in the last fragment, its SHA-256 made to match
    n = len(built.clear.fragments)
    raw = bytearray(Path(built.path(n)).read_bytes())
    raw[-100] ^= 1
    Path(built.path(n)).write_bytes(raw)
    built.clear.fragments[-1] = manifest.Fragment(len(raw), hashlib.sha256(raw).hexdigest())
    with pytest.raises(errors.IntegrityError):
        reader.restore(built.clear, built.body, secret.decrypt_session_key, built.path,
                       io.BytesIO(), frames_vouch=True)


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_frames_vouch_only_if_all_of_them_carry_checksums(codec):
    with_sum = compress.compressor(codec)
    without = {"lz4": lambda d: lz4.frame.compress(d, content_checksum=False, store_size=True),
               "zstd": lambda d: zstandard.ZstdCompressor(write_checksum=False).compress(d)}[codec]
    mdc = openpgp.Mdc(frames_vouch=True)
    frames = [with_sum(b"a" * 100), without(b"b" * 100)]
    with pytest.raises(errors.IntegrityError, match="without a checksum"):
        b"".join(compress.decompress(codec, frames, 100, mdc.frame))
    assert not mdc.wanted
    mdc = openpgp.Mdc(frames_vouch=True)       # the first frame decides: an older archive
    frames = [without(b"a" * 100), with_sum(b"b" * 100)]
    assert b"".join(compress.decompress(codec, frames, 100, mdc.frame)) == b"a" * 100 + b"b" * 100
    assert mdc.wanted
    mdc = openpgp.Mdc()                          # (check --read-data: always the MDC)
    b"".join(compress.decompress(codec, [with_sum(b"a")], 100, mdc.frame))
    assert mdc.wanted


@pytest.mark.timeout(60)
@pytest.mark.parametrize("codec", compress.CODECS)
def test_restore_reports_a_failing_output(ring, tmp_path, codec):
    recipients, secret = ring
    built = Built(str(tmp_path), recipients, secret, mixed(MiB + 5, 4), codec, 256 << 10)

    class Broken:
        def write(self, data):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass
    with pytest.raises(errors.SpoolError):
        reader.restore(built.clear, built.body, secret.decrypt_session_key, built.path,
                       Broken())


# --- verdicts: a fragment hashed as it was written is not hashed again ----------

class CountingSha256:
    def __init__(self, monkeypatch):
        self.calls = 0
        real = reader.hashlib.sha256

        def sha256():
            self.calls += 1
            return real()
        monkeypatch.setattr(reader.hashlib, "sha256", sha256)


def test_a_verdict_holds_for_the_unchanged_file_in_this_boot(tmp_path, monkeypatch):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    sha = hashlib.sha256(b"x" * 100).hexdigest()
    with open(path, "rb") as f:
        verdict.record(f.fileno(), sha)
        assert verdict.holds(f.fileno(), sha)
        assert not verdict.holds(f.fileno(), hashlib.sha256(b"y").hexdigest())
        monkeypatch.setattr(verdict, "_boot", "another-boot")
        assert not verdict.holds(f.fileno(), sha)
        monkeypatch.setattr(verdict, "_boot", "")          # no boot id: nothing trusted
        assert not verdict.holds(f.fileno(), sha)
    monkeypatch.undo()
    with open(path, "r+b") as f:                           # a write, same size
        f.write(b"y")
    with open(path, "rb") as f:
        assert not verdict.holds(f.fileno(), sha)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("codec", compress.CODECS)
def test_fragments_the_writer_hashed_are_not_hashed_again(ring, tmp_path, monkeypatch, codec):
    recipients, secret = ring
    data = mixed(3 * MiB, 5)
    built = Built(str(tmp_path), recipients, secret, data, codec, MiB)
    counting = CountingSha256(monkeypatch)
    assert built.restore() == data
    assert counting.calls == 0
    # written to: hashed before use, and the damage caught before any output
    n = len(built.clear.fragments) // 2 + 1
    with open(built.path(n), "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))         # (a zero written there was, 1 in 256, no change)
    with pytest.raises(errors.IntegrityError, match=f"chunk.{n} fails its SHA-256"):
        built.restore()
    assert counting.calls >= 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("codec", compress.CODECS)
def test_a_disk_fault_under_a_verdict_is_still_caught(ring, tmp_path, codec):
    """Bytes that change under an unchanged size and mtime (a disk returning
    other bytes than were written): the frame checksums or the MDC catch it."""
    recipients, secret = ring
    data = mixed(3 * MiB, 6)
    built = Built(str(tmp_path), recipients, secret, data, codec, MiB)
    n = len(built.clear.fragments) // 2 + 1
    st = os.stat(built.path(n))
    with open(built.path(n), "r+b") as f:
        f.seek(st.st_size // 2)
        byte = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([byte[0] ^ 0x20]))
    os.utime(built.path(n), ns=(st.st_atime_ns, st.st_mtime_ns))
    with open(built.path(n), "rb") as f:
        assert verdict.holds(f.fileno(), built.clear.fragments[n - 1].sha256)
    with pytest.raises(errors.IntegrityError):
        reader.restore(built.clear, built.body, secret.decrypt_session_key, built.path,
                       io.BytesIO(), frames_vouch=True)
    reader.verify_fragment(built.path(1), built.clear.fragments[0], 1)
    with pytest.raises(errors.IntegrityError):     # (what thaw.drop_damaged uses)
        reader.verify_fragment(built.path(n), built.clear.fragments[n - 1], n)


def test_a_thawed_fragment_is_hashed_once(ring, tmp_path, monkeypatch):
    """thaw hashes a download as it arrives and records the verdict: restore
    takes it without hashing it again; one that fails its check is not kept."""
    from cryophile import thaw
    from cryophile.store.local import LocalStore
    recipients, secret = ring
    built = Built(str(tmp_path / "a"), recipients, secret, mixed(2 * MiB, 7), "lz4", MiB)
    store = LocalStore(str(tmp_path / "vault"))
    frag = built.clear.fragments[0]
    store.put("k", built.path(1), size=frag.size)
    dest = str(tmp_path / "chunk.1")
    thaw.fetch(store, "k", dest, expect=frag, n=1)
    counting = CountingSha256(monkeypatch)
    reader.open_verified(dest, frag, 1).close()
    assert counting.calls == 0
    with pytest.raises(errors.IntegrityError):
        thaw.fetch(store, "k", dest + "x", expect=manifest.Fragment(frag.size, "0" * 64), n=1)
    assert not os.path.exists(dest + "x")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_fragments_hashed_early_are_not_hashed_again(ring, tmp_path, monkeypatch, codec):
    """Fragments hashed while the restore starts (reader.Early) are taken as
    hashed when unchanged; the others are hashed as ever."""
    recipients, secret = ring
    data = mixed(3 * MiB, 8)
    built = Built(str(tmp_path), recipients, secret, data, codec, MiB)
    without_verdicts(built)
    early = reader.Early([built.path(1), built.path(2)])
    for path in (built.path(1), built.path(2)):
        with open(path, "rb") as f:
            assert early.digest(path, reader.stamp(os.fstat(f.fileno()))) is not None
    counting = CountingSha256(monkeypatch)     # (Early's own hashes are done)
    out = io.BytesIO()
    reader.restore(built.clear, built.body, secret.decrypt_session_key, built.path, out,
                   frames_vouch=True, early=early)
    assert out.getvalue() == data
    assert counting.calls == len(built.clear.fragments) - 2


@pytest.mark.timeout(120)
@pytest.mark.parametrize("when", ["changed", "replaced"])
@pytest.mark.parametrize("n", [1, 2])
def test_a_fragment_changed_after_it_was_hashed_early_is_hashed_again(ring, tmp_path, when, n):
    """An early digest counts only for that very file, unchanged (its inode,
    size and mtime): one written to or replaced since is hashed before use,
    and damage is reported as such, nothing of it written."""
    recipients, secret = ring
    data = mixed(3 * MiB, 9)
    built = Built(str(tmp_path), recipients, secret, data, "lz4", MiB)
    without_verdicts(built)
    path = built.path(n)
    early = reader.Early([built.path(1), built.path(2)])
    early.digest(path, ())                     # (waits until it is hashed)
    raw = bytearray(Path(path).read_bytes())
    raw[len(raw) // 2] ^= 0x10
    if when == "changed":
        with open(path, "r+b") as f:
            f.write(raw)
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
    else:
        Path(path + ".new").write_bytes(raw)
        os.replace(path + ".new", path)
    out = io.BytesIO()
    with pytest.raises(errors.IntegrityError, match=f"chunk.{n} fails its SHA-256"):
        reader.restore(built.clear, built.body, secret.decrypt_session_key, built.path, out,
                       frames_vouch=True, early=early)
    assert n > 1 or out.getvalue() == b""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("codec", compress.CODECS)
def test_damage_past_the_first_fragment_is_named_as_such(ring, tmp_path, codec):
    """The first fragment hashed while read (no verdict) and matched: damage
    in a later one is reported as that fragment's, not as the first one
    having changed."""
    recipients, secret = ring
    built = Built(str(tmp_path), recipients, secret, mixed(3 * MiB, 10), codec, MiB)
    without_verdicts(built)
    raw = bytearray(Path(built.path(3)).read_bytes())
    raw[len(raw) // 3] ^= 0x04
    Path(built.path(3)).write_bytes(raw)
    with pytest.raises(errors.IntegrityError, match="chunk.3 fails its SHA-256"):
        reader.restore(built.clear, built.body, secret.decrypt_session_key, built.path,
                       io.BytesIO(), frames_vouch=True)


@pytest.mark.timeout(60)
def test_early_hashing_always_settles(tmp_path):
    """A missing file, one not asked for, and a stop: digest never waits for ever."""
    there = tmp_path / "there"
    there.write_bytes(b"x" * (3 * MiB))
    early = reader.Early([str(tmp_path / "missing"), str(there)])
    assert early.digest(str(tmp_path / "missing"), ()) is None
    assert early.digest(str(tmp_path / "other"), ()) is None
    with open(there, "rb") as f:
        st = reader.stamp(os.fstat(f.fileno()))
    assert early.digest(str(there), st) == hashlib.sha256(b"x" * (3 * MiB)).hexdigest()
    stopped = reader.Early([str(there)] * 3)
    stopped.close()
    for _ in range(3):
        stopped.digest(str(there), st)        # settled, hashed or not


# --- the archive asked for -----------------------------------------------------

def test_check_identity_names_both_archives(ring, tmp_path):
    recipients, secret = ring
    built = Built(str(tmp_path), recipients, secret, b"x", "none", MiB)
    manifest.check_identity(built.clear, built.bid)
    other = ids.BackupId(VAULT, "p", ids.new_ulid())
    with pytest.raises(errors.IntegrityError) as info:
        manifest.check_identity(built.clear, other)
    assert str(other) in str(info.value) and str(built.bid) in str(info.value)
    for changed in (ids.BackupId(VAULT, "q", built.bid.ulid),
                    ids.BackupId("1b8c3a7e-5a1d-4f7e-9a53-3f1c2d4e5f60", "p", built.bid.ulid)):
        with pytest.raises(errors.IntegrityError):
            manifest.check_identity(built.clear, changed)


# --- the first fragment, decrypted while it is hashed ------------------------------

def without_verdicts(built: Built) -> None:
    """As after a reboot (or in a vault): every fragment is hashed before use."""
    for n in range(1, len(built.clear.fragments) + 1):
        try:
            os.removexattr(built.path(n), verdict.XATTR)
        except OSError:
            pass


class Recorder(io.BytesIO):
    """An output that notes whether the first fragment's hash had matched
    before anything was written."""

    def __init__(self, gates: list):
        super().__init__()
        self.gates, self.early = gates, False

    def write(self, data) -> int:
        if data and not all(g.state is True for g in self.gates):
            self.early = True
        return super().write(data)


def recording_gates(monkeypatch) -> list:
    gates = []
    real = reader.Gate

    class Recorded(real):
        def __init__(self):
            super().__init__()
            gates.append(self)
    monkeypatch.setattr(reader, "Gate", Recorded)
    return gates


@pytest.mark.timeout(600)
@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(size=st.integers(0, 3 * MiB), codec=st.sampled_from(compress.CODECS),
       fragment_size=st.sampled_from([MiB, MiB + 7, 300_001, 65536 + 3, 4096]),
       speculate=st.sampled_from([0, 1, 4096, 65536 + 1, MiB, 64 * MiB]),
       hold=st.sampled_from([0, 1, 65536, 64 * MiB]),
       block=st.sampled_from([MiB, 4096, 65536 + 1]),
       verdicts=st.booleans(), seed=st.integers(0, 1 << 30))
def test_the_first_fragment_read_while_hashed_comes_out_right(
        ring, monkeypatch, size, codec, fragment_size, speculate, hold, block, verdicts, seed):
    """Wherever the speculation and the hold end (within a block, a frame,
    the fragment, past it), the restore gives the archive's bytes, and
    nothing is written before the first fragment's hash has matched."""
    recipients, secret = ring
    monkeypatch.setattr(reader, "SPECULATE", speculate)
    monkeypatch.setattr(reader, "HOLD", hold)
    monkeypatch.setattr(reader, "BLOCK_SIZE", block)
    gates = recording_gates(monkeypatch)
    data = random.Random(seed).randbytes(size) if seed % 2 else mixed(size, seed)
    with tempfile.TemporaryDirectory() as root:
        built = Built(root, recipients, secret, data, codec, fragment_size, pieces=1 + seed % 4)
        if not verdicts:
            without_verdicts(built)
        out = Recorder(gates)
        reader.restore(built.clear, built.body, secret.decrypt_session_key, built.path, out,
                       frames_vouch=True)
    assert out.getvalue() == data and not out.early
    assert [g.state for g in gates] == [True]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("hold", [0, 64 * MiB])
@pytest.mark.parametrize("damage", ["flipped", "flipped-late", "truncated"])
@pytest.mark.parametrize("codec", compress.CODECS)
def test_damage_in_the_first_fragment_outputs_nothing(ring, tmp_path, monkeypatch, codec,
                                                      damage, hold):
    """Read while hashed, a damaged first fragment still gives the hash's
    error, and none of its plaintext reaches the output, whether the output
    waits at once (hold 0) or holds all of it."""
    recipients, secret = ring
    monkeypatch.setattr(reader, "HOLD", hold)
    data = mixed(3 * MiB, 8)
    built = Built(str(tmp_path), recipients, secret, data, codec, 2 * MiB)
    without_verdicts(built)
    raw = bytearray(Path(built.path(1)).read_bytes())
    if damage == "truncated":
        raw = raw[:len(raw) // 2]
    else:
        raw[len(raw) - 5 if damage == "flipped-late" else 200] ^= 4
    Path(built.path(1)).write_bytes(raw)
    out = io.BytesIO()
    with pytest.raises((errors.IntegrityError, errors.MissingFragmentError),
                       match="fails its SHA-256|truncated|has .* bytes"):
        reader.restore(built.clear, built.body, secret.decrypt_session_key, built.path, out,
                       frames_vouch=True)
    assert out.getvalue() == b""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("when", ["before the hash", "after the hash"])
def test_the_first_fragment_changed_while_read_is_refused(ring, tmp_path, monkeypatch, when):
    """The bytes read ahead of the hash are used only if the hash was of that
    very file, unchanged: written to before the hash, it is refused and
    nothing is output; written to after it, the reading stops there."""
    recipients, secret = ring
    monkeypatch.setattr(reader, "SPECULATE", 64 * MiB)
    monkeypatch.setattr(reader, "BLOCK_SIZE", 65536)
    data = os.urandom(3 * MiB)
    built = Built(str(tmp_path), recipients, secret, data, "none", 4 * MiB)
    without_verdicts(built)
    path = built.path(1)
    os.utime(path, (1e9, 1e9))               # written long ago, as in a vault
    real = reader.open_verified

    def touch() -> None:
        with open(path, "r+b") as f:         # the same bytes: only the stamp says so
            f.seek(100)
            byte = f.read(1)
            f.seek(100)
            f.write(byte)

    def hashing(p, frag, n, trust=True, **kw):
        if n == 1 and when == "before the hash":
            touch()
        found = real(p, frag, n, trust, **kw)
        if n == 1 and when == "after the hash":
            touch()
        return found
    monkeypatch.setattr(reader, "open_verified", hashing)
    out = io.BytesIO()
    with pytest.raises(errors.IntegrityError, match="changed while it was read"):
        reader.restore(built.clear, built.body, secret.decrypt_session_key, built.path, out)
    if when == "before the hash":            # the hash was not of the bytes read: none out
        assert out.getvalue() == b""
    else:                                     # what was read before the change, and no more
        assert data.startswith(out.getvalue())


@settings(max_examples=60, deadline=None, database=None)
@given(data=st.builds(mixed, st.integers(1, 200_000)), flip=st.integers(0, 1 << 30),
       bit=st.integers(0, 7))
def test_a_zstd_context_reused_after_a_damaged_frame_decodes_right(data, flip, bit):
    """Each thread keeps one zstd context for all its frames: a frame that
    fails leaves nothing behind that changes the next one's bytes."""
    frame = compress.compressor("zstd")(data)
    bad = bytearray(frame)
    bad[flip % len(bad)] ^= 1 << bit
    try:
        want = zstandard.ZstdDecompressor().decompress(bytes(bad))   # a fresh context
    except zstandard.ZstdError:
        want = None
    try:
        got = b"".join(compress.decompress("zstd", [bytes(bad)], len(data)))
    except errors.IntegrityError:
        got = None
    # (a header whose size says 0 gives no bytes: a short last frame, which
    # restore and the mount refuse by the archive's stated size)
    assert got == want or got is None
    assert b"".join(compress.decompress("zstd", [frame], len(data))) == data


@settings(max_examples=60, deadline=None, database=None)
@given(sizes=st.lists(st.integers(0, 3 * 65536 + 5), max_size=6))
def test_decryption_into_fresh_bytes_matches_update(sizes):
    """openpgp decrypts large pieces into new bytes it fills itself (no
    zero-filling): the same bytes as cryptography's update, piece by piece."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
    key, iv = os.urandom(32), os.urandom(16)
    ours = Cipher(algorithms.AES(key), openpgp.CFB(iv)).decryptor()
    theirs = Cipher(algorithms.AES(key), openpgp.CFB(iv)).decryptor()
    for n in sizes:
        ct = os.urandom(n)
        got = openpgp._update(ours, memoryview(b"-" + ct)[1:])
        assert bytes(got) == theirs.update(ct)


def cut(frame: bytes, cuts: list[int]) -> list[bytes]:
    out, pos = [], 0
    for n in cuts:
        out.append(frame[pos:pos + n])
        pos += n
    return [c for c in out if c] + [frame[pos:]]


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.builds(os.urandom, st.integers(0, 70_000)) | st.builds(mixed, st.integers(0, 70_000)),
       flip=st.integers(0, 1 << 30), bit=st.integers(0, 8),
       cuts=st.lists(st.integers(1, 30_000), max_size=8), workers=st.sampled_from([1, 2]))
def test_a_damaged_lz4_frame_over_chunks_never_gives_wrong_bytes(lz4_decoder, data, flip, bit,
                                                                 cuts, workers):
    """A frame spread over chunks (a stored block is then joined once, or
    handed on as views of them without a checksum): intact, the right bytes
    in the right order; any one bit flipped, the right bytes or IntegrityError."""
    frame = bytearray(compress.compressor("lz4")(data))
    if bit < 8:
        frame[flip % len(frame)] ^= 1 << bit
    try:
        got = b"".join(compress.decompress("lz4", cut(bytes(frame), cuts), len(data) or 1,
                                           workers=workers))
    except errors.IntegrityError:
        assert bit < 8
        return
    assert got == data


def _split_outcome(chunks, codec):
    """What _split makes of ``chunks``: each frame's bytes, stated size and
    checksum flag, then the error it ends with (its class and message), if any."""
    out = []
    try:
        for frame, size, summed in compress._split(chunks, codec):
            pieces = frame if isinstance(frame, list) else [frame]
            out.append((b"".join(bytes(p) for p in pieces), size, summed))
    except errors.IntegrityError as exc:
        out.append((type(exc), str(exc)))
    return out


@settings(max_examples=150, deadline=None, database=None)
@given(data=st.binary(max_size=3000) | st.builds(mixed, st.integers(0, 400_000)),
       frame_size=st.integers(1, 300_000), cuts=st.lists(st.integers(1, 300_000), max_size=12),
       flips=st.lists(st.tuples(st.integers(0, 1 << 30), st.integers(0, 7)), max_size=2),
       nosize=st.booleans(), truncate=st.integers(0, 3))
def test_zstd_frames_found_whole_as_the_scanner_finds_them(data, frame_size, cuts, flips,
                                                            nosize, truncate):
    """A zstd frame lying within one chunk is found by one loop over its block
    headers instead of the scanner: the same frames, sizes and checksum flags,
    and the same error at the same point, whatever the bytes (bits flipped
    anywhere, a stream cut short) and the chunking."""
    c = (zstandard.ZstdCompressor(write_content_size=False, write_checksum=True).compress
         if nosize else compress.compressor("zstd"))
    stream = bytearray(b"".join(c(data[i:i + frame_size])
                                for i in range(0, len(data), frame_size)) or c(b""))
    for flip, bit in flips:
        stream[flip % len(stream)] ^= 1 << bit
    stream = bytes(stream[:len(stream) - truncate])
    chunks = cut(stream, cuts)
    fast = _split_outcome(chunks, "zstd")
    with mock.patch.object(compress, "_zstd_whole", lambda view: None):
        assert fast == _split_outcome(chunks, "zstd")
