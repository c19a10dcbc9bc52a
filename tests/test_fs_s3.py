"""cryophilefs through S3 (moto behind the fault proxy) with the GLACIER class:
reading a frozen archive waits for a thaw that stays ongoing for seconds."""

from __future__ import annotations

import errno
import os
import subprocess
import time

import pytest

from tests.fsrig import FsRig, data, fskeys, needs_fuse, sh, state, wait_until  # noqa: F401

pytestmark = needs_fuse
RESTORE_SECONDS = 3.0


@pytest.fixture
def s3rig(tmp_path, fskeys, s3proxy, bucket) -> FsRig:
    return FsRig(tmp_path / "one", fskeys[0], url=f"s3://{bucket}",
                 endpoint_url=s3proxy.endpoint, storage_class="GLACIER")


def test_read_frozen_archive_waits_for_thaw(s3rig, s3proxy, data, fskeys, tmp_path):
    key = str(fskeys[1])
    with s3rig.mounted("-k", key, "-o", "thaw_poll=0.2"):
        sh(f"cat {data} > {s3rig.incoming}/glacial")
        archive = s3rig.archive()
        wait_until(lambda: state(archive) == "frozen")
        assert os.getxattr(archive, "user.cryophile.storage_class") == b"GLACIER"
        assert os.getxattr(archive, "user.cryophile.thaw") == b"0/4"
        s3proxy.restore_delay = RESTORE_SECONDS
        with pytest.raises(OSError) as info:           # not thawed: EAGAIN, thaw starts
            os.open(archive, os.O_RDONLY | os.O_NONBLOCK)
        assert info.value.errno == errno.EAGAIN
        assert state(archive) == "thawing"
        start = time.monotonic()
        sh(f"cmp {data} {archive}")                      # waits for the thaw, then reads
        assert time.monotonic() - start >= RESTORE_SECONDS * 0.8
        assert s3proxy.requests("POST", "restore")
    # A fresh machine (new spool) sees the archive in the bucket and reads it.
    fresh = FsRig(tmp_path / "two", fskeys[0], **s3rig.settings)
    with fresh.mounted("-k", key, "-o", "thaw_poll=0.2"):
        archive = fresh.archive()
        assert os.getxattr(archive, "user.cryophile.name") == b"glacial"
        assert os.stat(archive).st_size == data.stat().st_size
        sh(f"cmp {data} {archive}")


def test_setxattr_starts_a_thaw(s3rig, s3proxy, data, fskeys):
    with s3rig.mounted("-k", str(fskeys[1]), "-o", "thaw_poll=0.2"):
        sh(f"cat {data} > {s3rig.incoming}/later")
        archive = s3rig.archive()
        wait_until(lambda: state(archive) == "frozen")
        s3proxy.restore_delay = 1.0
        subprocess.run(["setfattr", "-n", "user.cryophile.thaw", "-v", "1", str(archive)],
                       check=False) if _have("setfattr") else \
            os.setxattr(archive, "user.cryophile.thaw", b"1")
        wait_until(lambda: os.getxattr(archive, "user.cryophile.thaw") == b"4/4", timeout=120)
        fd = os.open(archive, os.O_RDONLY | os.O_NONBLOCK)     # thawed: no EAGAIN
        try:
            assert os.read(fd, 100) == data.read_bytes()[:100]
        finally:
            os.close(fd)


def _have(program: str) -> bool:
    return subprocess.run(["which", program], capture_output=True).returncode == 0


def test_the_mount_lists_a_vault_from_the_chunk0_cache(s3rig, s3proxy, data, fskeys, tmp_path):
    """chunk.0s read once (by a mount or by `cryophile ls`) are cached in the
    spool: listing the vault again, in a new mount, GETs none of them."""
    with s3rig.mounted():
        for name in ("a", "b", "c"):
            sh(f"head -c 5000 {data} > {s3rig.incoming}/{name}")
        wait_until(lambda: all(state(p) == "frozen" for p in s3rig.archives.iterdir()
                               if p.is_file()) and len(os.listdir(s3rig.archives)) == 3)
    fresh = FsRig(tmp_path / "two", fskeys[0], **s3rig.settings)
    marks = []
    for _ in range(2):
        s3proxy.reset()
        with fresh.mounted():
            assert len([p for p in fresh.archives.iterdir() if p.is_file()]) == 3
        marks.append([r.path for r in s3proxy.requests("GET") if r.path.endswith("/chunk.0")])
    assert len(marks[0]) == 3 and marks[1] == [], marks


@pytest.mark.timeout(180)
@pytest.mark.parametrize("slow", [False, True], ids=["moto", "proxy"])
def test_state_after_a_warm_thaw_request(tmp_path, fskeys, moto_endpoint, s3proxy, bucket,
                                         data, slow):
    """A warm request (`cryophile restore` asks the vault to restore the
    fragments beyond its window, no download) shows thawing while it waits
    for a thawer, and thawed once the vault says the object is readable:
    at once on moto, after the restore's delay through the proxy."""
    import sys
    from cryophile import restorequeue, thaw
    from cryophile.ids import BackupId
    from cryophile.spool import Spool
    rig = FsRig(tmp_path / "one", fskeys[0], url=f"s3://{bucket}", storage_class="GLACIER",
                endpoint_url=s3proxy.endpoint if slow else moto_endpoint)
    spool = Spool(str(rig.spool))
    spool.ensure()
    daemon = thaw.DaemonLock(spool)          # a `cryophile thaw` elsewhere: the mount has none
    assert daemon.acquire()
    try:
        with rig.mounted(expect=()):
            sh(f"cat {data} > {rig.incoming}/warm")
            archive = rig.archive()
            wait_until(lambda: state(archive) == "frozen")
            bid = BackupId(rig.vault, "", archive.name)
            restorequeue.request(spool, bid, [1, 2, 3, 4], warm=True)
            assert state(archive) == "thawing"
            daemon.release()
            if slow:
                s3proxy.restore_delay = 2.0
            subprocess.run([sys.executable, "-m", "cryophile", "-S", str(rig.spool), "-c",
                            str(rig.config), "thaw", "--once"], check=True, timeout=120,
                           capture_output=True)
            assert not restorequeue.requests(spool, bid, warm=True)
            if slow:
                assert state(archive) == "thawing"        # the vault's restore is ongoing
            wait_until(lambda: state(archive) == "thawed", timeout=60)
    finally:
        daemon.release()


@pytest.mark.timeout(180)
def test_a_missing_fragment_record_goes_stale_when_the_object_is_back(s3rig, data, fskeys,
                                                                       s3client, bucket):
    """A read that finds a fragment gone records the failure with what the
    vault held (nothing): the archive is damaged while the object stays
    gone, and no longer once it is back, without anyone asking again."""
    with s3rig.mounted("-k", str(fskeys[1]), "-o", "thaw_poll=0.2",
                       expect=(r"chunk\.2 .*missing",)):
        sh(f"cat {data} > {s3rig.incoming}/gone")
        archive = s3rig.archive()
        wait_until(lambda: state(archive) == "frozen")
        key = f"{archive.name}/chunk.2"
        size = s3client.head_object(Bucket=bucket, Key=key)["ContentLength"]
        s3client.delete_object(Bucket=bucket, Key=key)
        with pytest.raises(OSError):
            os.open(archive, os.O_RDONLY | os.O_NONBLOCK)
        assert list((s3rig.spool / "thaw").rglob("chunk.2.failed"))
        assert state(archive) == "damaged"              # the object is still gone
        s3client.put_object(Bucket=bucket, Key=key, Body=b"\0" * size,
                             StorageClass="GLACIER")      # (put back: any bytes will do)
        assert state(archive) == "frozen"               # the record no longer holds
        assert not list((s3rig.spool / "thaw").rglob("chunk.2.failed"))


@pytest.mark.timeout(180)
def test_the_state_is_judged_over_every_fragment(s3rig, s3proxy, data, s3client, bucket):
    """thawed only once every fragment is readable, thawing while the rest is
    being restored; readable answers are kept: stats in a row make no request."""
    import boto3
    with s3rig.mounted("-o", "thaw_poll=0.2"):
        sh(f"cat {data} > {s3rig.incoming}/parts")
        archive = s3rig.archive()
        wait_until(lambda: state(archive) == "frozen")
        keys = [f"{archive.name}/chunk.{n}" for n in range(1, 5)]

        def asked(key):         # state read until the mount has asked the vault about key
            state(archive)
            return any(r.path.endswith("/" + key) for r in s3proxy.requests("HEAD"))
        # another host restores the first fragment only: reading still needs a thaw
        s3client.restore_object(Bucket=bucket, Key=keys[0], RestoreRequest={"Days": 1})
        s3proxy.reset()
        wait_until(lambda: asked(keys[0]))
        assert state(archive) == "frozen"
        # the rest is being restored
        s3proxy.restore_delay = 3600
        proxied = boto3.session.Session().client("s3", endpoint_url=s3proxy.endpoint)
        try:
            for key in keys[1:]:
                proxied.restore_object(Bucket=bucket, Key=key, RestoreRequest={"Days": 1})
        finally:
            proxied.close()
        wait_until(lambda: state(archive) == "thawing")
        s3proxy.reset()                                 # the restores are done
        wait_until(lambda: state(archive) == "thawed")
        s3proxy.reset()
        assert all(state(archive) == "thawed" for _ in range(10))
        assert not s3proxy.requests("HEAD")             # kept: no request per stat
