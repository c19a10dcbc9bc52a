"""Reads of archives through a real mount: whatever the offsets, sizes, order
and concurrency, what comes back is the archive's bytes (property tests)."""

from __future__ import annotations

import concurrent.futures
import errno
import os
import random
import re
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.clirig import make_rig
from tests.fsrig import FsRig, fskeys, needs_fuse  # noqa: F401

pytestmark = needs_fuse

MiB = 1 << 20
CODECS = ["none", "lz4", "zstd"]


def payload(codec: str, size: int) -> bytes:
    """Runs of text and of random bytes: every codec makes frames of several sizes."""
    rnd = random.Random(codec)
    parts, n = [], 0
    while n < size:
        part = rnd.randbytes(rnd.randrange(1, 300_000)) if rnd.random() < 0.5 else \
            (b"cryophile %d " % rnd.randrange(10**6)) * rnd.randrange(1, 30_000)
        parts.append(part)
        n += len(part)
    return b"".join(parts)[:size]


@pytest.fixture(scope="module")
def archives(tmp_path_factory, fskeys):
    """One mount of a local vault holding an archive per codec (fragments of
    1 MiB + 7 bytes: fragment and block edges fall apart): {codec: (data, path)}."""
    root = tmp_path_factory.mktemp("fs-reads")
    (root / "cli").mkdir()
    rig = make_rig(root / "cli")
    made = {}
    for i, codec in enumerate(CODECS):
        data = payload(codec, 7 * MiB + 12_345 * (i + 1))
        made[codec] = data, rig.backup(data, fskeys[0], "-C", codec, "-s", str(MiB + 7))
    rig.run("freeze", "--once", check=True)
    fs = FsRig(root / "fs", fskeys[0])
    shutil.copytree(rig.vaults, fs.vaults)
    with fs.mounted("-k", str(fskeys[1])):
        yield {codec: (data, fs.archives / ulid) for codec, (data, ulid) in made.items()}


def pread_all(fd: int, size: int, offset: int) -> bytes:
    """pread until ``size`` bytes or the end (a short read is allowed, not a wrong one)."""
    parts = []
    while size > 0:
        got = os.pread(fd, size, offset)
        if not got:
            break
        parts.append(got)
        size -= len(got)
        offset += len(got)
    return b"".join(parts)


reads = st.lists(st.tuples(st.one_of(st.integers(0, 8 * MiB),
                                     st.sampled_from([0, MiB - 1, MiB, 3 * MiB + 5])),
                           st.one_of(st.integers(1, 3 * MiB),
                                     st.sampled_from([1, 4096, 128 << 10, MiB, MiB + 1]))),
                 min_size=1, max_size=8)


@pytest.mark.timeout(600)
@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(codec=st.sampled_from(CODECS), wanted=reads, reopen=st.booleans())
def test_any_read_anywhere_is_the_archives_bytes(archives, codec, wanted, reopen):
    data, path = archives[codec]
    fd = os.open(path, os.O_RDONLY)
    try:
        for off, size in wanted:
            if reopen:                      # a fresh reader for each read, too
                os.close(fd)
                fd = os.open(path, os.O_RDONLY)
            assert pread_all(fd, size, off) == data[off:off + size], (off, size)
    finally:
        os.close(fd)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("codec", CODECS)
def test_concurrent_readers_of_one_archive(archives, codec):
    """Threads reading at random places, on one shared descriptor and on their own."""
    data, path = archives[codec]
    shared = os.open(path, os.O_RDONLY)

    def reader(seed: int) -> None:
        rnd = random.Random(seed)
        fd = shared if seed % 2 else os.open(path, os.O_RDONLY)
        try:
            for _ in range(12):
                off = rnd.choice([rnd.randrange(len(data)), rnd.randrange(8) * MiB])
                size = rnd.choice([4096, MiB, rnd.randrange(1, 2 * MiB)])
                assert pread_all(fd, size, off) == data[off:off + size], (seed, off, size)
        finally:
            if fd != shared:
                os.close(fd)
    try:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            for result in [pool.submit(reader, seed) for seed in range(6)]:
                result.result(timeout=240)
    finally:
        os.close(shared)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("bs", ["4k", "1M", "3145729"])
def test_whole_reads_with_any_buffer(archives, bs):
    for codec, (data, path) in archives.items():
        proc = subprocess.run(["dd", f"if={path}", f"bs={bs}", "status=none"],
                              capture_output=True, timeout=120)
        assert proc.returncode == 0 and proc.stdout == data, (codec, bs)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("codec", ["lz4", "zstd"])
@pytest.mark.parametrize("harm", ["missing", "damaged"])
def test_reads_before_a_missing_or_damaged_fragment_are_served(tmp_path, fskeys, codec, harm):
    """A fragment gone from the vault, or damaged there: every frame that lies
    wholly before it reads back (decompression reads frames ahead, into the
    bad fragment: that must fail nothing before it), and the read that needs
    it fails with EIO and a log line, never with wrong bytes."""
    (tmp_path / "cli").mkdir()
    rig = make_rig(tmp_path / "cli")
    data = random.Random(codec).randbytes(8 * MiB)    # stored frames: places known
    ulid = rig.backup(data, fskeys[0], "-C", codec, "-s", str(MiB + 7))
    rig.run("freeze", "--once", check=True)
    fs = FsRig(tmp_path / "fs", fskeys[0])
    shutil.copytree(rig.vaults, fs.vaults)
    bad = 6                   # fragments 1-5 hold the message's first 5 MiB + 35 bytes:
    safe = 4 * MiB            # the first 4 frames, with their headers and the key packets
    (chunk,) = fs.vaults.glob(f"*/{ulid}/chunk.{bad}")
    if harm == "missing":
        chunk.unlink()
        expect = (rf"chunk\.{bad}",)
    else:
        raw = bytearray(chunk.read_bytes())
        raw[random.Random(codec).randrange(len(raw))] ^= 0x40
        chunk.write_bytes(bytes(raw))
        expect = ("nothing unverified",)
    with fs.mounted("-k", str(fskeys[1]), expect=expect):
        fd = os.open(fs.archives / ulid, os.O_RDONLY)
        good = b""
        try:
            with pytest.raises(OSError) as failure:
                while got := os.pread(fd, MiB, len(good)):
                    good += got
        finally:
            os.close(fd)
    assert failure.value.errno == errno.EIO
    assert good == data[:len(good)] and safe <= len(good) < len(data)
    assert re.search(expect[0], fs.log)
