"""The mount's worst-day waits: an unmount (or a signal) while a backup is held
at spool_max or its feeder is inside a write, and reads beside a thaw.

Every wait must end: after the abort no thread of the backup is left (so none
can write into the spool once the backup is abandoned) and the archive never
looks sealed; a read of a block that is here is served while another waits
for a thaw; a release ends its file's thaw wait, and leaves the thaw to the
other open files that still wait for it."""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import signal
import subprocess
import sys

import pyfuse3
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from cryophile import restorequeue
from cryophile.freeze import Freezer
from cryophile.pipeline import buffers
from cryophile.spool import ABANDONED, Spool
from cryophilefs import reader, writer
from tests.fsrig import (VAULT, FsRig, data, fskeys, needs_fuse, sh, state,  # noqa: F401
                         wait_until)
from tests.test_fs_operations import MiB, backup, make_ops, mark, start

BLOCK = os.urandom(MiB)         # random: incompressible, so spool_max is reached soon


def backup_threads(w) -> list:
    """The threads of an ArchiveWriter that may write into the spool."""
    threads = [w.worker, w.writer]
    if w.split.syncer is not None:
        threads.append(w.split.syncer)
    return [t for t in threads if t.is_alive()]


def assert_abandoned(root, bid) -> None:
    """Nothing of the backup looks complete, and nothing is left writing."""
    assert not mark(root, bid), "an aborted backup has a chunk.0"
    assert not (root / "spool" / "backup" / VAULT / bid.key).exists()
    queued = root / "spool" / "freeze" / VAULT / bid.key
    if queued.exists():
        names = set(os.listdir(queued))
        assert ABANDONED in names, names
        assert not any(n.startswith("chunk.") for n in names), names


@pytest.mark.expect_log
@pytest.mark.timeout(900)
@settings(max_examples=20, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(mib=st.integers(0, writer.DEPTH + 10), room=st.integers(0, 6),
       signal=st.booleans(), pause=st.sampled_from([0, 0.001, 0.02, "blocked"]))
@example(mib=writer.DEPTH + 10, room=2, signal=False, pause="blocked")   # held, queue full
@example(mib=4, room=0, signal=True, pause="blocked")    # the first fragment held
def test_an_abort_ends_every_thread_of_a_backup_held_at_spool_max(
        tmp_path_factory, fskeys, mib, room, signal, pause):
    """A backup written while the spool is at spool_max (nothing frees it:
    no freezer runs), the mount ending at any moment: by a signal (the
    waiting requests fail, then the abort) or with the requests gone (the
    abort while the feeder may be inside a write).  The abort returns, every
    thread of the backup has ended, and the backup is abandoned, never
    sealed.  The wait for spool room used to be ended by nothing: the abort
    gave up on the threads after a time limit and left them to write on."""
    assume(signal or room)      # without a signal, a request held at the first
    root = tmp_path_factory.mktemp("abort")  # fragment keeps the mount up (as it should)

    async def run():
        async with trio.open_nursery() as nursery:
            ops = make_ops(root, fskeys, nursery)
            if room == 0:                # the spool is full before this backup starts
                await backup(ops, b"x" * 1000, "earlier")
                ops.backpressure.bound = 1
            else:
                ops.backpressure.bound = room * MiB
            _, info, _ = await start(ops, "held")
            incoming = ops.handles[info.fh].incoming

            async def write_all():
                try:
                    for n in range(mib):
                        await ops.write(info.fh, n * MiB, BLOCK)
                except pyfuse3.FUSEError as exc:
                    assert exc.errno == errno.EINTR

            with trio.fail_after(300):          # a hang guard, not a speed check
                async with trio.open_nursery() as tasks:
                    tasks.start_soon(write_all)
                    if pause == "blocked":
                        await trio.testing.wait_all_tasks_blocked(0.05)
                    else:
                        await trio.sleep(pause)
                    if signal:
                        ops.stop_waits()        # the requests then end by themselves
                    else:
                        tasks.cancel_scope.cancel()
                await trio.to_thread.run_sync(ops.abort_writers)
            if incoming.writer is not None:
                assert not backup_threads(incoming.writer), "a thread outlived the abort"
            assert_abandoned(root, incoming.bid)
            assert incoming.feeder_gone.is_set()
            nursery.cancel_scope.cancel()
    trio.run(run)


@pytest.mark.expect_log
@pytest.mark.timeout(180)
async def test_a_close_held_at_spool_max_fails_on_a_signal(tmp_path, fskeys, nursery):
    """A close(2) waiting to seal behind spool_max when a signal unmounts:
    the close fails with EINTR (nothing sealed, the writer is told), and
    the release drops the backup."""
    ops = make_ops(tmp_path, fskeys, nursery)
    ops.backpressure.bound = 2 * MiB
    _, info, _ = await start(ops, "closing")
    incoming = ops.handles[info.fh].incoming
    for n in range(6):
        await ops.write(info.fh, n * MiB, BLOCK)
    held = incoming.writer
    async with trio.open_nursery() as tasks:
        failed = []

        async def close():
            try:
                await ops.flush(info.fh)
            except pyfuse3.FUSEError as exc:
                failed.append(exc.errno)
        tasks.start_soon(close)
        await trio.testing.wait_all_tasks_blocked(0.05)
        ops.stop_waits()
    assert failed == [errno.EINTR]
    await ops.release(info.fh)
    assert not backup_threads(held)
    assert_abandoned(tmp_path, incoming.bid)


# --- reads beside a thaw -----------------------------------------------------------------

SIZE = 12 * MiB + 777
HANG = 60
MISSING = 4             # the fragment taken away (fragments are 1 MiB: blocks 2-3 need it)


async def frozen_fragment(root, ops, data: bytes):
    """An archive in the (file) vault with fragment MISSING gone from it, as if
    frozen there; no thawer runs, so a thaw wait lasts until the test puts
    the fragment back (in the restore queue, as a thaw does).  Returns the
    node and a function that ends the thaw."""
    node = await backup(ops, data, step=MiB)
    await Freezer(ops.s.spool, ops.s.stores, lambda v: "STANDARD").run(once=True)
    bid = node.archive.bid
    (chunk,) = (root / "vaults").glob(f"{VAULT}/{bid.key}/chunk.{MISSING}")
    kept = root / "kept"
    shutil.move(chunk, kept)

    def thawed():
        dest = ops.spool.path("restore", bid, MISSING)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copy(kept, dest + ".tmp")
        os.rename(dest + ".tmp", dest)
    return node, thawed


async def thaw_waiting(ahead: reader.ReadAhead) -> None:
    """Until the read-ahead's task waits for the thaw it requested."""
    while not restorequeue.requests(ahead.fragments.spool, ahead.archive.bid):
        await trio.testing.wait_all_tasks_blocked(0.01)
    await trio.testing.wait_all_tasks_blocked(0.01)


@pytest.mark.timeout(900)
@settings(max_examples=25, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(first=st.integers(0, 2 * MiB - 1), reads=st.lists(
    st.tuples(st.sampled_from([0, 5, 6, 8, 11, 12]), st.integers(0, MiB - 1),
              st.integers(1, MiB), st.sampled_from([0, 0, 0.001, 0.01])),
    min_size=1, max_size=5), blocked_read=st.booleans(), ahead=st.sampled_from([2, 12]))
@example(first=0, reads=[(8, 0, MiB, 0)], blocked_read=False, ahead=12)    # steered in window
@example(first=0, reads=[(6, 0, MiB, 0)], blocked_read=True, ahead=12)     # behind a read's thaw
def test_reads_of_blocks_here_are_served_while_a_thaw_waits(
        tmp_path_factory, fskeys, first, reads, blocked_read, ahead):
    """One open file: the read-ahead (and, with ``blocked_read``, a read)
    waits for a thaw of fragment MISSING; reads of blocks in other
    fragments, at any offsets and moments, are all answered meanwhile.  They
    used to wait for that thaw to end (the read-ahead's task sat in it)."""
    root = tmp_path_factory.mktemp("beside")
    data = random.Random(first).randbytes(SIZE)

    async def run():
        async with trio.open_nursery() as nursery:
            ops = make_ops(root, fskeys, nursery)
            node, thawed = await frozen_fragment(root, ops, data)
            info = await ops.open(node.ino, os.O_RDONLY, None)
            ahead_ = ops.handles[info.fh].reader
            got = []

            async def read(off, size, delay=0):
                await trio.sleep(delay)
                got.append(off)
                assert await ops.read(info.fh, off, size) == data[off:off + size]

            with trio.fail_after(HANG):         # a hang guard, not a speed check
                async with trio.open_nursery() as blocked:
                    await read(first, 1)        # block 0 or 1: the read-ahead runs into
                    await thaw_waiting(ahead_)  # the missing fragment, and waits
                    if blocked_read:
                        blocked.start_soon(read, 2 * MiB + 5, MiB)      # needs the thaw
                        await trio.testing.wait_all_tasks_blocked(0.01)
                    async with trio.open_nursery() as readers:
                        for block, off, size, delay in reads:
                            off = min(block * MiB + off, SIZE - 1)
                            readers.start_soon(read, off, size, delay)
                    assert restorequeue.requests(ops.spool, node.archive.bid), \
                        "the thaw was withdrawn"
                    thawed()                    # the thaw ends: the blocked read too
            await ops.release(info.fh)
            nursery.cancel_scope.cancel()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(reader, "AHEAD", ahead)
        mp.setattr(reader, "RESUME", ahead // 2)
        trio.run(run)


@pytest.mark.timeout(180)
async def test_a_release_ends_its_thaw_wait_and_not_the_others(tmp_path, fskeys, nursery,
                                                              monkeypatch):
    """Two open files wait for the same thaw; one is released: its read-ahead
    task ends at once (it used to stay in the wait until the thaw ended),
    the thaw stays requested, and the other file's read is answered once
    the thaw ends."""
    ended = []
    monkeypatch.setattr(buffers, "release_unused", lambda: ended.append(1))  # run()'s last step
    ops = make_ops(tmp_path, fskeys, nursery)
    data = random.Random(7).randbytes(SIZE)
    node, thawed = await frozen_fragment(tmp_path, ops, data)
    one = await ops.open(node.ino, os.O_RDONLY, None)
    two = await ops.open(node.ino, os.O_RDONLY, None)
    first = ops.handles[one.fh].reader
    answer = []

    async def second():
        answer.append(await ops.read(two.fh, 3 * MiB - 10, 20))
    with trio.fail_after(120):                  # a hang guard, not a speed check
        async with trio.open_nursery() as readers:
            await ops.read(one.fh, 0, 1)
            await thaw_waiting(first)           # the first file's read-ahead waits
            readers.start_soon(second)          # so does the second file's read
            await trio.testing.wait_all_tasks_blocked(0.01)
            await ops.release(one.fh)
            while not ended:                    # its task ends, the thaw still on
                await trio.testing.wait_all_tasks_blocked(0.01)
            assert restorequeue.requests(ops.spool, node.archive.bid), "the thaw was withdrawn"
            assert not answer
            thawed()
    assert answer == [data[3 * MiB - 10:3 * MiB + 10]]
    await ops.release(two.fh)


@pytest.mark.expect_log
@pytest.mark.timeout(180)
async def test_a_signal_ends_the_thaw_waits_with_eintr(tmp_path, fskeys, nursery):
    """A read waiting for a thaw when a signal unmounts fails with EINTR (the
    FUSE loop ends only once every request is answered); the thaw itself
    stays requested."""
    ops = make_ops(tmp_path, fskeys, nursery)
    data = random.Random(8).randbytes(SIZE)
    node, _ = await frozen_fragment(tmp_path, ops, data)
    info = await ops.open(node.ino, os.O_RDONLY, None)
    failed = []

    async def read():
        try:
            await ops.read(info.fh, 3 * MiB, MiB)
        except pyfuse3.FUSEError as exc:
            failed.append(exc.errno)
    with trio.fail_after(120):                  # a hang guard, not a speed check
        async with trio.open_nursery() as readers:
            readers.start_soon(read)
            await thaw_waiting(ops.handles[info.fh].reader)
            ops.stop_waits()
    assert failed == [errno.EINTR]
    assert restorequeue.requests(ops.spool, node.archive.bid)
    await ops.release(info.fh)


# --- signals to a real mount -------------------------------------------------------------

def _mount(rig, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen(rig.command(*args), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "CRYOPHILE_LOG_STYLE": "never"})
    rig.proc = proc
    wait_until(lambda: os.path.ismount(rig.mnt) or proc.poll() is not None)
    assert proc.poll() is None, proc.stdout.read().decode()
    return proc


def _waiting_on_fuse(pid: int) -> bool:
    """The process sleeps in a FUSE request (its write or read is not answered)."""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            where = f.read()
        with open(f"/proc/{pid}/stat") as f:
            st = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return st in "SD" and ("fuse" in where or "request_wait_answer" in where)


def _written(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/io") as f:
            return int(dict(line.split(": ") for line in f.read().splitlines())["wchar"])
    except FileNotFoundError:
        return 0


@needs_fuse
@pytest.mark.timeout(300)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_unmounts_while_a_write_waits_for_spool_room(tmp_path, fskeys, signum):
    """The vault cannot be reached, so nothing frees the spool: a backup written
    through the mount stops at spool_max and its write(2) waits.  A signal
    still unmounts (the FUSE loop ends only when every request is answered,
    and that write's answer waited for room nobody makes): exit 0, the
    writer gets an error, the backup is abandoned, no thread writes on."""
    unreachable = tmp_path / "not-a-directory"
    unreachable.write_text("")
    rig = FsRig(tmp_path, fskeys[0], url=f"file://{unreachable}")
    rig.config.write_text('spool_max = "3MiB"\n' + rig.config.read_text())
    proc = _mount(rig)
    try:
        writing = subprocess.Popen(
            [sys.executable, "-c", "import os, sys\n"
             "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)\n"
             "block = os.urandom(1 << 20)\n"
             "try:\n"
             "    for _ in range(200): os.write(fd, block)\n"
             "    os.close(fd)\n"
             "except OSError as exc:\n"
             "    sys.exit(f'write: {exc.errno}')\n",
             str(rig.incoming / "stuck")], stderr=subprocess.PIPE)
        # held: the spool at spool_max, and more written than the queue holds
        wait_until(lambda: _written(writing.pid) >= (writer.DEPTH + 8) * MiB
                   and _waiting_on_fuse(writing.pid)
                   and Spool(str(rig.spool)).unfrozen_bytes() >= 3 * MiB, timeout=120)
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=120)
        text = out.decode()
        assert proc.returncode == 0, text
        assert "unmounted" in text and "Traceback" not in text, text
        _, err = writing.communicate(timeout=60)
        assert writing.returncode != 0, err      # told: the backup did not happen
    finally:
        subprocess.run(["fusermount3", "-uz", str(rig.mnt)], capture_output=True)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert re.search(r"backup \S+ dropped", text), text
    (bid_dir,) = (rig.spool / "freeze" / VAULT).iterdir()
    assert ABANDONED in os.listdir(bid_dir)
    assert not any(n.startswith("chunk.") for n in os.listdir(bid_dir))
    assert not list((rig.spool / "backup").rglob("chunk.*"))


@needs_fuse
@pytest.mark.timeout(300)
def test_a_signal_unmounts_while_a_read_waits_for_a_thaw(tmp_path, fskeys, s3proxy, bucket,
                                                         data):
    """A read of a GLACIER archive waits for a restore that takes an hour
    (the fault proxy keeps it ongoing): SIGTERM unmounts at once, exit 0;
    the read fails (EINTR, or ENOTCONN once the mount is gone)."""
    rig = FsRig(tmp_path, fskeys[0], url=f"s3://{bucket}", endpoint_url=s3proxy.endpoint,
                storage_class="GLACIER")
    with rig.mounted("-k", str(fskeys[1]), "-o", "thaw_poll=0.2"):
        sh(f"cat {data} > {rig.incoming}/glacial")
        archive = rig.archive()
        wait_until(lambda: state(archive) == "frozen")
    s3proxy.restore_delay = 3600.0
    proc = _mount(rig, "-k", str(fskeys[1]), "-o", "thaw_poll=0.2")
    try:
        reading = subprocess.Popen(["cat", str(rig.archive())], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)
        wait_until(lambda: _waiting_on_fuse(reading.pid)
                   and s3proxy.requests("POST", "restore"), timeout=120)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
        text = out.decode()
        assert proc.returncode == 0, text
        assert "unmounted" in text and "Traceback" not in text, text
        _, err = reading.communicate(timeout=60)
        assert reading.returncode != 0, err
    finally:
        subprocess.run(["fusermount3", "-uz", str(rig.mnt)], capture_output=True)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
