"""A spool part of which another user made (a backup run as root into the
spool of a daemon running as its own user): what cannot be read is said,
never taken for empty, and the rest is served.  The commands run as user
nobody in the test's own directory, opened to it."""

import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

import cryophile
from tests.otheruser import NOBODY, unreachable

VAULT = "0b8c3a7e-5a1d-4f7e-9a53-3f1c2d4e5f60"
THEIRS = "11111111-2222-4333-8444-555555555555"
pytestmark = pytest.mark.skipif(bool(unreachable()), reason=unreachable() or "-")


class Other:
    """Commands run as nobody on a spool nobody owns, but for THEIRS/ in
    the freeze queue (root's, 0700, holding a queued fragment)."""

    def __init__(self, root: str, cert):
        self.root = root
        self.spool, self.vaults = os.path.join(root, "spool"), os.path.join(root, "vaults")
        self.config = os.path.join(root, "cryophile.toml")
        self.cert = os.path.join(root, "cert.pgp")
        shutil.copy(cert, self.cert)
        with open(self.config, "w") as f:
            f.write(f'spool = "{self.spool}"\n')
            for vault in (VAULT, THEIRS):
                f.write(f'[vault.{vault}]\nurl = "file://{self.vaults}"\n')
        theirs = os.path.join(self.spool, "freeze", THEIRS, "01JD0000000000000000000000")
        os.makedirs(theirs)
        os.makedirs(self.vaults)
        for path in (self.spool, self.vaults):
            for d, _, files in os.walk(path):
                for name in [d, *(os.path.join(d, f) for f in files)]:
                    os.chown(name, NOBODY, NOBODY)
        with open(os.path.join(theirs, "chunk.1"), "wb") as f:
            f.write(b"x" * 100)
        self.theirs = os.path.join(self.spool, "freeze", THEIRS)
        os.chown(self.theirs, 0, 0)
        os.chmod(self.theirs, 0o700)
        os.chmod(root, 0o755)
        for name in (self.config, self.cert):
            os.chmod(name, 0o644)

    def command(self, *args: str) -> list[str]:
        return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                sys.executable, "-m", "cryophile", "-c", self.config, *args]

    @property
    def env(self) -> dict:
        return {**os.environ, "CRYOPHILE_LOG_STYLE": "never", "HOME": self.root,
                "PYTHONPATH": os.path.dirname(os.path.dirname(cryophile.__file__))}

    def run(self, *args: str, input: bytes = b"") -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), input=input, capture_output=True,
                              env=self.env, timeout=120)

    def backup(self) -> str:
        proc = self.run("backup", "-v", VAULT, "-k", self.cert, "-s", "16KiB",
                        input=os.urandom(40_000))
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.decode().strip()

    def frozen(self, ulid: str) -> bool:
        return os.path.exists(os.path.join(self.vaults, VAULT, ulid, "chunk.0"))

    @property
    def said(self) -> str:
        return (f"cannot read {self.theirs}: Permission denied "
                "(check ownership and permissions)")


@pytest.fixture
def other(recipes):
    with tempfile.TemporaryDirectory() as d:
        yield Other(d, recipes["gpg"].cert)


@pytest.mark.timeout(300)
def test_freeze_once_freezes_the_rest_and_fails_for_what_it_cannot_read(other):
    ulid = other.backup()
    proc = other.run("freeze", "--once")
    assert proc.returncode == 11, proc.stderr
    assert proc.stderr.decode().splitlines() == [f"cryophile: frozen {VAULT}/{ulid}",
                                                 f"cryophile: error: {other.said}"]
    assert other.frozen(ulid)
    assert os.listdir(os.path.join(other.theirs, "01JD0000000000000000000000")) == ["chunk.1"]


@pytest.mark.timeout(300)
def test_a_freeze_daemon_says_once_what_it_cannot_read_and_goes_on(other):
    first = other.backup()
    daemon = subprocess.Popen(other.command("freeze"), stderr=subprocess.PIPE, env=other.env)
    try:
        deadline = time.monotonic() + 120
        while not other.frozen(first):
            assert daemon.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        second = other.backup()         # a later look at the queue
        while not other.frozen(second):
            assert daemon.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        daemon.terminate()
        _, err = daemon.communicate(timeout=60)
    lines = err.decode().splitlines()
    assert lines.count(f"cryophile: error: {other.said}") == 1, lines


@pytest.mark.timeout(300)
def test_ls_lists_the_vault_and_says_what_of_the_spool_it_cannot_read(other):
    ulid = other.backup()
    assert other.run("freeze", "--once", "-v", VAULT).returncode == 0
    proc = other.run("ls", "--json", THEIRS)
    assert proc.returncode == 11
    assert proc.stderr.decode().splitlines() == [
        f"cryophile: warning: archives in the spool not listed: {other.said}"]
    proc = other.run("ls", "--json", VAULT)
    assert proc.returncode == 11
    assert ulid in proc.stdout.decode()
