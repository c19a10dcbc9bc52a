"""The one flock probe (status's daemon lines, a backup asking whether a freeze
daemon will make room): it never waits, never creates, and fails loudly."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cryophile import errors
from cryophile.spool import FreezeDaemonLock, Spool, flock_held


HOLD_SHARED = """
import fcntl, os, sys, time
fcntl.flock(os.open(sys.argv[1], os.O_RDONLY), fcntl.LOCK_SH)
print("held", flush=True)
time.sleep(120)
"""


@pytest.mark.timeout(60)
def test_probe_sees_a_holder_and_creates_nothing(tmp_path):
    lock = FreezeDaemonLock(Spool(str(tmp_path / "spool")))
    assert not lock.anyone_freezing()
    assert not (tmp_path / "spool").exists()
    lock.hold()
    try:
        assert lock.anyone_freezing()
    finally:
        lock.release()
    assert not lock.anyone_freezing()
    # the holder takes the lock itself: flock(1)'s shell and sleep, killed with it,
    # held the lock until the system got round to ending them, after flock's wait
    holder = subprocess.Popen([sys.executable, "-c", HOLD_SHARED, lock.path],
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        assert flock_held(lock.path)
    finally:
        holder.kill()
        holder.wait(timeout=30)
        holder.stdout.close()
    assert not flock_held(lock.path)


def test_probe_that_cannot_look_says_so(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(errors.SpoolError, match="file/.daemon: Not a directory"):
        flock_held(str(tmp_path / "file" / ".daemon"))
