"""The one flock probe (status's daemon lines, a backup asking whether a freeze
daemon will make room): it never waits, never creates, and fails loudly."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from cryophile import errors
from cryophile.spool import FreezeDaemonLock, Spool, flock_held


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
    holder = subprocess.Popen(["flock", "-s", lock.path, "-c", "echo held; sleep 30"],
                              stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert holder.stdout.readline() == b"held\n"
        assert flock_held(lock.path)
    finally:
        os.killpg(holder.pid, signal.SIGKILL)      # flock, its shell and the sleep
        holder.wait(timeout=30)
        holder.stdout.close()
    assert not flock_held(lock.path)


def test_probe_that_cannot_look_says_so(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(errors.SpoolError, match="file/.daemon: Not a directory"):
        flock_held(str(tmp_path / "file" / ".daemon"))
