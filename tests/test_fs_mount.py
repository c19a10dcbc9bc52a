"""cryophilefs mounted for real, with a local vault: standard tools do the obvious."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.fsrig import data, fskeys, needs_fuse, rig, sh, state, wait_until  # noqa: F401

pytestmark = needs_fuse


def sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_shell_redirect_then_read_with_standard_tools(rig, data, fskeys):
    with rig.mounted("-k", str(fskeys[1])) as mnt:
        os.makedirs(rig.incoming / "tank" / "home")
        sh(f"cat {data} > {rig.incoming}/tank/home/monday")
        assert os.listdir(rig.incoming / "tank" / "home") == []   # sealed: gone from incoming
        archive = rig.archive("tank/home")
        assert os.getxattr(archive, "user.cryophile.name") == b"monday"
        st = os.stat(archive)
        assert st.st_size == data.stat().st_size and st.st_mode & 0o777 == 0o400
        assert abs(st.st_mtime - time.time()) < 60              # the ULID's time
        sh(f"cmp {data} {archive}")
        out = sh(f"cat {archive} | sha256sum").stdout.split()[0].decode()
        assert out == sha256(data)
        skipped = sh(f"dd if={archive} bs=1M skip=2 status=none").stdout
        assert skipped == data.read_bytes()[2 << 20:]
        assert sh(f"dd if={archive} bs=4k skip=100 count=3 status=none").stdout == \
            data.read_bytes()[409600:409600 + 12288]
        assert state(archive) in ("queued", "freezing", "local")
        wait_until(lambda: state(archive) == "local")
        assert os.getxattr(archive, "user.cryophile.fragments") == b"4"
        assert os.getxattr(archive, "user.cryophile.thaw") == b"4/4"
        assert "user.cryophile.storage_class" in os.listxattr(archive)
        assert os.path.islink(mnt / "incoming" / "offsite") is False    # no alias configured


def test_dd_and_cp_write_archives(rig, data, fskeys):
    with rig.mounted("-k", str(fskeys[1])):
        sh(f"dd if={data} of={rig.incoming}/by-dd bs=1M status=none")
        shutil.copyfile(data, rig.incoming / "by-cp")
        sh(f"cp {data} {rig.incoming}/by-cp-command")
        for name in ("by-dd", "by-cp", "by-cp-command"):
            sh(f"cmp {data} {rig.archive(name_like=name)}")
        assert len(os.listdir(rig.archives)) == 3


def test_read_only_violations_and_sequential_writes(rig, data, fskeys):
    expect = ("read-only", "cannot be read", "written in order", "cannot truncate",
              "failed")
    with rig.mounted("-k", str(fskeys[1]), expect=expect):
        sh(f"cat {data} > {rig.incoming}/one")
        archive = rig.archive()
        for call, err in [(lambda: open(archive, "wb"), errno.EROFS),
                          (lambda: open(archive, "r+b"), errno.EROFS),
                          (lambda: os.unlink(archive), errno.EROFS),
                          (lambda: os.truncate(archive, 0), errno.EROFS),
                          (lambda: os.mkdir(rig.archives / "x"), errno.EROFS),
                          (lambda: open(rig.archives / "new", "wb"), errno.EROFS)]:
            with pytest.raises(OSError) as info:
                call()
            assert info.value.errno == err
        for name, reject, err in [("seek", lambda fd: os.pwrite(fd, b"b", 10), errno.ESPIPE),
                                  ("trunc", lambda fd: os.ftruncate(fd, 10), errno.EPERM)]:
            path = rig.incoming / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT)
            try:
                os.write(fd, b"a" * 1000)
                assert os.getxattr(path, "user.cryophile.state") == b"writing"
                with pytest.raises(PermissionError):            # EACCES
                    open(path, "rb")
                with pytest.raises(OSError) as info:
                    reject(fd)
                assert info.value.errno == err
                with pytest.raises(OSError) as info:             # the backup failed
                    os.write(fd, b"c" * 1000)
                assert info.value.errno == err
                assert os.getxattr(path, "user.cryophile.state") == b"failed"
            finally:
                with pytest.raises(OSError) as info:             # and close says so
                    os.close(fd)
                assert info.value.errno == err
        assert len(os.listdir(rig.archives)) == 1                # nothing sealed
    assert rig.log.count("failed and was dropped, nothing sealed") == 2


def test_unmount_with_work_pending_then_remount(rig, data, fskeys, tmp_path):
    # The vault's directory is a file: freeze fails, fragments stay in the spool.
    rig.vaults.write_text("not a directory")
    with rig.mounted(expect=("freeze",)):
        sh(f"cat {data} > {rig.incoming}/pending")
        archive = rig.archive()
        assert state(archive) == "queued"
        ulid = archive.name
    assert (rig.spool / "freeze" / rig.vault / ulid / "chunk.1").exists()
    rig.vaults.unlink()
    with rig.mounted("-k", str(fskeys[1])):
        archive = rig.archives / ulid
        sh(f"cmp {data} {archive}")                 # from the spool, or the vault
        wait_until(lambda: state(archive) == "local")
        assert os.getxattr(archive, "user.cryophile.name") == b"pending"
    assert not (rig.spool / "freeze" / rig.vault / ulid).exists()
    with rig.mounted("-k", str(fskeys[1])):         # and once more, from the vault alone
        sh(f"cmp {data} {rig.archives / ulid}")


def test_unmount_right_after_writing(rig, data, fskeys):
    with rig.mounted():
        sh(f"cat {data} > {rig.incoming}/quick")
        ulid = rig.archive().name
    with rig.mounted("-k", str(fskeys[1])):
        sh(f"cmp {data} {rig.archives / ulid}")


SLOW_WRITER = """
import sys, time
data = open(sys.argv[1], "rb").read()
with open(sys.argv[2], "wb") as f:
    for i in range(0, len(data), 256 << 10):
        f.write(data[i:i + (256 << 10)])
        f.flush()
        time.sleep(0.01)
"""


def test_reader_and_writer_at_once(rig, data, fskeys):
    with rig.mounted("-k", str(fskeys[1])):
        sh(f"cat {data} > {rig.incoming}/first")
        first = rig.archive()
        # the writer is a process of its own: one that forks while it holds the
        # file open closes a copy of it in the child, and that close seals
        writer = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(data),
                                   str(rig.incoming / "second")])
        for _ in range(3):
            sh(f"cmp {data} {first}")
        assert writer.wait(timeout=120) == 0
        sh(f"cmp {data} {rig.archive(name_like='second')}")


def test_no_secret_key_gives_enokey(rig, data):
    with rig.mounted(expect=("mount with -k",)):
        sh(f"cat {data} > {rig.incoming}/secret")
        archive = rig.archive()
        with pytest.raises(OSError) as info:
            open(archive, "rb")
        assert info.value.errno == errno.ENOKEY
        assert os.getxattr(archive, "user.cryophile.name") == b"secret"   # known: written here
    assert "mount with -k" in rig.log
    with rig.mounted(expect=("mount with -k",)):     # names are encrypted in the vault
        with pytest.raises(OSError) as info:
            os.getxattr(archive, "user.cryophile.name")
        assert info.value.errno == errno.ENOKEY


def test_sigterm_unmounts_cleanly(rig, data):
    with pytest.raises(SystemExit):
        with rig.mounted():
            assert rig.terminate() == 0
            assert not os.path.ismount(rig.mnt)
            raise SystemExit


@pytest.mark.timeout(300)
def test_sigterm_at_once_is_an_unmount_not_a_refusal(rig):
    """A signal that comes the moment the mount is up, while the mount's own
    start-up check may still be on its way, ends in "unmounted" and exit 0."""
    for _ in range(10):
        rig.proc = subprocess.Popen(rig.command(), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    env={**os.environ, "CRYOPHILE_LOG_STYLE": "never"})
        deadline = time.monotonic() + 120
        while not os.path.ismount(rig.mnt):
            assert rig.proc.poll() is None and time.monotonic() < deadline
        rig.proc.send_signal(signal.SIGTERM)
        out, _ = rig.proc.communicate(timeout=60)
        assert rig.proc.returncode == 0, out.decode()
        assert b"unmounted" in out and b"error" not in out
        assert not os.path.ismount(rig.mnt)


SIGNAL_AT_MOUNT = """
import os, pyfuse3, sys
signum, real = int(sys.argv.pop(1)), pyfuse3.init
def init(*args):
    real(*args)                             # the mount is visible from here on
    os.kill(os.getpid(), signum)
pyfuse3.init = init
from cryophilefs.mount import main
sys.exit(main())
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_the_instant_the_mount_is_visible_unmounts(rig, signum):
    """The mount shows the moment libfuse mounts it, before the main loop
    runs: a signal sent then (a test or a script that waits for the mount,
    systemd stopping it at once) must unmount it, exit 0, not kill it and
    leave a dead mount behind."""
    command = rig.command()
    assert command[1:3] == ["-m", "cryophilefs"]
    command[1:3] = ["-c", SIGNAL_AT_MOUNT, str(int(signum))]
    proc = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
                          env={**os.environ, "CRYOPHILE_LOG_STYLE": "never"})
    try:
        out = (proc.stdout + proc.stderr).decode()
        assert proc.returncode == 0, out
        assert "unmounted" in out and "Traceback" not in out and "error" not in out, out
        assert not os.path.ismount(rig.mnt)
    finally:
        subprocess.run(["fusermount3", "-uz", str(rig.mnt)], capture_output=True)


def test_a_mount_names_who_holds_the_thaw_lock(rig):
    """Another mount or a `cryophile thaw` may hold it: the log says which."""
    from cryophile import thaw
    from cryophile.spool import Spool
    spool = Spool(str(rig.spool))
    spool.ensure()
    lock = thaw.DaemonLock(spool)
    assert lock.acquire()
    try:
        with rig.mounted():
            pass
    finally:
        lock.release()
    assert f"the thaw lock is held by pid {os.getpid()}" in rig.log


def test_allow_other_modes(rig, data, fskeys):
    with rig.mounted("-o", "allow_other"):
        sh(f"cat {data} > {rig.incoming}/shared")
        assert os.stat(rig.archive()).st_mode & 0o777 == 0o444


def test_mount_command_and_helper(rig, data, fskeys):
    env = {**os.environ, "CRYOPHILE_LOG_STYLE": "never"}
    logfile = rig.root / "mount.log"       # detached, with no syslog here perhaps
    opts = f"spool={rig.spool},config={rig.config},keyring={fskeys[1]},log_file={logfile}"
    bindir = os.path.dirname(os.sys.executable)
    # mount(8) clears PATH: `-t fuse.cryophilefs` finds cryophilefs in the standard
    # places only; `-t fuse PROGRAM#SOURCE` names it (what an fstab line can do too)
    if shutil.which("cryophilefs", path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"):
        by_mount = ["mount", "-t", "fuse.cryophilefs", "cryophile"]
    else:
        by_mount = ["mount", "-t", "fuse", f"{bindir}/cryophilefs#cryophile"]
    for command in ([*by_mount, str(rig.mnt), "-o", opts],
                    [f"{bindir}/mount.cryophilefs", "cryophile", str(rig.mnt), "-o", opts]):
        proc = subprocess.run(command, env=env, capture_output=True, timeout=60)
        assert proc.returncode == 0, proc.stderr.decode()
        try:
            assert os.path.ismount(rig.mnt)     # the command returns once it is mounted
            sh(f"cat {data} > {rig.incoming}/via-{os.path.basename(command[0])}")
        finally:
            subprocess.run(["umount", str(rig.mnt)], check=True)
        assert not os.path.ismount(rig.mnt)
    def sealed() -> int:
        """Frozen already, or queued for the next freeze; the detached process
        may still be sealing when umount returns."""
        found = set()
        for where in (rig.vaults / rig.vault, rig.spool / "freeze" / rig.vault):
            found |= {p.parent.name for p in where.glob("*/chunk.0")}
        return len(found)
    wait_until(lambda: sealed() == 2)


def test_bad_option_fails_before_mounting(rig):
    proc = subprocess.run(rig.command("-o", "frobnicate"), capture_output=True)
    assert proc.returncode == 2 and b"unknown mount option" in proc.stderr
    assert not os.path.ismount(rig.mnt)


# cryophilefs with a mount option passed to libfuse that it refuses only at
# FUSE_INIT, after the mount itself succeeded (max_read, were it passed on)
REFUSED_AT_INIT = """
import sys
from cryophilefs import mount
getattr(mount, "REFUSED", {}).clear()
mount.PASSED_VALUES.add("max_read")
sys.exit(mount.main(sys.argv[1:]))
"""


LATE_STAT = """
import sys, trio
from cryophilefs import mount
async def main():
    ended = trio.Event()
    ended.set()
    await mount.confirm_mounted("spool", sys.argv[1], None, trio.Event(), trio.Event(), ended)
trio.run(main)
print("no terminate")
"""


@pytest.mark.timeout(60)
def test_a_stat_answered_after_the_session_ended_terminates_nothing(tmp_path):
    """The start-up stat of a refused mount can be taken in after pyfuse3.close():
    pyfuse3.terminate() then hands libfuse a freed session, which crashed the
    refused mount's exit (here no session was ever made: the same crash)."""
    proc = subprocess.run([sys.executable, "-c", LATE_STAT, str(tmp_path)], capture_output=True,
                          timeout=30)
    assert proc.returncode == 0 and proc.stdout == b"no terminate\n", proc


@pytest.mark.timeout(90)
def test_option_refused_at_init_is_an_error(rig):
    command = [sys.executable, "-c", REFUSED_AT_INIT, *rig.command("-o", "max_read=65536")[3:]]
    proc = subprocess.run(command, capture_output=True, timeout=60,
                          env={**os.environ, "CRYOPHILE_LOG_STYLE": "never"})
    ours = [line for line in proc.stderr.decode().splitlines() if line.startswith("cryophilefs")]
    assert not any("mounted" in line for line in ours), ours
    assert not os.path.ismount(rig.mnt)
    assert proc.returncode == 1, proc.stderr.decode()
    assert ours[-1].startswith("cryophilefs: error: cannot mount on") and "refused" in ours[-1]


SIGINT_AT_EXEC = """
import os, signal, sys
from cryophilefs import __main__ as entry, hugepages
real = os.execve
def execve(*args):
    os.kill(os.getpid(), signal.SIGINT)     # Ctrl-C the instant before the exec
    real(*args)
os.execve = execve
sys.exit(entry.main())
"""


@pytest.mark.timeout(120)
def test_ctrl_c_just_before_the_huge_page_exec_is_not_lost(rig):
    """cryophilefs starts itself again (hugepages.py) early: a Ctrl-C that
    Python's handler had noted but not acted on went with the old image, and
    the mount came up as if never interrupted.  It ends start-up instead:
    one line, exit 130, nothing mounted."""
    from cryophilefs import hugepages
    if not hugepages.wanted(os.environ.get("GLIBC_TUNABLES", ""), hugepages.thp_mode(),
                            hugepages.libc_version()):
        pytest.skip("no huge-page restart on this system")
    command = rig.command()
    assert command[1:3] == ["-m", "cryophilefs"]
    command[1:3] = ["-c", SIGINT_AT_EXEC]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            env={**os.environ, "CRYOPHILE_LOG_STYLE": "never"})
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)     # it mounted: the Ctrl-C was lost
        out, err = proc.communicate(timeout=60)
        raise AssertionError("the Ctrl-C was lost: " + (out + err).decode()) from None
    finally:
        subprocess.run(["fusermount3", "-uz", str(rig.mnt)], capture_output=True)
    assert proc.returncode == 130, (out + err).decode()
    assert err.decode() == "cryophilefs: error: interrupted\n"
    assert not os.path.ismount(rig.mnt)


SIGINT_IN_START_UP = """
import os, signal, sys
from cryophilefs import mount
real = mount.load_keys
def load_keys(*args):
    os.kill(os.getpid(), signal.SIGINT)     # Ctrl-C while the keys load
    return real(*args)
mount.load_keys = load_keys
sys.exit(mount.main())
"""


@pytest.mark.timeout(120)
def test_ctrl_c_while_the_keys_load_says_so(rig):
    """Interrupted before it mounts: one line and 130, not a silent 130."""
    command = rig.command()
    command[1:3] = ["-c", SIGINT_IN_START_UP]
    proc = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
                          env={**os.environ, "CRYOPHILE_LOG_STYLE": "never"})
    try:
        assert proc.returncode == 130, proc.stderr
        assert proc.stderr.decode().endswith("cryophilefs: error: interrupted\n"), proc.stderr
        assert not os.path.ismount(rig.mnt)
    finally:
        subprocess.run(["fusermount3", "-uz", str(rig.mnt)], capture_output=True)
