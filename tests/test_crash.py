"""Crash safety: a backup killed mid-stream never looks complete and is cleaned up by
the next run; a freeze killed anywhere is finished by the next one, byte for byte."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.clirig import archive_dir, make_rig, restore_with


@pytest.fixture
def rig(tmp_path):
    """A rig on a tmpfs when we can mount one (fsync is free there: fast many-fragment
    archives), else in tmp_path."""
    root = tmp_path / "fs"
    root.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128M", "tmpfs", str(root)],
                             capture_output=True).returncode == 0
    try:
        yield make_rig(root)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(root)], check=True)


def wait_for(predicate, timeout: float = 30, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.returncode} "
                                 f"{proc.stderr.read().decode(errors='replace')}")
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def start_backup(rig, cert, *args) -> subprocess.Popen:
    return subprocess.Popen(rig.command("backup", "-v", rig.vault, "-k", str(cert), *args),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ,
                                                         "CRYOPHILE_LOG_STYLE": "never"})


def killed_backup(rig, cert) -> tuple[str, Path]:
    """A backup fed from a pipe, SIGKILLed once fragments reached freeze/."""
    proc = start_backup(rig, cert, "-s", "64KiB", "-C", "none")
    proc.stdin.write(os.urandom(3 << 20))     # frames are 1 MiB: three of them
    proc.stdin.flush()
    vault_dir = rig.spool / "freeze" / rig.vault

    def queued():
        return vault_dir.exists() and any(d.glob("*/chunk.*") for d in [vault_dir])
    wait_for(queued, proc=proc)
    proc.kill()
    proc.wait()
    proc.stdin.close()
    proc.stdout.close()
    proc.stderr.close()
    [ulid_dir] = list(vault_dir.iterdir())
    ulid = ulid_dir.name
    assert not (ulid_dir / "chunk.0").exists()
    assert (rig.spool / "backup" / rig.vault / ulid).exists()
    return ulid, ulid_dir


def assert_not_listed_complete(rig, ulid: str) -> None:
    listing = rig.run("ls", rig.vault, check=True).stdout.decode()
    for line in listing.splitlines()[1:]:
        if ulid in line:
            assert line.split()[4] not in ("queued", "local", "stored", "frozen"), line


def assert_gone(rig, ulid: str) -> None:
    for q in ("backup", "freeze", "thaw", "restore"):
        assert not (rig.spool / q / rig.vault / ulid).exists(), q
    assert not archive_dir(rig, ulid).exists()
    assert ulid not in rig.run("ls", rig.vault, check=True).stdout.decode()


def test_killed_backup_then_backup(rig, recipes):
    sq = recipes["sq"]
    ulid, _ = killed_backup(rig, sq.cert)
    assert_not_listed_complete(rig, ulid)
    restore = rig.restore(ulid, sq.key)
    assert restore.returncode != 0 and b"Traceback" not in restore.stderr
    nxt = rig.run("backup", "-v", rig.vault, "-k", str(sq.cert), input=b"next", check=True)
    assert b"incomplete" in nxt.stderr and ulid.encode() in nxt.stderr
    assert not (rig.spool / "backup" / rig.vault / ulid).exists()
    assert not list((rig.spool / "freeze" / rig.vault / ulid).glob("chunk.*"))
    rig.run("freeze", "--once", check=True)
    assert_gone(rig, ulid)
    good = nxt.stdout.decode().strip()
    assert restore_with(rig, good, sq, check=True).stdout == b"next"


def test_killed_backup_then_freeze(rig, recipes):
    """freeze already uploaded fragments of the dying backup: the next freeze deletes them."""
    sq = recipes["sq"]
    proc = start_backup(rig, sq.cert, "-s", "64KiB", "-C", "none")
    proc.stdin.write(os.urandom(3 << 20))
    proc.stdin.flush()
    queue = rig.spool / "freeze" / rig.vault
    wait_for(lambda: queue.exists() and list(queue.glob("*/chunk.*")), proc=proc)
    ulid = next(queue.iterdir()).name
    rig.run("freeze", "--once", check=True)          # while the backup still runs
    assert list(archive_dir(rig, ulid).glob("chunk.*"))
    assert not (archive_dir(rig, ulid) / "chunk.0").exists()
    proc.kill()
    proc.wait()
    for f in (proc.stdin, proc.stdout, proc.stderr):
        f.close()
    assert_not_listed_complete(rig, ulid)
    freeze = rig.run("freeze", "--once", check=True)
    assert b"incomplete" in freeze.stderr and ulid.encode() in freeze.stderr
    assert_gone(rig, ulid)
    again = rig.run("freeze", "--once", check=True)
    assert b"incomplete" not in again.stderr


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def test_killed_freeze_is_finished_by_the_next(rig, recipes):
    sq = recipes["sq"]
    data = os.urandom(2400 << 10)
    ulid = rig.backup(data, sq.cert, "-s", "4KiB", "-C", "none")
    queued = snapshot(rig.spool / "freeze" / rig.vault / ulid)
    total = len(queued)
    assert total > 600
    vault = archive_dir(rig, ulid)

    def count() -> int:
        return len(os.listdir(vault)) if vault.exists() else 0
    kills = 0
    partial = 0
    for step in (1, 40, 100, 200, 300):
        before = count()
        proc = subprocess.Popen(rig.command("freeze", "--once", pre=["-q"]),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        end = time.monotonic() + 30
        while proc.poll() is None and count() < before + step and time.monotonic() < end:
            pass
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        proc.stderr.close()
        names = [n for n in os.listdir(vault) if ".tmp-" not in n] if vault.exists() else []
        if "chunk.0" in names:
            # the mark is uploaded last: a vault showing it holds the whole archive
            assert sorted(names) == sorted(queued)
            break
        if names:
            partial += 1
            for n in names:
                assert (vault / n).read_bytes() == queued[n]
            assert_not_listed_complete(rig, ulid)
    assert kills >= 1 and partial >= 1
    rig.run("freeze", "--once", check=True)
    assert snapshot(vault) == queued                  # byte-identical, and no .tmp files
    assert not (rig.spool / "freeze" / rig.vault / ulid).exists()
    listing = rig.run("ls", rig.vault, check=True).stdout.decode()
    assert any(ulid in line and " local " in line for line in listing.splitlines())
    assert restore_with(rig, ulid, sq, check=True).stdout == data
