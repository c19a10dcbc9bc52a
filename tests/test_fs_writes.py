"""Writes into incoming/VAULT/NAME: whatever the sizes and the data, the archive
sealed by close(2) returning 0 holds exactly the bytes written, in order; when
the pipeline or freeze holds the feeder, write(2) waits instead of failing; a
failure behind the feeder reaches the writing process as an errno."""

from __future__ import annotations

import errno
import itertools
import os
import random
import threading

import pyfuse3
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryophilefs import writer
from tests.fsrig import VAULT, FsRig, fskeys, needs_fuse  # noqa: F401
from tests.test_fs_operations import (archives_of, expect_errno, make_ops, mark, read_all,
                                      start)
from tests.test_fs_reads import payload

MiB = 1 << 20
NAMES = itertools.count()


def pattern(kind: str, size: int, seed: int) -> bytes:
    if kind == "random":
        return random.Random(seed).randbytes(size)
    if kind == "zeros":
        return bytes(size)
    return payload(str(seed), size)          # runs of text and of random bytes


@pytest.fixture(scope="module")
def mount(tmp_path_factory, fskeys):
    rig = FsRig(tmp_path_factory.mktemp("fs-writes"), fskeys[0])
    with rig.mounted("-k", str(fskeys[1])):
        yield rig


sizes = st.one_of(st.integers(1, 3 * MiB),
                  st.sampled_from([1, 4095, 4096, 128 << 10, MiB - 1, MiB, MiB + 1, 2 * MiB]))


@needs_fuse
@pytest.mark.timeout(900)
@settings(max_examples=12, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(writes=st.lists(sizes, min_size=1, max_size=14),
       kind=st.sampled_from(["random", "text", "zeros"]), seed=st.integers(0, 2**32))
def test_any_writes_come_back_byte_for_byte(mount, writes, kind, seed):
    """write(2)s of any sizes (more than the feeder's queue holds, in the
    larger examples) through the kernel: the sealed archive reads back as
    every byte written, in order."""
    data = pattern(kind, sum(writes), seed)
    name = f"w{next(NAMES)}"             # a new backup each time
    fd = os.open(mount.incoming / name, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        off = 0
        for size in writes:
            view = memoryview(data)[off:off + size]
            while view:                         # a short write is allowed, a wrong one not
                n = os.write(fd, view)
                view, off = view[n:], off + n
    finally:
        os.close(fd)                            # raises if the seal failed
    assert os.getxattr(mount.incoming / name, "user.cryophile.state") == b"sealed"
    with open(mount.archive(name_like=name), "rb") as f:
        assert f.read() == data


def hold_fragments(ops):
    """Hold the writer before each new fragment after the first (as when freeze
    falls behind spool_max) until ``go`` is set; ``entered`` is set once one
    is held."""
    entered, go = threading.Event(), threading.Event()
    first = True

    def wait(stop=None):
        nonlocal first
        if first:
            first = False
            return
        entered.set()
        assert go.wait(120), "never let go"
    ops.backpressure.wait = wait
    return entered, go


def waiting(incoming) -> bool:
    """A write waits for the feeder to make room."""
    with incoming.cond:
        return incoming.waiter is not None and not incoming.waiter[1].is_set()


@pytest.mark.timeout(180)
async def test_a_held_feeder_makes_writes_wait_then_all_is_sealed(tmp_path, fskeys, nursery):
    """Fragments held: the feeder stops, its queue fills and write waits (it
    neither fails nor queues without bound); let go, every write returns and
    the seal holds every byte."""
    ops = make_ops(tmp_path, fskeys, nursery)
    entered, go = hold_fragments(ops)
    _, info, _ = await start(ops, "held")
    total = writer.DEPTH + 40              # more than the queue and the pipeline hold
    data = pattern("random", total * MiB, 1)
    done = 0

    async def write_all():
        nonlocal done
        for off in range(0, len(data), MiB):
            assert await ops.write(info.fh, off, data[off:off + MiB]) == MiB
            done += 1

    async with trio.open_nursery() as tasks:
        tasks.start_soon(write_all)
        assert await trio.to_thread.run_sync(entered.wait, 60)     # the first fragment held
        incoming = ops.handles[info.fh].incoming
        while True:             # until the writes wait for room (the feeder is held)
            await trio.testing.wait_all_tasks_blocked(0.2)
            if waiting(incoming) or done == total:      # (all taken: the bound failed)
                break
        assert writer.DEPTH <= done < total
        with incoming.cond:     # bounded: DEPTH × CHUNK and the request that went over
            assert 0 < incoming.inflight <= (writer.DEPTH + 1) * writer.CHUNK
        go.set()
    assert done == total
    await ops.flush(info.fh)
    await ops.release(info.fh)
    (node,) = archives_of(ops)
    assert await read_all(ops, node.ino, len(data), step=4 * MiB) == data


@pytest.mark.expect_log
@pytest.mark.timeout(180)
async def test_a_failure_behind_the_feeder_is_an_errno_and_a_log_line(tmp_path, fskeys,
                                                                      nursery, caplog):
    """The spool fails under the writer (ENOSPC while the feeder is past the
    write that caused it): a later write or the close gets ENOSPC, the
    archive is not sealed and the log says why."""
    ops = make_ops(tmp_path, fskeys, nursery)
    calls = 0

    def full(stop=None):
        nonlocal calls
        calls += 1
        if calls > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
    ops.backpressure.wait = full
    _, info, _ = await start(ops, "full")
    bid = ops.handles[info.fh].incoming.bid
    data = pattern("text", 12 * MiB, 2)
    failed = None
    for off in range(0, len(data), MiB):
        try:
            await ops.write(info.fh, off, data[off:off + MiB])
        except Exception as exc:
            failed = exc
            break
    if failed is None:
        await expect_errno(errno.ENOSPC, ops.flush(info.fh))
    else:
        assert failed.errno == errno.ENOSPC
        await expect_errno(errno.ENOSPC, ops.flush(info.fh))
    await ops.release(info.fh)
    assert not archives_of(ops) and not mark(tmp_path, bid)
    assert "No space left on device" in caplog.text
    assert f"backup {bid} (full) failed and was dropped, nothing sealed" in caplog.text


@pytest.mark.expect_log
@pytest.mark.timeout(180)
async def test_unmount_while_writes_wait_for_a_held_feeder(tmp_path, fskeys, nursery):
    """Unmounted while the feeder is held and a write waits for room: the
    backup is dropped and nothing waits for ever."""
    ops = make_ops(tmp_path, fskeys, nursery)
    entered, go = hold_fragments(ops)
    _, info, _ = await start(ops, "held")
    bid = ops.handles[info.fh].incoming.bid
    incoming = ops.handles[info.fh].incoming
    data = pattern("random", (writer.DEPTH + 40) * MiB, 3)     # more than the queue holds
    finished = False

    async def write_all():
        nonlocal finished
        try:
            for off in range(0, len(data), MiB):
                await ops.write(info.fh, off, data[off:off + MiB])
            finished = True
        except pyfuse3.FUSEError as exc:          # the writes after the abort
            assert exc.errno == errno.EINTR

    async with trio.open_nursery() as tasks:
        tasks.start_soon(write_all)
        assert await trio.to_thread.run_sync(entered.wait, 60)
        while True:
            await trio.testing.wait_all_tasks_blocked(0.2)
            if waiting(incoming):
                break
            assert not finished, "every write was taken: the queue is not bounded"
        go.set()                    # what a held fragment waits for ends with the mount
        await trio.to_thread.run_sync(ops.abort_writers)
        tasks.cancel_scope.cancel()
    await incoming.fed.wait()       # the feeder thread ended
    assert not mark(tmp_path, bid)
    assert not (tmp_path / "spool" / "backup" / VAULT / bid.key).exists()


@pytest.mark.expect_log
@pytest.mark.timeout(180)
async def test_a_feeder_that_dies_fails_the_backup_not_the_mount(tmp_path, fskeys, nursery,
                                                                 caplog, monkeypatch):
    """A bug in the feeder thread: the writes or the close get EIO and a log
    line, nothing is sealed, nothing waits for ever, and the mount goes on."""
    def boom(self, data):
        raise RuntimeError("a bug")
    monkeypatch.setattr(writer.Incoming, "_write", boom)
    ops = make_ops(tmp_path, fskeys, nursery)
    _, info, _ = await start(ops, "dies")
    bid = ops.handles[info.fh].incoming.bid
    data = pattern("random", 20 * MiB, 4)
    try:
        for off in range(0, len(data), MiB):
            await ops.write(info.fh, off, data[off:off + MiB])
    except pyfuse3.FUSEError as exc:
        assert exc.errno == errno.EIO
    await expect_errno(errno.EIO, ops.flush(info.fh))
    await ops.release(info.fh)
    assert not archives_of(ops) and not mark(tmp_path, bid)
    assert "the feeder failed" in caplog.text and "a bug" in caplog.text
    monkeypatch.undo()
    await backup_through(ops, b"still mounted")


async def backup_through(ops, data: bytes) -> None:
    _, info, _ = await start(ops, "after")
    await ops.write(info.fh, 0, data)
    await ops.flush(info.fh)
    await ops.release(info.fh)
    assert [n.archive.size for n in archives_of(ops)] == [len(data)]
