"""The thaw/restore lifecycle ends and is safe under concurrency: a damaged or
missing fragment is a permanent failure after bounded retries, concurrent
restores of one archive all succeed, and a restore streams through a spool
bounded by spool_max.  Real parts: moto behind the fault proxy, file://
vaults, real mounts."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cryophile import restorequeue, thaw
from cryophile.ids import BackupId
from cryophile.spool import Spool
from tests.clirig import Rig, thaw_daemon_running
from tests.fsrig import FsRig, data, fskeys, needs_fuse, sh, state, wait_until  # noqa: F401
from tests.test_s3_e2e import FRAG, S3Rig

DAMAGED, MISSING = 9, 8


@pytest.fixture
def s3(tmp_path, bucket, s3proxy):
    return S3Rig(tmp_path, bucket, s3proxy.endpoint)


def frozen(rig, recipes, frags: int = 4) -> tuple[str, bytes]:
    data = os.urandom(frags * FRAG - 1000)
    ulid = rig.backup(data, recipes["gpg"].cert, "-s", "64KiB", "-C", "none")
    rig.run("freeze", "--once", check=True)
    return ulid, data


def damage(s3client, bucket: str, key: str) -> bytes:
    s3client.restore_object(Bucket=bucket, Key=key, RestoreRequest={"Days": 1})
    good = s3client.get_object(Bucket=bucket, Key=key)["Body"].read()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0x01
    s3client.put_object(Bucket=bucket, Key=key, Body=bytes(bad), StorageClass="GLACIER")
    return good


def spool_files(spool: Path, queue: str) -> list[str]:
    """What a queue holds (the thaw daemon's lock and the thaw budget's ledger,
    which are the spool's own, aside)."""
    return sorted(str(p.relative_to(spool)) for p in (spool / queue).rglob("*")
                  if p.name not in (".daemon", ".ledger.json", ".ledger.lock"))


def requests_left(rig, ulid: str) -> list[str]:
    return [p for p in spool_files(rig.spool, "thaw")
            if ulid in p and "chunk." in p and not p.endswith(".failed")]


def gets(s3proxy, key: str) -> int:
    return len([r for r in s3proxy.requests("GET") if r.path.endswith("/" + key)])


# --- retries end --------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_damaged_fragment_fails_after_bounded_downloads(s3, recipes, s3client, bucket,
                                                        s3proxy):
    ulid, data = frozen(s3, recipes)
    good = damage(s3client, bucket, f"{ulid}/chunk.2")
    proc = s3.restore(ulid, recipes["gpg"].key, timeout=120)
    assert proc.returncode == DAMAGED, proc.stderr
    assert b"chunk.2" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert gets(s3proxy, f"{ulid}/chunk.2") == thaw.VERIFY_TRIES
    # the failure is recorded; no request, no thawed copy is left behind
    assert requests_left(s3, ulid) == []
    assert any(p.endswith("chunk.2.failed") for p in spool_files(s3.spool, "thaw"))
    assert not [p for p in spool_files(s3.spool, "restore") if "chunk." in p]
    # a thaw daemon run afterwards has nothing to retry
    s3proxy.reset()
    s3.run("thaw", "--once", check=True, timeout=60)
    assert not s3proxy.requests("GET")
    # asking again tries again (as boundedly), and succeeds once repaired
    proc = s3.restore(ulid, recipes["gpg"].key, timeout=120)
    assert proc.returncode == DAMAGED
    assert gets(s3proxy, f"{ulid}/chunk.2") == thaw.VERIFY_TRIES
    s3client.put_object(Bucket=bucket, Key=f"{ulid}/chunk.2", Body=good, StorageClass="GLACIER")
    assert s3.restore(ulid, recipes["gpg"].key, check=True, timeout=120).stdout == data
    assert spool_files(s3.spool, "thaw") == []


@pytest.mark.timeout(300)
def test_thaw_daemon_gives_up_on_a_missing_fragment(s3, recipes, s3client, bucket, s3proxy):
    ulid, _ = frozen(s3, recipes)
    s3client.delete_object(Bucket=bucket, Key=f"{ulid}/chunk.3")
    spool = Spool(str(s3.spool))
    bid = BackupId(s3.vault, "", ulid)
    restorequeue.request(spool, bid, [1, 3])          # as a reader left them
    proc = s3.run("thaw", "--once", timeout=120)
    assert proc.returncode == MISSING, proc.stderr
    assert b"chunk.3" in proc.stderr and b"missing" in proc.stderr
    assert restorequeue.requests(spool, bid) == []
    assert set(restorequeue.failures(spool, bid)) == {3}
    s3proxy.reset()
    daemon = s3.popen("thaw")
    try:
        # a daemon left alone does not try again; it is given 3 s from the moment
        # it holds its lock (its start alone can take 3 s on a loaded machine)
        wait_until(lambda: thaw_daemon_running(s3.spool) or daemon.poll() is not None,
                   timeout=60)
        time.sleep(3)
    finally:
        daemon.terminate()
        _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
    assert not s3proxy.requests(path_contains="chunk.3")


@needs_fuse
@pytest.mark.timeout(300)
def test_mount_stops_retrying_a_damaged_fragment(tmp_path, fskeys, s3proxy, bucket, s3client,
                                                 data):
    rig = FsRig(tmp_path, fskeys[0], url=f"s3://{bucket}", endpoint_url=s3proxy.endpoint,
                storage_class="GLACIER")
    expect = (r"failed for good", r"fails verification", r"cannot be read")
    with rig.mounted("-k", str(fskeys[1]), "-o", "thaw_poll=0.2", expect=expect):
        sh(f"cat {data} > {rig.incoming}/glacial")
        archive = rig.archive()
        wait_until(lambda: state(archive) == "frozen", timeout=60)
        key = f"{archive.name}/chunk.2"
        good = damage(s3client, bucket, key)
        s3proxy.reset()
        proc = subprocess.run(["cat", str(archive)], capture_output=True, timeout=120)
        assert proc.returncode != 0 and b"Input/output error" in proc.stderr
        assert state(archive) == "damaged"
        seen = gets(s3proxy, key)
        assert seen == thaw.VERIFY_TRIES
        time.sleep(3)                       # nobody reads: nothing is fetched any more
        assert gets(s3proxy, key) == seen
        # a new open after the reported failure asks again
        s3client.put_object(Bucket=bucket, Key=key, Body=good, StorageClass="GLACIER")
        sh(f"cmp {data} {archive}")
        assert state(archive) != "damaged"


@needs_fuse
@pytest.mark.timeout(300)
def test_mount_nonblocking_open_of_a_missing_fragment_gets_eio(tmp_path, fskeys, s3proxy,
                                                               bucket, s3client, data):
    rig = FsRig(tmp_path, fskeys[0], url=f"s3://{bucket}", endpoint_url=s3proxy.endpoint,
                storage_class="GLACIER")
    expect = (r"failed for good", r"missing", r"cannot be read")
    with rig.mounted("-k", str(fskeys[1]), "-o", "thaw_poll=0.2", expect=expect):
        sh(f"cat {data} > {rig.incoming}/gone")
        archive = rig.archive()
        wait_until(lambda: state(archive) == "frozen", timeout=60)
        s3client.delete_object(Bucket=bucket, Key=f"{archive.name}/chunk.3")

        def nonblocking_open() -> int:
            try:
                os.close(os.open(archive, os.O_RDONLY | os.O_NONBLOCK))
                return 0
            except OSError as exc:
                return exc.errno
        assert nonblocking_open() == errno.EAGAIN          # the thaw starts
        assert wait_until(lambda: nonblocking_open() == errno.EIO, timeout=60)
        assert state(archive) == "damaged"
        heads = len(s3proxy.requests("HEAD", "chunk.3"))
        time.sleep(2)
        assert len(s3proxy.requests("HEAD", "chunk.3")) == heads


# --- concurrent restores --------------------------------------------------------------

@pytest.mark.timeout(600)
@pytest.mark.parametrize("spool_max", [None, "192KiB"])
def test_concurrent_restores_of_one_archive(tmp_path, bucket, recipes, s3proxy, spool_max):
    s3 = S3Rig(tmp_path, bucket, s3proxy.endpoint)
    ulid, data = frozen(s3, recipes, frags=8)
    s3.write_s3_config(spool_max=spool_max)      # a window of three fragments, or all
    for _ in range(3):
        s3proxy.slow_next(40, 0.05, methods=["GET"])     # so that they overlap
        procs = [s3.popen("restore", "-v", s3.vault, "-u", ulid, "-k",
                          str(recipes["gpg"].key)) for _ in range(4)]
        for proc in procs:
            out, err = proc.communicate(timeout=240)
            assert proc.returncode == 0, err
            assert out == data
        assert spool_files(s3.spool, "restore") == []
        assert spool_files(s3.spool, "thaw") == []


@pytest.mark.timeout(300)
def test_killed_restore_is_cleaned_up_by_the_next(s3, recipes, s3proxy):
    ulid, data = frozen(s3, recipes, frags=6)
    s3proxy.slow_next(1, 60, methods=["GET"], path_contains="chunk.3")
    proc = s3.popen("restore", "-v", s3.vault, "-u", ulid, "-k", str(recipes["gpg"].key))
    wait_until(lambda: any(".reader-" in p for p in spool_files(s3.spool, "restore")),
               timeout=60)
    wait_until(lambda: s3proxy.requests("GET", "chunk.2"), timeout=60)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    s3proxy.reset()
    assert s3.restore(ulid, recipes["gpg"].key, check=True, timeout=120).stdout == data
    assert spool_files(s3.spool, "restore") == []
    assert spool_files(s3.spool, "thaw") == []


# --- bounded space ----------------------------------------------------------------------

def all_stopped(pid: int) -> bool:
    """Has every thread of ``pid`` stopped (SIGSTOP), or is it gone?"""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return True
    for task in tasks:
        try:
            stat = Path(f"/proc/{pid}/task/{task}/stat").read_text()
        except FileNotFoundError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] not in ("T", "t", "Z", "X"):
            return False
    return True


def queue_bytes_at_rest(pid: int, spool: Spool) -> int | None:
    """The restore queue's bytes while process ``pid``, the only one changing
    it, is stopped: a walk of several directories while it runs adds up
    moments apart, and can count a fragment it took and the next one both."""
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return None
    try:
        for _ in range(1000):
            if all_stopped(pid):
                return restorequeue.queue_bytes(spool)
            time.sleep(0.001)
        return None
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


@pytest.mark.timeout(600)
def test_restore_streams_through_a_bounded_spool(tmp_path, bucket, s3proxy, recipes):
    """(From S3: a local vault's fragments are read in place, not through the spool.)
    The restore holds at most spool_max's worth of fragments (the one being
    read, and those requested after it) and chunk.0."""
    rig = S3Rig(tmp_path, bucket, s3proxy.endpoint)
    bound = 3 << 20
    data = os.urandom(21 << 20)
    ulid = rig.backup(data, recipes["sq"].cert, "-s", "1MiB", "-C", "none")
    mark = os.path.getsize(Spool(str(rig.spool)).path("freeze", BackupId(rig.vault, "", ulid), 0))
    rig.run("freeze", "--once", check=True)
    rig.write_s3_config(spool_max="3MiB")
    spool = Spool(str(rig.spool))
    out, err = tmp_path / "restored", tmp_path / "restore.err"
    peak = 0
    with open(err, "wb") as errors_to:
        proc = subprocess.Popen(rig.command("restore", "-v", rig.vault, "-u", ulid, "-k",
                                            str(recipes["sq"].key), "-o", str(out)),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=errors_to)
    try:
        end = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < end:
            peak = max(peak, queue_bytes_at_rest(proc.pid, spool) or 0)
            time.sleep(0.002)
        assert proc.wait(timeout=10) == 0, err.read_text()
    finally:
        proc.kill()
        proc.wait()
    assert out.read_bytes() == data
    assert peak <= bound + mark, f"restore queue peaked at {peak} bytes, spool_max {bound}"
    assert peak >= 1 << 20, "the watcher must see the restore queue in use"
    assert spool_files(rig.spool, "restore") == []


@pytest.mark.skipif(os.getuid() != 0, reason="mounts a small tmpfs as the spool")
@pytest.mark.timeout(300)
def test_full_spool_is_blamed_on_the_spool_and_cleaned(tmp_path, bucket, s3proxy, recipes):
    """(From S3: a local vault's fragments are read in place, not through the spool.)"""
    rig = S3Rig(tmp_path, bucket, s3proxy.endpoint)
    big = tmp_path / "big-spool"
    data = os.urandom(5 << 20)
    other = ("-S", str(big))                  # the last -S wins
    ulid = rig.run("backup", "-v", rig.vault, "-k", str(recipes["sq"].cert), "-s", "1MiB",
                   "-C", "none", input=data, pre=other, check=True).stdout.decode().strip()
    rig.run("freeze", "--once", pre=other, check=True)
    rig.spool.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(rig.spool)],
                   check=True)
    try:
        proc = rig.restore(ulid, recipes["sq"].key, timeout=120)
        err = proc.stderr.decode()
        assert proc.returncode == 12, err
        assert "no space left" in err and str(rig.spool) in err and "vault" not in err
        assert not [p for p in spool_files(rig.spool, "restore") if "chunk." in p]
        assert requests_left(rig, ulid) == []
    finally:
        subprocess.run(["umount", str(rig.spool)], check=True)
