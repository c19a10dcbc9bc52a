"""Files the spool rewrites in place (failure records, the thaw ledger, a
backup's stream record, the last freeze) are written whole or not at all:
on a full filesystem the old file stays, no temporary file is left behind,
and the caller gets a named error."""

import errno
import os
import shutil
import subprocess

import pytest
from hypothesis import given, settings, strategies as st

from cryophile import errors, ledger, restorequeue, spool as spoolmod
from cryophile.fsutil import replace_file
from cryophile.ids import BackupId, new_ulid
from cryophile.spool import Spool

VAULT = "0b8c3a7e-5a1d-4f7e-9a53-3f1c2d4e5f60"
needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"),
                                reason="needs root to mount a small tmpfs")


@given(old=st.binary(max_size=10_000), new=st.binary(max_size=100_000))
@settings(max_examples=30, deadline=None)
def test_replace_file_writes_the_new_bytes_and_nothing_else(tmp_path_factory, old, new):
    d = tmp_path_factory.mktemp("replace")
    path = d / "file"
    path.write_bytes(old)
    replace_file(str(path), new, 0o640)
    assert path.read_bytes() == new
    assert os.listdir(d) == ["file"]
    assert path.stat().st_mode & 0o777 == 0o640


@pytest.fixture
def full(tmp_path):
    """A small tmpfs with ``full.fill()`` to use up its space."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mnt)],
                   check=True, timeout=60)

    class Full:
        root = mnt

        @staticmethod
        def fill():
            with open(mnt / ".filler", "ab", buffering=0) as f:
                try:
                    while True:
                        f.write(b"\0" * 4096)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
    try:
        yield Full
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=60)


def archive_in(full, queue: str) -> tuple[Spool, BackupId]:
    """A spool on the small filesystem with an archive's directory in ``queue``."""
    spool = Spool(str(full.root / "spool"))
    spool.ensure()
    bid = BackupId(VAULT, "tank", new_ulid())
    os.makedirs(spool.dir(queue, bid))
    return spool, bid


def leftovers(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n != ".filler")


@needs_root
@pytest.mark.timeout(60)
def test_replace_file_on_a_full_filesystem_keeps_the_old_file(full):
    path = full.root / "file"
    path.write_bytes(b"old")
    full.fill()
    with pytest.raises(OSError) as caught:
        replace_file(str(path), b"new" * 10_000)
    assert caught.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"old"
    assert leftovers(full.root) == ["file"]


@needs_root
@pytest.mark.timeout(60)
def test_a_failure_record_on_a_full_spool_is_a_named_error_and_leaves_nothing(full):
    spool, bid = archive_in(full, "thaw")
    full.fill()
    with pytest.raises(errors.DiskFullError, match="cannot record the failure"):
        restorequeue.record_failure(spool, bid, 3, errors.NotFoundError("gone " * 2000))
    assert leftovers(spool.dir("thaw", bid)) == []
    assert restorequeue.failures(spool, bid) == {}


@needs_root
@pytest.mark.timeout(60)
def test_the_ledger_on_a_full_spool_keeps_its_old_content(full):
    spool = Spool(str(full.root / "spool"))
    spool.ensure()
    book = ledger.Ledger(spool)
    with book.locked() as data:
        data["days"]["2026-01-01"] = {"v": 1}
    before = (full.root / "spool" / "thaw" / ".ledger.json").read_bytes()
    full.fill()
    with pytest.raises(errors.DiskFullError):
        with book.locked() as data:
            data["days"]["2026-01-02"] = {"v": "x" * 20_000}
    assert (full.root / "spool" / "thaw" / ".ledger.json").read_bytes() == before
    assert leftovers(spool.queue("thaw")) == [".ledger.json", ".ledger.lock"]


@needs_root
@pytest.mark.timeout(60)
def test_a_stream_record_on_a_full_spool_leaves_nothing(full):
    spool, bid = archive_in(full, "backup")
    full.fill()
    with pytest.raises(errors.DiskFullError, match="cannot record the stream"):
        spoolmod.note_stream(spool, bid, {"kind": "zfs", "ids": ["x" * 20_000]})
    assert leftovers(spool.dir("backup", bid)) == []
