"""contrib/cryophile-zfs-backup against real ZFS (zfs-fuse on a file-backed
pool, in its own mount namespace: see tests/producers.py): a full stream, then
increments, restored in order with `zfs receive`; a failed backup destroys its
snapshot so that the chain never skips one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import producers
from tests.fsrig import VAULT, fskeys  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "contrib" / "cryophile-zfs-backup"

pytestmark = [
    pytest.mark.skipif(not (shutil.which("zfs-fuse") and shutil.which("unshare")
                            and os.getuid() == 0), reason="needs root and zfs-fuse"),
    pytest.mark.timeout(600),
]


class Zfs(producers.Zfs):
    def run(self, *cmd: str, env=None, input=None, check=True) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.command(*cmd), capture_output=True, timeout=300, env=env,
                              input=input)
        if check:
            assert proc.returncode == 0, f"{cmd}: {proc.stderr.decode(errors='replace')}"
        return proc

    def snapshots(self, dataset: str) -> list[str]:
        out = self.run("zfs", "list", "-H", "-t", "snapshot", "-o", "name", "-s", "createtxg",
                       "-d", "1", dataset).stdout.decode()
        return out.split()


@pytest.fixture
def zfs(tmp_path):
    (tmp_path / "zfs").mkdir()
    z = Zfs(tmp_path / "zfs", "cryopkg")
    try:
        yield z
    finally:
        z.close()


def test_nightly_increments_restore_in_order(zfs, tmp_path, fskeys):  # noqa: F811
    cert, key = fskeys
    spool, vaults = tmp_path / "spool", tmp_path / "vaults"
    config = tmp_path / "cryophile.toml"
    config.write_text(f'spool = "{spool}"\n[vault.{VAULT}]\nname = "offsite"\n'
                      f'url = "file://{vaults}"\nfragment_size = "1MiB"\n')
    cryophile = tmp_path / "cryophile"
    cryophile.write_text(f'#!/bin/sh\nexec {sys.executable} -m cryophile -c {config} "$@"\n')
    cryophile.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VAULT": "offsite", "KEYRING": str(cert),
           "CRYOPHILE": str(cryophile), "KEEP": "2", "CRYOPHILE_LOG_STYLE": "never"}
    mnt = zfs.root / "mnt"
    zfs.run("zfs", "create", "cryopkg/data")

    def night(content: bytes, check=True) -> subprocess.CompletedProcess:
        zfs.run("sh", "-c", 'cat > "$0"', str(mnt / "data" / "file"), input=content)
        before = zfs.snapshots("cryopkg/data")
        while before and time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) in before[-1]:
            time.sleep(0.2)     # snapshot names have a resolution of a second
        return zfs.run("bash", str(SCRIPT), "cryopkg/data", env=env, check=check)

    ulids = []
    for n in range(3):
        proc = night(b"night %d\n" % n * 100_000)
        ulids.append(proc.stdout.decode().strip())
        assert len(ulids[-1]) == 26, proc.stderr.decode()
        assert ("increment from cryophile-" in proc.stderr.decode()) == (n > 0)
    snapshots = zfs.snapshots("cryopkg/data")
    assert len(snapshots) == 2 and all("@cryophile-" in s for s in snapshots)  # KEEP=2

    # a backup that fails leaves the snapshots as they were: the next
    # increment starts from the last snapshot that was backed up
    env["VAULT"] = "no-such-vault"
    proc = night(b"lost\n", check=False)
    assert proc.returncode == 1 and "snapshot destroyed" in proc.stderr.decode()
    assert zfs.snapshots("cryopkg/data") == snapshots
    env["VAULT"] = "offsite"

    subprocess.run([str(cryophile), "freeze", "--once"], check=True, timeout=300, env=env)
    for n, ulid in enumerate(ulids):
        stream = tmp_path / f"stream.{n}"
        subprocess.run([str(cryophile), "restore", "-v", "offsite", "-p", "cryopkg/data",
                        "-u", ulid, "-k", str(key), "-o", str(stream)],
                       check=True, timeout=300, env=env)
        zfs.run("sh", "-c", 'zfs receive -F cryopkg/restored < "$0"', str(stream))
        zfs.run("zfs", "umount", "cryopkg/restored")   # zfs-fuse shows a received
        zfs.run("zfs", "mount", "cryopkg/restored")    # increment only after a remount
        restored = zfs.run("cat", str(mnt / "restored" / "file")).stdout
        assert restored == b"night %d\n" % n * 100_000
