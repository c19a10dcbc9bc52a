"""Real mounts of cryophilefs for the tests (after pyfuse3's test/util.py).

``FsRig(root, cert)`` writes a configuration with a local vault (or any vault
settings) and ``with rig.mounted(...) as mnt:`` runs ``python -m cryophilefs -f``
in a subprocess, waits for the mount, and at the end unmounts with
``fusermount3 -u``, asserts exit status 0 and that the log holds no traceback
and no warning or error the test did not expect.  On failure it unmounts
lazily (``fusermount3 -uz``) and kills the process.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

VAULT = "0b8c3a7e-5a1d-4f7e-9a53-3f1c2d4e5f60"
MOUNT_TIMEOUT = 120


def fuse_available() -> bool:
    return os.path.exists("/dev/fuse") and os.getuid() == 0 and bool(
        subprocess.run(["which", "fusermount3"], capture_output=True).stdout)


needs_fuse = pytest.mark.skipif(not fuse_available(), reason="needs root, /dev/fuse and fusermount3")


class FsRig:
    def __init__(self, root: Path, cert: Path, vault: str = VAULT, **vault_settings):
        self.root = Path(root)
        self.cert, self.vault = cert, vault
        self.spool, self.vaults = self.root / "spool", self.root / "vaults"
        self.config, self.mnt = self.root / "cryophile.toml", self.root / "mnt"
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.settings = {"url": f"file://{self.vaults}", "keyring": [str(cert)],
                         "fragment_size": "1MiB", **vault_settings}
        self.write_config()
        self.proc: subprocess.Popen | None = None
        self.log = ""

    def write_config(self) -> None:
        lines = [f'spool = "{self.spool}"', f"[vault.{self.vault}]"]
        for k, v in self.settings.items():
            if v is None:
                continue
            value = "[" + ", ".join(f'"{x}"' for x in v) + "]" if isinstance(v, list) else (
                str(v) if isinstance(v, int) else f'"{v}"')
            lines.append(f"{k} = {value}")
        self.config.write_text("\n".join(lines) + "\n")

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "cryophilefs", "-f", "-S", str(self.spool),
                "-c", str(self.config), *args, str(self.mnt)]

    @property
    def incoming(self) -> Path:
        return self.mnt / "incoming" / self.vault

    @property
    def archives(self) -> Path:
        return self.mnt / self.vault

    @contextlib.contextmanager
    def mounted(self, *args: str, expect: tuple[str, ...] = (), env: dict | None = None):
        """Mount with extra arguments (e.g. "-k", KEY, "-o", "allow_other")."""
        with tempfile.TemporaryFile() as errlog:
            yield from self._mounted(errlog, args, expect, env)

    def _mounted(self, errlog, args, expect, env):
        self.proc = subprocess.Popen(
            self.command(*args), stdin=subprocess.DEVNULL, stdout=errlog, stderr=errlog,
            env={**os.environ, "CRYOPHILE_LOG_STYLE": "never", **(env or {})})
        try:
            self._wait_mounted(errlog)
            yield self.mnt
            self.unmount()
        except BaseException:
            self._cleanup()
            self.log = _read(errlog)
            sys.stderr.write(f"--- cryophilefs log ---\n{self.log}")
            raise
        self.log = _read(errlog)
        check_log(self.log, expect)

    def _wait_mounted(self, errlog) -> None:
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not os.path.ismount(self.mnt):
            if self.proc.poll() is not None:
                pytest.fail(f"cryophilefs exited with {self.proc.returncode}:\n{_read(errlog)}")
            if time.monotonic() > deadline:
                pytest.fail("the mount did not come up")
            time.sleep(0.05)

    def unmount(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + 30
        while True:        # a process that just closed a file may still hold the mount
            proc = subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True)
            if proc.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert proc.returncode == 0, proc.stderr.decode()
        assert self.proc.wait(timeout) == 0, f"cryophilefs exited with {self.proc.returncode}"
        assert not os.path.ismount(self.mnt)

    def terminate(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def _cleanup(self) -> None:
        subprocess.run(["fusermount3", "-uz", str(self.mnt)], capture_output=True)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def archive(self, prefix: str = "", name_like: str | None = None) -> Path:
        """The only (or the named) archive under VAULT/PREFIX."""
        found = [p for p in (self.archives / prefix).iterdir() if p.is_file()]
        if name_like is not None:
            found = [p for p in found if os.getxattr(p, "user.cryophile.name").decode() == name_like]
        assert len(found) == 1, found
        return found[0]


def _read(f) -> str:
    f.seek(0)
    return f.read().decode(errors="replace")


def check_log(text: str, expect: tuple[str, ...] = ()) -> None:
    """No traceback; every warning and error matches one of ``expect``."""
    assert "Traceback" not in text, text
    for line in text.splitlines():
        if re.search(r"\b(warning|error):", line) and not any(re.search(e, line) for e in expect):
            pytest.fail(f"unexpected log line: {line}\n--- log ---\n{text}")


def sh(command: str, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(["sh", "-c", command], capture_output=True, timeout=120, **kw)
    assert proc.returncode == 0, f"{command}: {proc.stderr.decode(errors='replace')}"
    return proc


def state(path: Path) -> str:
    return os.getxattr(path, "user.cryophile.state").decode()


def wait_until(predicate, timeout: float = 120, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {predicate}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def fskeys(tmp_path_factory) -> tuple[Path, Path]:
    """(certificate, secret key) from sqop: quick to make."""
    d = tmp_path_factory.mktemp("fskeys")
    key, cert = d / "key.pgp", d / "cert.pgp"
    key.write_bytes(subprocess.run(["sqop", "generate-key", "fs <fs@example.org>"],
                                   check=True, capture_output=True).stdout)
    cert.write_bytes(subprocess.run(["sqop", "extract-cert"], input=key.read_bytes(),
                                    check=True, capture_output=True).stdout)
    key.chmod(0o600)                # world-readable secret keys warn
    return cert, key


@pytest.fixture
def rig(tmp_path, fskeys) -> FsRig:
    return FsRig(tmp_path, fskeys[0])


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    """3.5 MiB of random bytes: several 1 MiB fragments, a short last one."""
    path = tmp_path_factory.mktemp("data") / "data"
    path.write_bytes(os.urandom(3 * (1 << 20) + 500_000))
    return path
