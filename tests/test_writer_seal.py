"""ArchiveWriter's seal: chunk.0 is published only once the archive's
directories are durable, so a failure there leaves nothing that looks sealed."""

from __future__ import annotations

import errno
import io
import os

import pytest

from cryophile import errors, ids, keys
from cryophile.pipeline.writer import ArchiveWriter
from cryophile.spool import Spool
from tests.fsrig import fskeys  # noqa: F401

VAULT = "0b8c3a7e-5a1d-4f7e-9a53-3f1c2d4e5f60"


@pytest.fixture(scope="module")
def recipients(fskeys):
    return keys.load_certificates([str(fskeys[0])])


def test_seal_fsyncs_every_parent_before_chunk0(tmp_path, recipients, monkeypatch):
    spool = Spool(str(tmp_path / "spool"))
    spool.ensure()
    bid = ids.BackupId(VAULT, "tank/home", ids.new_ulid())
    synced = []
    from cryophile.pipeline import writer as writer_module
    real = writer_module.fsync_dir

    def record(path):
        synced.append((path, os.path.exists(spool.path("freeze", bid, 0))))
        real(path)
    monkeypatch.setattr(writer_module, "fsync_dir", record)
    w = ArchiveWriter(spool, bid, recipients, "lz4", 1 << 20)
    w.write(os.urandom(3000))
    w.close()
    top = spool.queue("freeze")
    expected = [os.path.join(top, VAULT, "tank/home"), os.path.join(top, VAULT, "tank"),
                os.path.join(top, VAULT), top]
    assert [p for p, _ in synced] == expected
    assert not any(published for _, published in synced)     # all before chunk.0
    assert os.path.exists(spool.path("freeze", bid, 0))


def test_a_failing_parent_fsync_publishes_no_chunk0(tmp_path, recipients, monkeypatch):
    spool = Spool(str(tmp_path / "spool"))
    spool.ensure()
    bid = ids.BackupId(VAULT, "", ids.new_ulid())

    def failing(self):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(ArchiveWriter, "_fsync_parents", failing)
    w = ArchiveWriter(spool, bid, recipients, "lz4", 1 << 20)
    w.write(os.urandom(3000))
    with pytest.raises(errors.SpoolError):
        w.close()
    assert not os.path.exists(spool.path("freeze", bid, 0))


def _restore(spool: Spool, bid, secret) -> bytes:
    from cryophile import manifest
    from cryophile.pipeline import reader
    clear, encrypted = manifest.load(spool.path("freeze", bid, 0))
    body = manifest.read_manifest(encrypted, clear, secret.decrypt_session_key)
    out = io.BytesIO()
    reader.restore(clear, body, secret.decrypt_session_key,
                   lambda n: spool.path("freeze", bid, n), out)
    return out.getvalue()


@pytest.mark.parametrize("codec", ["lz4", "zstd", "none"])
def test_buffers_reused_or_kept_as_given_come_back_byte_for_byte(tmp_path, fskeys, codec):
    """bytes (and views of bytes) are compressed where they lie; a bytearray
    the caller refills after each write must be copied."""
    recipients = keys.load_certificates([str(fskeys[0])])
    secret = keys.load_secret_keys([str(fskeys[1])], None)
    spool = Spool(str(tmp_path / "spool"))
    spool.ensure()
    bid = ids.BackupId(VAULT, "", ids.new_ulid())
    mib = 1 << 20
    w = ArchiveWriter(spool, bid, recipients, codec, 3 * mib)
    expected = bytearray()
    buf = bytearray(mib)
    for i, size in enumerate([mib, mib, 5000, mib, 2 * mib + 7, mib - 5000, 3 * mib, 1]):
        data = os.urandom(size) if i % 2 else bytes([i]) * size
        expected += data
        if i % 3 == 0:                  # a reused buffer, overwritten right after
            buf[:] = data
            w.write(buf)
            buf[:] = bytes(len(buf))
        elif i % 3 == 1:
            w.write(data)
        else:
            w.write(memoryview(data)[:])
    w.close()
    assert _restore(spool, bid, secret) == bytes(expected)


def test_a_fragment_that_cannot_be_queued_fails_the_backup(tmp_path, recipients, monkeypatch):
    """Fragments are fsynced and queued by a thread of their own: its failure
    reaches the caller, and nothing is sealed."""
    from cryophile.pipeline import split
    spool = Spool(str(tmp_path / "spool"))
    spool.ensure()
    bid = ids.BackupId(VAULT, "", ids.new_ulid())

    def failing(work_dir, queue_dir, name):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(split, "publish", failing)
    w = ArchiveWriter(spool, bid, recipients, "lz4", 1 << 20)
    with pytest.raises(errors.SpoolError, match="cannot queue fragment 1"):
        for _ in range(8):
            w.write(os.urandom(1 << 20))
        w.close()
    w.abort()
    assert not os.path.exists(spool.path("freeze", bid, 0))
    assert not os.path.exists(spool.path("freeze", bid, 1))


@pytest.mark.timeout(30)
def test_the_mdc_thread_hashes_in_order_and_never_blocks_once_stopped():
    import hashlib
    from cryophile.pipeline import openpgp
    parts = [os.urandom(n) for n in (1, 1 << 20, 17, 300000, 0, 5)] * 4
    h = openpgp.HashThread(hashlib.sha1())
    for part in parts:
        h.update(memoryview(part))
    assert h.digest() == hashlib.sha1(b"".join(parts)).digest()
    stopped = openpgp.HashThread(hashlib.sha1())
    stopped.stop()
    for _ in range(4 * openpgp.HashThread.DEPTH):     # an abandoned message
        stopped.update(b"x" * 100)


def test_fragments_carry_their_sha256_for_freeze(tmp_path, recipients, monkeypatch):
    """freeze takes each fragment's SHA-256 from the writer (an xattr) instead
    of reading the fragment again; without one it hashes the file."""
    import hashlib
    from cryophile import manifest
    from cryophile.pipeline import split
    spool = Spool(str(tmp_path / "spool"))
    spool.ensure()
    bid = ids.BackupId(VAULT, "", ids.new_ulid())
    w = ArchiveWriter(spool, bid, recipients, "lz4", 1 << 20)
    w.write(os.urandom(3 << 20))
    w.close()
    clear, _ = manifest.load(spool.path("freeze", bid, 0))
    paths = [spool.path("freeze", bid, n + 1) for n in range(len(clear.fragments))]
    try:
        os.getxattr(paths[0], split.SHA256_XATTR)
    except OSError:
        pytest.skip("no user xattrs on this filesystem")
    real = split.file_sha256
    monkeypatch.setattr(split, "file_sha256", lambda path: pytest.fail("hashed again"))
    for path, fragment in zip(paths, clear.fragments):
        assert split.fragment_sha256(path).hex() == fragment.sha256
    monkeypatch.setattr(split, "file_sha256", real)
    os.removexattr(paths[0], split.SHA256_XATTR)
    os.setxattr(paths[1], split.SHA256_XATTR, b"short")
    for path in paths[:2]:
        with open(path, "rb") as f:
            assert split.fragment_sha256(path) == hashlib.sha256(f.read()).digest()
