"""restore -o: a new regular file, 0600, that appears only whole; nothing else is
ever replaced or written into, and a killed restore leaves no plaintext behind."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time

import pytest

from cryophile import errors
from cryophile.cli import output as output_mod
from cryophile.cli.output import Output
from tests.clirig import make_rig
from tests.test_cli_errors import SPOOL, failed
from tests.test_cli_roundtrip import mixed


@pytest.fixture
def frozen(tmp_path, recipes):
    rig = make_rig(tmp_path)
    data = mixed(40000, 31)
    ulid = rig.backup(data, recipes["sq"].cert, "-s", "4KiB", "-C", "none")
    rig.run("freeze", "--once", check=True)
    return rig, ulid, data


def leftovers(directory) -> list[str]:
    return [p.name for p in directory.iterdir() if ".cryophile-" in p.name]


def test_new_file_is_0600_whatever_the_umask(frozen, recipes):
    rig, ulid, data = frozen
    out = rig.root / "out"
    old = os.umask(0)
    try:
        rig.restore(ulid, recipes["sq"].key, "-o", str(out), check=True)
    finally:
        os.umask(old)
    assert out.read_bytes() == data
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert leftovers(rig.root) == []


def make_fifo(path):
    os.mkfifo(path)


def make_null(path):
    """A copy of /dev/null, as mknod makes it."""
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))


def make_symlink(path):
    (path.parent / "target").write_bytes(b"keep")
    os.symlink(path.parent / "target", path)


def make_dir(path):
    path.mkdir()


def make_socket(path):
    import socket
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()


@pytest.mark.parametrize("make, kind", [
    (make_fifo, "FIFO"), (make_null, "character device"), (make_symlink, "symbolic link"),
    (make_dir, "directory"), (make_socket, "socket")])
def test_refuses_what_is_not_a_regular_file(frozen, recipes, make, kind):
    rig, ulid, data = frozen
    target = rig.root / "target-here"
    make(target)
    before = os.lstat(target)
    proc = rig.restore(ulid, recipes["sq"].key, "-o", str(target), "--force", timeout=60)
    failed(proc, SPOOL, str(target), kind, "not a regular file")
    after = os.lstat(target)
    assert (after.st_ino, after.st_mode, after.st_rdev) == \
        (before.st_ino, before.st_mode, before.st_rdev)
    if make is make_symlink:
        assert (rig.root / "target").read_bytes() == b"keep"
    assert leftovers(rig.root) == []


def test_existing_file_needs_force(frozen, recipes):
    rig, ulid, data = frozen
    out = rig.root / "out"
    out.write_bytes(b"precious")
    failed(rig.restore(ulid, recipes["sq"].key, "-o", str(out)), SPOOL, "exists", "--force")
    assert out.read_bytes() == b"precious"
    rig.restore(ulid, recipes["sq"].key, "-o", str(out), "--force", check=True)
    assert out.read_bytes() == data
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert leftovers(rig.root) == []


def test_stdout_redirect_still_writes_into_a_device(frozen, recipes, tmp_path):
    """What -o refuses, a shell redirect does on purpose: restore > /dev/null verifies."""
    rig, ulid, data = frozen
    null = tmp_path / "null"
    make_null(null)
    with open(null, "wb") as sink:
        proc = subprocess.run(rig.command("restore", "-v", rig.vault, "-u", ulid, "-k",
                                          str(recipes["sq"].key)),
                              stdout=sink, stderr=subprocess.PIPE, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISCHR(os.lstat(null).st_mode)


def _fd_sizes(pid: int, directory) -> list[int]:
    """Sizes of the files ``pid`` has open in ``directory`` (unnamed ones included)."""
    sizes = []
    fds = f"/proc/{pid}/fd"
    for fd in os.listdir(fds):
        try:
            target = os.readlink(os.path.join(fds, fd))
            if target.startswith(str(directory) + "/"):
                sizes.append(os.stat(os.path.join(fds, fd)).st_size)
        except OSError:
            continue
    return sizes


@pytest.mark.timeout(180)
def test_killed_restore_leaves_no_plaintext(tmp_path, recipes, bucket, s3proxy):
    """The vault holds up fragment 3: restore has written the plaintext of 1 and 2
    and waits; SIGKILL then must leave nothing in the output's directory."""
    from tests.test_s3_e2e import S3Rig
    rig = S3Rig(tmp_path / "rig", bucket, s3proxy.endpoint, storage_class="STANDARD")
    ulid = rig.backup(os.urandom(5 * 65536), recipes["sq"].cert, "-s", "64KiB", "-C", "none")
    rig.run("freeze", "--once", check=True)
    s3proxy.slow_next(10, seconds=30, methods=["GET"], path_contains=f"{ulid}/chunk.3")
    outdir = tmp_path / "outdir"
    outdir.mkdir()
    proc = subprocess.Popen(rig.command("restore", "-v", rig.vault, "-u", ulid, "-k",
                                        str(recipes["sq"].key), "-o", str(outdir / "out")),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while not any(_fd_sizes(proc.pid, outdir)):      # plaintext is being written
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert list(outdir.iterdir()) == []


# --- the named fallback, where a filesystem has no O_TMPFILE ----------------------

@pytest.fixture
def no_tmpfile(monkeypatch):
    monkeypatch.setattr(output_mod.Output, "_open_unnamed", lambda self: None)


def test_fallback_commits_and_discards(tmp_path, no_tmpfile):
    out = Output(str(tmp_path / "out"))
    out.file.write(b"whole")
    assert leftovers(tmp_path) and stat.S_IMODE(os.stat(tmp_path / out.tmp).st_mode) == 0o600
    out.commit()
    assert (tmp_path / "out").read_bytes() == b"whole" and leftovers(tmp_path) == []

    failing = Output(str(tmp_path / "other"))
    failing.file.write(b"half")
    failing.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_fallback_never_replaces_what_appeared(tmp_path, no_tmpfile):
    out = Output(str(tmp_path / "out"))
    out.file.write(b"whole")
    os.mkfifo(tmp_path / "out")
    with pytest.raises(errors.SpoolError, match="appeared"):
        out.commit()
    assert stat.S_ISFIFO(os.lstat(tmp_path / "out").st_mode) and leftovers(tmp_path) == []


def test_unnamed_never_replaces_what_appeared(tmp_path):
    out = Output(str(tmp_path / "out"))
    assert out.tmp is None and leftovers(tmp_path) == []     # O_TMPFILE here
    out.file.write(b"whole")
    (tmp_path / "out").write_bytes(b"theirs")
    with pytest.raises(errors.SpoolError, match="appeared"):
        out.commit()
    assert (tmp_path / "out").read_bytes() == b"theirs" and leftovers(tmp_path) == []
