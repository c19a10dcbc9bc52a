"""freeze under concurrency and failure: several freezers on one spool, an
archive name that is already taken in the vault, a spool smaller than the
stream, failing vaults, and service loops that back off."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import pytest
import trio
import trio.testing
from hypothesis import given, settings, strategies as st

from cryophile import errors
from cryophile.backpressure import default_bound, half_of_free
from cryophile.freeze import Freezer, Ledger, backoff_loop
from cryophile.ids import BackupId, new_ulid
from cryophile.spool import Spool
from cryophile.store.local import LocalStore
from cryophile.store.s3 import S3Store
from tests.clirig import Rig, make_rig
from tests.s3rig import free_port
from tests.test_s3_e2e import S3Rig, fragment_keys

FRAG = 64 * 1024
MiB = 1 << 20


def queue_empty(rig) -> bool:
    return not any((rig.spool / "freeze").glob("**/chunk.*"))


def wait_until(predicate, timeout: float, procs=()) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        for p in procs:
            assert p.poll() is None, p.communicate()[1].decode(errors="replace")
        assert time.monotonic() < end, "timed out"
        time.sleep(0.1)


@pytest.fixture
def rig(tmp_path, bucket, s3proxy):
    return S3Rig(tmp_path, bucket, s3proxy.endpoint)


def objects(s3client, bucket) -> dict[str, str]:
    return {k: h["ETag"] for k, h in fragment_keys(s3client, bucket).items()}


# -- several freezers on one spool --------------------------------------------

@pytest.mark.timeout(300)
def test_two_freeze_daemons_share_a_spool(tmp_path, recipes, s3client, bucket, s3proxy):
    rig = S3Rig(tmp_path, bucket, s3proxy.endpoint, part_size="5MiB",
                storage_class="STANDARD")
    data = [os.urandom(13 * MiB) for _ in range(2)]
    ulids = [rig.backup(d, recipes["gpg"].cert, "-s", "6MiB", "-C", "none") for d in data]
    s3proxy.slow_next(10_000, 0.2, methods=["PUT"], path_contains="partNumber")
    daemons = [rig.popen("freeze") for _ in range(2)]
    try:
        wait_until(lambda: queue_empty(rig) and not any((rig.spool / "freeze").glob("*/*")),
                   timeout=240, procs=daemons)
    finally:
        for d in daemons:
            d.send_signal(signal.SIGTERM)
        outs = [d.communicate(timeout=60) for d in daemons]
    for d, (_, err) in zip(daemons, outs):
        assert d.returncode == 0, err
        assert b"Traceback" not in err and b"ERROR" not in err, err
    expected = {f"{u}/chunk.{n}" for u in ulids for n in range(4)}
    assert set(objects(s3client, bucket)) == expected
    assert not s3client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    # chunk.1 and chunk.2 (6 MiB) of each archive go up in parts, once each
    assert len(s3proxy.requests("POST", "uploads")) == 4, "each fragment uploaded once"
    assert rig.restore(ulids[1], recipes["gpg"].key, check=True).stdout == data[1]


# -- an archive name that the vault already holds -------------------------------

def taken_archive(rig, recipes, s3client, bucket, s3proxy) -> tuple[str, bytes, dict]:
    """An archive frozen into the vault, then a proxy that keeps the next
    backup from asking the vault whether its -u ULID is taken."""
    data = os.urandom(3 * FRAG)
    ulid = rig.backup(data, recipes["gpg"].cert, "-p", "tank", "-s", "64KiB")
    rig.run("freeze", "--once", check=True)
    before = objects(s3client, bucket)
    assert len(before) >= 4
    s3proxy.fail_next(10, 503, "ServiceUnavailable", methods=["HEAD"])
    return ulid, data, before


@pytest.mark.timeout(300)
def test_backup_onto_a_taken_name_never_overwrites(rig, recipes, s3client, bucket, s3proxy):
    ulid, data, before = taken_archive(rig, recipes, s3client, bucket, s3proxy)
    rig.backup(os.urandom(3 * FRAG), recipes["gpg"].cert, "-p", "tank", "-u", ulid,
               "-s", "64KiB")
    s3proxy.reset()
    proc = rig.run("freeze", "--once")
    err = proc.stderr.decode()
    assert proc.returncode == 10, err
    assert f"tank/{ulid}/chunk." in err and "already exists" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert objects(s3client, bucket) == before
    assert list((rig.spool / "freeze" / rig.vault / "tank" / ulid).glob("chunk.*")), \
        "the local copy stays"
    fresh = S3Rig(rig.root / "fresh", bucket, s3proxy.endpoint)
    assert fresh.restore(ulid, recipes["gpg"].key, "-p", "tank", check=True).stdout == data


@pytest.mark.timeout(300)
def test_killed_backup_onto_a_taken_name_deletes_nothing(rig, recipes, s3client, bucket,
                                                         s3proxy):
    ulid, data, before = taken_archive(rig, recipes, s3client, bucket, s3proxy)
    proc = rig.popen("backup", "-v", rig.vault, "-k", str(recipes["gpg"].cert), "-p", "tank",
                     "-u", ulid, "-s", "64KiB", "-C", "none", stdin=subprocess.PIPE)
    proc.stdin.write(os.urandom(3 * MiB))
    proc.stdin.flush()
    queue = rig.spool / "freeze" / rig.vault / "tank" / ulid
    wait_until(lambda: list(queue.glob("chunk.*")), timeout=60)
    proc.kill()
    proc.communicate()
    s3proxy.reset()
    freeze = rig.run("freeze", "--once", check=True)
    assert b"incomplete" in freeze.stderr
    assert objects(s3client, bucket) == before
    assert not s3proxy.requests("DELETE")
    assert rig.restore(ulid, recipes["gpg"].key, "-p", "tank", check=True).stdout == data


# -- a spool smaller than the stream ---------------------------------------------

@pytest.mark.timeout(180)
def test_backup_larger_than_spool_max_without_a_daemon(tmp_path, recipes):
    rig = make_rig(tmp_path)
    rig.config.write_text(rig.config.read_text().replace(
        "[vault.", 'spool_max = "256KiB"\n[vault.', 1))
    data = os.urandom(40 * FRAG)
    proc = rig.run("backup", "-v", rig.vault, "-k", str(recipes["gpg"].cert), "-s", "64KiB",
                   "-C", "none", input=data, timeout=120, check=True)
    assert b"freezing here" in proc.stderr
    ulid = proc.stdout.decode().strip()
    rig.run("freeze", "--once", check=True, timeout=120)
    assert queue_empty(rig)
    assert rig.restore(ulid, recipes["gpg"].key, check=True).stdout == data


@pytest.mark.timeout(180)
def test_backup_over_spool_max_fails_fast_when_the_vault_is_down(tmp_path, recipes):
    rig = S3Rig(tmp_path, str(uuid.uuid4()), f"http://127.0.0.1:{free_port()}",
                spool_max="256KiB")
    proc = rig.run("backup", "-v", rig.vault, "-k", str(recipes["gpg"].cert), "-s", "64KiB",
                   "-C", "none", input=os.urandom(40 * FRAG), timeout=120,
                   env={"CRYOPHILE_S3_ATTEMPTS": "1"})
    err = proc.stderr.decode()
    assert proc.returncode == 11, err
    assert "spool_max" in err and "cryophile freeze" in err and "Traceback" not in err
    assert not any((rig.spool / "freeze").glob("**/chunk.0")), "nothing looks complete"


@pytest.fixture
def small_spool(tmp_path):
    """A rig whose spool is a 2 MiB tmpfs (tests run as root)."""
    rig = make_rig(tmp_path)
    rig.spool.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(rig.spool)],
                   check=True)
    try:
        yield rig
    finally:
        subprocess.run(["umount", "-l", str(rig.spool)], check=True)


@pytest.mark.timeout(180)
def test_small_spool_waits_for_the_running_daemon(small_spool, recipes):
    rig = small_spool
    rig.run("status", check=True)           # makes the queues
    daemon = subprocess.Popen(rig.command("freeze"), stderr=subprocess.PIPE,
                              env={**os.environ, "CRYOPHILE_LOG_STYLE": "never"})
    try:
        wait_until(lambda: b"freeze daemon: running" in rig.run("status").stdout, 60, [daemon])
        data = os.urandom(8 * MiB)
        proc = rig.run("backup", "-v", rig.vault, "-k", str(recipes["gpg"].cert), "-s",
                       "256KiB", "-C", "none", input=data, timeout=150, check=True)
        assert b"freezing here" not in proc.stderr, "the daemon made room"
        wait_until(lambda: queue_empty(rig), 60, [daemon])
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0 and b"Traceback" not in err, err
    ulid = proc.stdout.decode().strip()
    reader = Rig(rig.root / "reader")            # restoring needs room of its own
    reader.config.parent.mkdir()
    reader.config.write_text(rig.config.read_text().replace(str(rig.spool), str(reader.spool)))
    assert reader.restore(ulid, recipes["gpg"].key, check=True).stdout == data


@pytest.mark.timeout(240)
def test_inline_freeze_tries_a_dead_vault_once(tmp_path, recipes):
    rig = Rig(tmp_path)
    down = "00000000-0000-4000-8000-000000000000"
    rig.config.write_text(
        f'spool = "{rig.spool}"\nspool_max = "1MiB"\n'
        f'[vault.{down}]\nurl = "s3://{down}"\n'
        f'endpoint_url = "http://127.0.0.1:{free_port()}"\n'
        f'[vault.{rig.vault}]\nurl = "file://{rig.vaults}"\n')
    rig.run("backup", "-v", down, "-k", str(recipes["gpg"].cert), input=os.urandom(FRAG),
            check=True)
    data = os.urandom(40 * FRAG)
    proc = rig.run("backup", "-v", rig.vault, "-k", str(recipes["gpg"].cert), "-s", "64KiB",
                   "-C", "none", input=data, timeout=200, check=True,
                   env={"CRYOPHILE_S3_ATTEMPTS": "1"})
    err = proc.stderr.decode()
    assert len([line for line in err.splitlines() if "127.0.0.1" in line]) == 1, err
    assert list((rig.spool / "freeze" / down).glob("*/chunk.0")), "still queued"


def test_default_spool_max_is_half_the_free_space(tmp_path):
    assert half_of_free(100 << 20) == 50 << 20         # no 256 MiB floor
    assert half_of_free(0) == 1
    st = os.statvfs(tmp_path)
    assert default_bound(Spool(str(tmp_path))) <= st.f_bavail * st.f_frsize // 2 + (1 << 20)


# -- failing vaults ----------------------------------------------------------

@pytest.mark.timeout(180)
def test_freeze_once_goes_on_past_a_failing_vault(tmp_path, recipes):
    rig = Rig(tmp_path)
    down = "00000000-0000-4000-8000-000000000000"      # sorts first
    good = "ffffffff-0000-4000-8000-000000000000"
    rig.config.write_text(
        f'spool = "{rig.spool}"\n'
        f'[vault.{down}]\nurl = "s3://{down}"\n'
        f'endpoint_url = "http://127.0.0.1:{free_port()}"\n'
        f'[vault.{good}]\nurl = "file://{rig.vaults}"\n')
    for vault in (down, good):
        rig.run("backup", "-v", vault, "-k", str(recipes["gpg"].cert), input=b"x" * 1000,
                check=True)
    proc = rig.run("freeze", "--once", env={"CRYOPHILE_S3_ATTEMPTS": "1"})
    err = proc.stderr.decode()
    assert proc.returncode == 10, err
    assert "127.0.0.1" in err and "Traceback" not in err
    assert len(list((rig.vaults / good).glob("*/chunk.*"))) == 2, "the good vault was frozen"
    assert list((rig.spool / "freeze" / down).glob("*/chunk.0")), "kept for the next run"


@pytest.mark.expect_log
def test_service_loop_backs_off_exponentially():
    calls = []

    async def main():
        async def step():
            calls.append(trio.current_time())
            if len(calls) in (1, 2, 3, 4, 6):
                raise errors.StoreError("down")
            if len(calls) == 8:
                raise _Stop()

        async def poll():
            await trio.sleep(10)
        try:
            await backoff_loop(step, "test", poll, lo=1, hi=4)
        except _Stop:
            pass
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert gaps == [1, 2, 4, 4, 10, 1, 10]


class _Stop(Exception):
    pass


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", ["freeze", "thaw"])
def test_daemons_back_off_on_a_failing_vault(tmp_path, recipes, s3proxy, command):
    rig = S3Rig(tmp_path, str(uuid.uuid4()), s3proxy.endpoint)      # no such bucket
    if command == "freeze":
        rig.backup(b"x" * 100, recipes["gpg"].cert)
    else:
        request = rig.spool / "thaw" / rig.vault / "01HZZZZZZZZZZZZZZZZZZZZZZZ" / "chunk.1"
        request.parent.mkdir(parents=True)
        request.touch()
    daemon = rig.popen(command)
    lines = []
    try:
        for raw in daemon.stderr:
            lines.append(raw.decode())
            if "trying again in 4 s" in lines[-1]:
                break
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, rest = daemon.communicate(timeout=60)
    text = "".join(lines) + rest.decode()
    assert daemon.returncode == 0, text
    waits = [line.rsplit("trying again in ", 1)[1].split()[0]
             for line in lines if "trying again in" in line]
    assert waits == ["1", "2", "4"], text
    assert "does not exist" in text and "Traceback" not in text


# -- an unconfigured vault --------------------------------------------------

@pytest.mark.timeout(120)
def test_unconfigured_vault_says_where_it_goes(tmp_path, recipes, bucket, s3proxy):
    rig = Rig(tmp_path)
    rig.config.write_text(f'spool = "{rig.spool}"\n')
    rig.run("backup", "-v", bucket, "-k", str(recipes["gpg"].cert), input=b"x" * 100,
            check=True)
    proc = rig.run("freeze", "--once", check=True,
                   env={"AWS_ENDPOINT_URL_S3": s3proxy.endpoint})
    err = proc.stderr.decode()
    told = [line for line in err.splitlines() if "no [vault." in line]
    assert len(told) == 1, err
    assert bucket in told[0] and s3proxy.endpoint in told[0]


# -- a freeze killed after an upload, before it dropped the local copy -----------

@pytest.mark.timeout(180)
def test_reupload_of_the_same_bytes_counts_as_done(rig, recipes, s3client, bucket, s3proxy):
    data = os.urandom(3 * FRAG)
    ulid = rig.backup(data, recipes["gpg"].cert, "-s", "64KiB", "-C", "none")
    local = rig.spool / "freeze" / rig.vault / ulid / "chunk.1"
    store = S3Store(bucket, endpoint_url=s3proxy.endpoint, storage_class="STANDARD")
    store.put(f"{ulid}/chunk.1", str(local), size=local.stat().st_size)   # as freeze did
    store.close()
    s3proxy.reset()
    rig.run("freeze", "--once", check=True)
    refused = [r for r in s3proxy.requests("PUT", "chunk.1") if r.status == 412]
    assert len(refused) == 1, "the conditional put met the object, and head settled it"
    assert queue_empty(rig)
    assert rig.restore(ulid, recipes["gpg"].key, check=True).stdout == data


# -- pure pieces and in-process freezers ---------------------------------------

KEY = st.text("ABCXYZabcxyz0123456789/()!'*._-", min_size=1, max_size=60)


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(KEY, st.binary(min_size=32, max_size=32), max_size=20))
def test_ledger_reads_back_what_was_added(tmp_path_factory, entries):
    spool = Spool(str(tmp_path_factory.mktemp("ledger")))
    ledger = Ledger(spool, BackupId("0b8c3a7e-5a1d-4f7e-9a53-3f1c2d4e5f60", "", new_ulid()))
    for key, sha in entries.items():
        ledger.add(key, sha)
    assert ledger.read() == {k: v.hex() for k, v in entries.items()}


def test_freezers_in_one_process_freeze_each_archive_once(tmp_path, recipes):
    rig = make_rig(tmp_path)
    ulids = [rig.backup(os.urandom(5 * FRAG), recipes["gpg"].cert, "-s", "64KiB", "-C", "none")
             for _ in range(3)]
    spool = Spool(str(rig.spool))
    store = LocalStore(str(rig.vaults / rig.vault))
    puts = []
    real_put = store.put

    def counting_put(key, *args, **kw):
        puts.append(key)
        return real_put(key, *args, **kw)
    store.put = counting_put

    async def main():
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(Freezer(spool, lambda v: store, lambda v: "STANDARD").round)
    trio.run(main)
    assert sorted(puts) == sorted(set(puts)), "no key uploaded twice"
    assert len(puts) == sum(len(list((rig.vaults / rig.vault / u).glob("chunk.*")))
                            for u in ulids)
    assert queue_empty(rig)


def test_a_fragment_being_moved_to_the_freeze_queue_counts_once(tmp_path):
    """While publish links a fragment into freeze/ before unlinking it from
    backup/, unfrozen_bytes must not see it twice: a double count then looks
    like room made when it drops, and the backup waited on an inline freeze
    that would never run again."""
    spool = Spool(str(tmp_path / "spool"))
    bid = BackupId(str(uuid.uuid4()), "tank", new_ulid())
    work, queued = tmp_path / "spool/backup" / bid.vault / bid.key, \
        tmp_path / "spool/freeze" / bid.vault / bid.key
    work.mkdir(parents=True)
    queued.mkdir(parents=True)
    (work / "chunk.1").write_bytes(b"x" * 1000)
    os.link(work / "chunk.1", queued / "chunk.1")
    assert spool.unfrozen_bytes() == 1000


@pytest.mark.timeout(30)
@pytest.mark.expect_log
def test_an_inline_freeze_that_failed_before_never_leaves_the_backup_waiting(tmp_path):
    """A round that failed but made some room, then a round with nothing left
    to try (the failed archive is not tried again): the backup must fail with
    the failure, not wait for ever for a freeze nobody runs."""
    from cryophile.backpressure import Backpressure
    spool = Spool(str(tmp_path / "spool"))
    spool.ensure()
    stuck = tmp_path / "spool/freeze/v/a"
    stuck.mkdir(parents=True)
    (stuck / "chunk.1").write_bytes(b"x" * 4000)
    gone = stuck.parent / "b"
    gone.mkdir()
    (gone / "chunk.1").write_bytes(b"y" * 1000)

    class Inline:
        failure = None
        calls = 0

        def __call__(self):
            self.calls += 1
            if self.calls == 1:                 # froze b, failed on a
                (gone / "chunk.1").unlink()
                self.failure = errors.StoreError("the vault is down")
                raise self.failure
    inline = Inline()
    pressure = Backpressure(spool, 1000, freeze_inline=inline)
    with pytest.raises(errors.SpoolError, match="the vault is down"):
        pressure.wait()
    assert inline.calls == 2
