"""ArchiveWriter's seal: chunk.0 is published only once the archive's
directories are durable, so a failure there leaves nothing that looks sealed."""

from __future__ import annotations

import errno
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
