"""Waits and wake-ups of the mount's read-ahead under many interleavings.

The read-ahead hands blocks from its decrypting thread to trio; every read
must be answered whatever the order in which the thread and the reads run.
These tests make the thread's steps take random times, make the interpreter
switch threads often, and keep a busy thread beside them, so that a few MiB
drive many orders of the hand-offs."""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from unittest import mock

import pytest
import trio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cryophile.pipeline import plainreader
from cryophile.pipeline.plainreader import PlainReader
from cryophilefs import reader
from tests.fsrig import fskeys  # noqa: F401
from tests.test_fs_operations import MiB, backup, make_ops

SIZE = 7 * MiB + 4321


def groups(*delays: float):
    """Groups of reads sent at once: (offset, size, delay before it)."""
    return st.lists(st.lists(
        st.tuples(st.integers(0, SIZE - 1), st.integers(1, 2 * MiB), st.sampled_from(delays)),
        min_size=1, max_size=6), min_size=1, max_size=4)


reads = groups(0, 0, 0, 0.0005, 0.003)


class Busy:
    """A thread that keeps the interpreter busy: the decrypting thread and
    trio's thread get the GIL in turns at odd moments."""

    def __init__(self):
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._spin, daemon=True)

    def _spin(self):
        while not self.stop.is_set():
            sum(range(2000))

    def __enter__(self):
        self.old = sys.getswitchinterval()
        sys.setswitchinterval(1e-5)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        sys.setswitchinterval(self.old)


async def read_in_groups(ops, fh: int, rounds, data: bytes) -> None:
    """Each group's reads sent at once (as the kernel's readahead and several
    readers do), each after its own short delay: every read gets its bytes."""
    async def one(off, size, delay):
        await trio.sleep(delay)
        assert await ops.read(fh, off, size) == data[off:off + size]
    for group in rounds:
        async with trio.open_nursery() as readers:
            for off, size, delay in group:
                readers.start_soon(one, off, size, delay)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rounds=groups(0, 0, 0.001, 0.02))
@example(rounds=[[(5 * MiB, 1, 0), (3 * MiB, 1, 0.001)]])   # steered back below a read
def test_any_concurrent_reads_on_one_handle_are_all_answered(tmp_path_factory, fskeys, rounds):
    """Any groups of concurrent reads at any offsets, the thread at its own
    pace: none waits for ever.  A steer to a low block once left the horizon
    short of a read just above it, and that read waited for ever."""
    root = tmp_path_factory.mktemp("reads")
    data = random.Random(len(rounds)).randbytes(SIZE)

    async def run():
        async with trio.open_nursery() as nursery:
            ops = make_ops(root, fskeys, nursery)
            node = await backup(ops, data, step=MiB)
            info = await ops.open(node.ino, os.O_RDONLY, None)
            with trio.fail_after(120):          # a hang guard, not a speed check
                await read_in_groups(ops, info.fh, rounds, data)
            await ops.release(info.fh)
            nursery.cancel_scope.cancel()
    with mock.patch.multiple(reader, AHEAD=2, RESUME=1, CACHED=4):
        trio.run(run)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rounds=reads, seed=st.integers(0, 2**32), close_early=st.booleans())
def test_reads_are_answered_whatever_the_decrypting_thread_takes(tmp_path_factory, fskeys,
                                                                rounds, seed, close_early):
    """Groups of concurrent reads while each block the thread decrypts takes
    a random time: every read gets its bytes, none waits for ever; a release
    while the thread is still at work ends the read-ahead task."""
    root = tmp_path_factory.mktemp("interleave")
    data = random.Random(seed).randbytes(SIZE)
    pace = random.Random(seed)
    real = PlainReader.read

    def slow(self, off, size):
        time.sleep(pace.choice((0, 0, 0.0002, 0.002, 0.01)))
        return real(self, off, size)

    async def run():
        async with trio.open_nursery() as nursery:
            ops = make_ops(root, fskeys, nursery)
            node = await backup(ops, data, step=MiB)
            info = await ops.open(node.ino, os.O_RDONLY, None)
            ahead = ops.handles[info.fh].reader
            with trio.fail_after(120):          # a hang guard, not a speed check
                await read_in_groups(ops, info.fh, rounds, data)
                if close_early:
                    ahead.horizon = ahead.blocks     # the thread at work at the release
                    ahead._wake()
                    await trio.sleep(0)
                await ops.release(info.fh)
                while any("ReadAhead.run" in t.name for t in nursery.child_tasks):
                    await trio.sleep(0.01)      # the read-ahead task ends
                for stream in started:          # and every stream it started
                    await trio.to_thread.run_sync(stream.thread.join, 60)
                    assert not stream.thread.is_alive(), "a decrypting thread outlived its file"
            nursery.cancel_scope.cancel()

    started = []

    class Kept(plainreader.Prefetch):
        def __init__(self, source):
            super().__init__(source)
            started.append(self)
    with mock.patch.multiple(reader, AHEAD=2, RESUME=1, CACHED=4), \
            mock.patch.object(PlainReader, "read", slow), \
            mock.patch.object(plainreader, "Prefetch", Kept), Busy():
        trio.run(run)


async def test_a_release_during_a_seek_leaves_no_decrypting_thread(tmp_path, fskeys, nursery,
                                                                  monkeypatch):
    """The release comes while the read-ahead's thread is starting a stream
    (a first read far into the file): the stream it then starts must end with
    the read-ahead, not decrypt on for ever in a thread of its own."""
    from cryophile.pipeline import buffers, plainreader
    started, trims = [], []
    entered, released = threading.Event(), threading.Event()
    monkeypatch.setattr(buffers, "release_unused", lambda: trims.append(1))

    class Late(plainreader.Prefetch):
        def __init__(self, source):
            entered.set()
            released.wait(60)           # the release happens meanwhile
            super().__init__(source)
            started.append(self)
    monkeypatch.setattr(plainreader, "Prefetch", Late)
    ops = make_ops(tmp_path, fskeys, nursery)
    data = os.urandom(24 * MiB + 7)     # more than the stream's thread holds ready
    node = await backup(ops, data, step=MiB)
    info = await ops.open(node.ino, os.O_RDONLY, None)

    async with trio.open_nursery() as reads:
        reads.start_soon(ops.read, info.fh, 3 * MiB, MiB)
        assert await trio.to_thread.run_sync(entered.wait, 60)     # the thread is in the seek
        await ops.release(info.fh)
        released.set()
        reads.cancel_scope.cancel()     # the read itself is not answered (released)
    with trio.fail_after(60):           # a hang guard: the read-ahead task ends
        while not trims:
            await trio.sleep(0.01)
    (prefetch,) = started
    await trio.to_thread.run_sync(prefetch.thread.join, 60)
    assert not prefetch.thread.is_alive(), "a decrypting thread outlived its file"
