"""cryophile rm: chunk.0 first, then the fragments; idempotent after an
interruption; spool-only archives; busy archives refused."""

from __future__ import annotations

import fcntl
import os

import pytest

from cryophile.spool import ABANDONED
from tests.clirig import archive_dir, make_rig
from tests.test_s3_e2e import S3Rig

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def rig(tmp_path):
    return make_rig(tmp_path)


def backup(rig, recipes, data: bytes, *args: str) -> str:
    return rig.backup(data, recipes["gpg"].cert, "-s", "4KiB", *args)


def listed(rig) -> str:
    return rig.run("ls", rig.vault, check=True).stdout.decode()


def test_rm_deletes_a_frozen_archive_and_leaves_the_others(rig, recipes):
    keep = backup(rig, recipes, os.urandom(20_000), "-p", "tank/home")
    gone = backup(rig, recipes, os.urandom(20_000), "-p", "tank/home")
    rig.run("freeze", "--once", check=True)
    cached = rig.spool / "cache" / rig.vault / "tank" / "home" / f"{gone}.chunk0"
    cached.parent.mkdir(parents=True)
    cached.write_bytes((archive_dir(rig, gone, "tank/home") / "chunk.0").read_bytes())
    proc = rig.run("rm", f"{rig.vault}/tank/home/{gone}", check=True)
    assert not cached.exists()                      # no listing's copy lingers
    assert proc.stdout.decode() == f"removed {rig.vault}/tank/home/{gone}\n"
    assert not archive_dir(rig, gone, "tank/home").exists()
    assert (archive_dir(rig, keep, "tank/home") / "chunk.0").exists()
    text = listed(rig)
    assert keep in text and gone not in text
    again = rig.run("rm", f"{rig.vault}/tank/home/{gone}")
    assert again.returncode == 7, again.stderr
    assert b"not found" in again.stderr and b"Traceback" not in again.stderr


def test_rm_by_alias_and_several_at_once(tmp_path, recipes):
    rig = make_rig(tmp_path, name="offsite")
    ulids = [backup(rig, recipes, os.urandom(5000)) for _ in range(3)]
    rig.run("freeze", "--once", check=True)
    rig.run("rm", *(f"offsite/{u}" for u in ulids[:2]), check=True)
    assert [u in listed(rig) for u in ulids] == [False, False, True]


def test_rm_finishes_what_an_interrupted_rm_left(rig, recipes):
    """After a kill between chunk.0 and the fragments, the archive is not
    listed, and a second rm removes the fragments."""
    ulid = backup(rig, recipes, os.urandom(20_000))
    rig.run("freeze", "--once", check=True)
    (archive_dir(rig, ulid) / "chunk.0").unlink()        # where a kill leaves it
    assert ulid not in listed(rig)
    rig.run("rm", f"{rig.vault}/{ulid}", check=True)
    assert not archive_dir(rig, ulid).exists()


def test_rm_of_an_archive_only_in_the_spool(rig, recipes):
    ulid = backup(rig, recipes, os.urandom(20_000))
    queued = rig.spool / "freeze" / rig.vault / ulid
    assert (queued / "chunk.0").exists()
    rig.run("rm", f"{rig.vault}/{ulid}", check=True)
    assert not queued.exists()
    rig.run("freeze", "--once", check=True)
    assert not archive_dir(rig, ulid).exists()
    assert ulid not in listed(rig)


def test_a_freeze_after_an_interrupted_rm_deletes_instead_of_uploading(rig, recipes):
    """rm marks the queued archive abandoned before its chunk.0 goes: what a
    kill leaves behind is never uploaded as orphan fragments."""
    ulid = backup(rig, recipes, os.urandom(20_000))
    queued = rig.spool / "freeze" / rig.vault / ulid
    (queued / ABANDONED).touch()                    # the first two steps of rm,
    (queued / "chunk.0").unlink()                   # then a kill
    rig.run("freeze", "--once", check=True)
    assert not archive_dir(rig, ulid).exists() and not queued.exists()


def test_rm_refuses_an_archive_being_written(rig, recipes):
    ulid = backup(rig, recipes, os.urandom(5000))
    lock_dir = rig.spool / "backup" / rig.vault / ulid
    lock_dir.mkdir(parents=True)
    with open(lock_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = rig.run("rm", f"{rig.vault}/{ulid}")
    assert proc.returncode == 2, proc.stderr
    assert b"being written" in proc.stderr
    assert (rig.spool / "freeze" / rig.vault / ulid / "chunk.0").exists()


def test_rm_refuses_an_archive_being_frozen(rig, recipes):
    ulid = backup(rig, recipes, os.urandom(5000))
    queued = rig.spool / "freeze" / rig.vault / ulid
    with open(queued / ".freezing", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = rig.run("rm", f"{rig.vault}/{ulid}")
    assert proc.returncode == 2, proc.stderr
    assert b"being frozen" in proc.stderr
    assert (queued / "chunk.0").exists()


def test_rm_of_a_bad_id_is_a_usage_error(rig):
    proc = rig.run("rm", f"{rig.vault}")
    assert proc.returncode == 2 and b"Traceback" not in proc.stderr


# --- S3 ---------------------------------------------------------------------------


@pytest.mark.expect_log
def test_rm_on_s3_deletes_chunk0_first_and_a_second_run_finishes(
        tmp_path, bucket, s3proxy, s3client, recipes):
    rig = S3Rig(tmp_path, bucket, s3proxy.endpoint, storage_class="GLACIER")
    ulid = backup(rig, recipes, os.urandom(20_000), "-p", "db")
    rig.run("freeze", "--once", check=True)
    keys = [o["Key"] for o in s3client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert f"db/{ulid}/chunk.0" in keys and len(keys) > 2
    s3proxy.fail_next(1, 403, "AccessDenied", methods=["DELETE"], path_contains="chunk.2")
    proc = rig.run("rm", f"{bucket}/db/{ulid}", env={"CRYOPHILE_S3_ATTEMPTS": "1"})
    assert proc.returncode == 10, proc.stderr
    deletes = [r.path for r in s3proxy.requests("DELETE")]
    assert deletes[0].endswith(f"db/{ulid}/chunk.0"), deletes
    assert ulid not in rig.run("ls", bucket, check=True).stdout.decode()
    left = s3client.list_objects_v2(Bucket=bucket).get("Contents", [])
    assert left and all("chunk.0" not in o["Key"] for o in left)
    rig.run("rm", f"offsite/db/{ulid}", check=True)
    assert "Contents" not in s3client.list_objects_v2(Bucket=bucket)


# --- archives that other archives' chains need ---------------------------------------


def test_rm_refuses_a_base_naming_its_dependants(rig, recipes):
    full = backup(rig, recipes, os.urandom(5000), "-p", "tank")
    incr = backup(rig, recipes, os.urandom(5000), "-p", "tank", "--parent", full)
    top = backup(rig, recipes, os.urandom(5000), "-p", "tank", "--parent", incr)
    other = backup(rig, recipes, os.urandom(5000), "-p", "tank")
    rig.run("freeze", "--once", check=True)
    proc = rig.run("rm", f"{rig.vault}/tank/{full}")
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.decode().strip().splitlines()
    assert len(err) == 1 and f"is the base of {incr}, {top}" in err[0], err
    assert (archive_dir(rig, full, "tank") / "chunk.0").exists()
    # the whole chain named: nothing left that needs it
    rig.run("rm", f"{rig.vault}/tank/{incr}", f"{rig.vault}/tank/{top}", check=True)
    rig.run("freeze", "--once", check=True)
    rig.run("rm", f"{rig.vault}/tank/{full}", check=True)
    text = listed(rig)
    assert other in text and full not in text


def test_rm_recursive_deletes_the_dependants_children_first(rig, recipes):
    full = backup(rig, recipes, os.urandom(5000))
    incr = backup(rig, recipes, os.urandom(5000), "--parent", full)
    top = backup(rig, recipes, os.urandom(5000), "--parent", incr)
    rig.run("freeze", "--once", check=True)
    proc = rig.run("rm", "-R", f"{rig.vault}/{incr}", check=True)
    assert proc.stdout.decode().splitlines() == [f"removed {rig.vault}/{top}",
                                                 f"removed {rig.vault}/{incr}"]
    assert full in listed(rig) and top not in listed(rig)


@pytest.mark.expect_log
def test_rm_force_breaks_the_chain_with_a_warning(rig, recipes):
    full = backup(rig, recipes, os.urandom(5000))
    incr = backup(rig, recipes, os.urandom(5000), "--parent", full)
    rig.run("freeze", "--once", check=True)
    proc = rig.run("rm", "--force", f"{rig.vault}/{full}", check=True)
    assert f"breaks the chain of {incr}" in proc.stderr.decode()
    assert rig.run("chain", f"{rig.vault}/{incr}").returncode == 7


def test_rm_refuses_the_parent_of_a_backup_being_written(rig, recipes):
    base = backup(rig, recipes, os.urandom(5000))
    rig.run("freeze", "--once", check=True)
    with writing_child(rig, recipes, base) as child:
        proc = rig.run("rm", f"{rig.vault}/{base}")
        assert proc.returncode == 2, proc.stderr
        assert f"is the base of {child}" in proc.stderr.decode()
    assert (archive_dir(rig, base) / "chunk.0").exists()


def writing_child(rig, recipes, parent: str | None = None, *, head: bytes | None = None,
                  tail: bytes = b"", args: tuple = ()):
    """A real backup kept writing (its input held open) while in the with
    block: with ``--parent PARENT``, or else of ``head``, the start of an
    incremental zfs/btrfs stream.  Yields its ULID once the spool records
    its base, then writes ``tail``, ends its input and lets it seal."""
    import contextlib
    import subprocess
    import time

    extra = ("--parent", parent) if parent else ()
    record = "parent" if parent else "stream"

    @contextlib.contextmanager
    def run():
        proc = subprocess.Popen(rig.command("backup", "-v", rig.vault, "-k",
                                            str(recipes["gpg"].cert), *extra, *args),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            proc.stdin.write(head if head is not None else os.urandom(1000))
            proc.stdin.flush()
            top = rig.spool / "backup" / rig.vault
            for _ in range(600):
                found = [p.parent for p in top.rglob(record)] if top.exists() else []
                if found:
                    break
                time.sleep(0.05)
            assert found, "the backup never started"
            yield found[0].name
            proc.stdin.write(tail)
            proc.stdin.close()
            assert proc.wait(timeout=120) == 0, proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if not proc.stdin.closed:
                proc.stdin.close()
            proc.stdout.close()
            proc.stderr.close()
    return run()


def test_rm_that_cannot_clear_the_spool_says_so_and_a_second_run_finishes(rig, recipes):
    """Spool leftovers that cannot be removed are an error naming them, not a
    'removed' with the fragments still taking space."""
    import subprocess
    ulid = backup(rig, recipes, os.urandom(20_000))
    stuck = rig.spool / "freeze" / rig.vault / ulid / "chunk.1"
    subprocess.run(["chattr", "+i", str(stuck)], check=True)    # even root cannot unlink it
    try:
        proc = rig.run("rm", f"{rig.vault}/{ulid}")
        assert proc.returncode == 11, proc.stderr
        (line,) = proc.stderr.decode().splitlines()
        assert "not fully removed" in line and str(stuck) in line, line
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True)
    rig.run("rm", f"{rig.vault}/{ulid}", check=True)
    assert not stuck.parent.exists()
    rig.run("freeze", "--once", check=True)
    assert not archive_dir(rig, ulid).exists()
