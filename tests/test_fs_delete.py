"""unlink of an archive in a real mount: EROFS unless -o allow_delete, then
as `cryophile rm` (chunk.0 first, then the fragments, spool and vault)."""

from __future__ import annotations

import errno
import os

import pytest

from tests.fsrig import data, fskeys, needs_fuse, rig, sh, state, wait_until  # noqa: F401

pytestmark = [needs_fuse, pytest.mark.timeout(180)]


def test_unlink_with_allow_delete_deletes_the_archive(rig, data, fskeys):
    with rig.mounted("-k", str(fskeys[1]), "-o", "allow_delete", expect=("is open",)):
        os.makedirs(rig.incoming / "tank")
        sh(f"cat {data} > {rig.incoming}/tank/keep")
        sh(f"cat {data} > {rig.incoming}/tank/gone")
        keep = rig.archive("tank", name_like="keep")
        gone = rig.archive("tank", name_like="gone")
        wait_until(lambda: state(gone) == "local" and state(keep) == "local")
        with open(gone, "rb") as f:                       # an open archive stays
            with pytest.raises(OSError) as info:
                os.unlink(gone)
            assert info.value.errno == errno.EBUSY
            assert len(f.read(10)) == 10
        os.unlink(gone)
        assert not gone.exists()
        assert os.listdir(rig.archives / "tank") == [keep.name]
        assert not (rig.vaults / rig.vault / "tank" / gone.name).exists()
        assert (rig.vaults / rig.vault / "tank" / keep.name / "chunk.0").exists()
        sh(f"cmp {data} {keep}")
    assert "deleted" in rig.log


def test_unlink_without_allow_delete_is_erofs(rig, data, fskeys):
    with rig.mounted(expect=("read-only",)):
        sh(f"cat {data} > {rig.incoming}/stays")
        archive = rig.archive()
        with pytest.raises(OSError) as info:
            os.unlink(archive)
        assert info.value.errno == errno.EROFS
        assert archive.exists()
    assert "allow_delete" in rig.log


def test_unlink_of_an_archive_still_queued_is_ebusy(tmp_path, fskeys, data):
    """The mount's own freeze may be uploading it: deleting waits until it is frozen.
    (The vault here is a file, so the freeze keeps failing and the archive stays queued.)"""
    from tests.fsrig import FsRig
    (tmp_path / "not-a-dir").write_bytes(b"")
    rig = FsRig(tmp_path, fskeys[0], url=f"file://{tmp_path / 'not-a-dir'}")
    with rig.mounted("-o", "allow_delete", expect=("cannot store", "still being frozen",
                                                   "freeze")):
        sh(f"cat {data} > {rig.incoming}/queued")
        archive = rig.archive()
        with pytest.raises(OSError) as info:
            os.unlink(archive)
        assert info.value.errno == errno.EBUSY
        assert archive.exists()


def test_unlink_of_a_base_that_an_incremental_needs_is_ebusy(rig, fskeys, tmp_path):
    """The incremental under another prefix of the vault (named in full)."""
    from tests.streamgen import zfs_substream
    full, incr = tmp_path / "full", tmp_path / "incr"
    full.write_bytes(zfs_substream("<", 11, 0, "tank/home@d1", []))
    incr.write_bytes(zfs_substream("<", 22, 11, "tank/home@d2", []))
    with rig.mounted("-k", str(fskeys[1]), "-o", "allow_delete",
                     expect=("is the base of",)):
        sh(f"cat {full} > {rig.incoming}/full")
        os.makedirs(rig.incoming / "incr")
        sh(f"cat {incr} > {rig.incoming}/incr/incr")
        base = rig.archive(name_like="full")
        child = rig.archive("incr", name_like="incr")
        wait_until(lambda: state(base) == "local" and state(child) == "local")
        assert os.getxattr(child, "user.cryophile.parent").decode() == base.name
        with pytest.raises(OSError) as info:
            os.unlink(base)
        assert info.value.errno == errno.EBUSY
        assert base.exists()
        os.unlink(child)
        os.unlink(base)
        assert not [p for p in rig.archives.rglob("*") if p.is_file()]
    assert f"is the base of {rig.vault}/incr/{child.name}:" in rig.log
