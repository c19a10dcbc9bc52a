"""A detached cryophilefs logs somewhere: --log-file (stderr too), else syslog;
with neither it refuses to detach instead of logging nowhere."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys

import pytest

from cryophile import errors
from cryophilefs import mount
from tests.fsrig import data, fskeys, needs_fuse, rig, sh, wait_until  # noqa: F401

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z cryophilefs\[\d+\]: "


def detached(rig, *args: str) -> list[str]:
    return [sys.executable, "-m", "cryophilefs", "-S", str(rig.spool), "-c", str(rig.config),
            *args, str(rig.mnt)]


def run(cmd) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, timeout=60,
                          env={**os.environ, "CRYOPHILE_LOG_STYLE": "never"})


@needs_fuse
@pytest.mark.timeout(120)
def test_detached_mount_logs_to_the_file(rig, data, fskeys):
    logfile = rig.root / "logs" / "fs.log"
    logfile.parent.mkdir()
    proc = run(detached(rig, "-k", str(fskeys[1]), "--log-file", str(logfile)))
    assert proc.returncode == 0, proc.stderr.decode()
    try:
        assert os.path.ismount(rig.mnt) and proc.stderr == b""
        sh(f"cat {data} > {rig.incoming}/monday")
    finally:
        subprocess.run(["umount", str(rig.mnt)], check=True)
    wait_until(lambda: "unmounted" in logfile.read_text())
    lines = logfile.read_text().splitlines()
    assert all(re.match(STAMP, line) for line in lines), lines
    assert any("mounted" in line for line in lines)
    assert os.stat(logfile).st_mode & 0o777 == 0o600


@pytest.mark.timeout(120)
def test_an_error_before_the_mount_reaches_stderr_with_a_log_file(rig, fskeys):
    """With --log-file, a mount that cannot start still says why on stderr
    (not only in the file), as the cryophile command does."""
    logfile = rig.root / "fs.log"
    cmd = detached(rig, "-k", str(fskeys[1]), "--log-file", str(logfile))
    cmd[-1] = str(rig.root / "no-such-dir")
    proc = run(cmd)
    assert proc.returncode == errors.UsageError.exit_code
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and "is not a directory" in lines[0], lines
    assert "is not a directory" in logfile.read_text()


@needs_fuse
@pytest.mark.skipif(os.path.exists(mount.SYSLOG), reason="this machine has a syslog socket")
def test_no_syslog_and_no_log_file_refuses_to_detach(rig, fskeys):
    proc = run(detached(rig, "-k", str(fskeys[1])))
    assert proc.returncode == errors.UsageError.exit_code
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and "cannot detach" in lines[0] and "--log-file" in lines[0], lines
    assert not os.path.ismount(rig.mnt)


def test_daemon_log_without_syslog(tmp_path, monkeypatch):
    monkeypatch.setattr(mount, "SYSLOG", str(tmp_path / "no-log"))
    with pytest.raises(errors.UsageError, match="cannot detach.*log_file=PATH.*-f"):
        mount.daemon_log(None)
    assert mount.daemon_log(str(tmp_path / "fs.log")) is None


def test_daemon_log_to_syslog(tmp_path, monkeypatch):
    path = str(tmp_path / "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        monkeypatch.setattr(mount, "SYSLOG", path)
        handler = mount.daemon_log(None)
        try:
            handler.emit(logging.LogRecord("cryophilefs", logging.INFO, __file__, 1,
                                           "hello %s", ("there",), None))
            assert b"cryophilefs[" in server.recv(1000)
        finally:
            handler.close()
