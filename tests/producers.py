"""Real producers for the stream tests: zfs-fuse on a file-backed pool, btrfs
on a loop image, GNU tar.  Each runs in the test's temporary directory.

zfs-fuse keeps its socket, lock and pool cache at fixed system paths
(/run/zfs, /run/lock/zfs, /var/lib/zfs): the daemon runs in a private mount
namespace with a tmpfs on /run and a temporary directory on /var/lib, and
every zfs command joins that namespace with nsenter, so nothing outside the
test's directory is touched and parallel runs do not meet.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

POOL_SIZE = 256 << 20

ZFS_NAMESPACE = """
set -e
mount -t tmpfs tmpfs /run
mkdir -p /run/zfs /run/lock/zfs
mount --bind "$1/lib" /var/lib
mkdir -p /var/lib/zfs
exec zfs-fuse --no-daemon --no-kstat-mount
"""


def run(*cmd, **kw) -> bytes:
    proc = subprocess.run(cmd, capture_output=True, timeout=120, **kw)
    if proc.returncode:
        raise AssertionError(f"{cmd} exited {proc.returncode}: {proc.stderr.decode()}")
    return proc.stdout


class Zfs:
    """A zfs-fuse daemon with one pool ``NAME`` on a 256 MiB file."""

    def __init__(self, root: Path, name: str = "cryotest"):
        self.root, self.name = root, name
        (root / "lib").mkdir()
        self.mnt = root / "mnt"
        with open(root / "zfs-fuse.log", "wb") as log:
            self.daemon = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", ZFS_NAMESPACE,
                 "zfs-namespace", str(root)], stdout=subprocess.DEVNULL, stderr=log)
        self.prefix = ["nsenter", "-t", str(self.daemon.pid), "-m"]
        self._wait_ready()
        image = root / "pool.img"
        with open(image, "wb") as f:
            f.truncate(POOL_SIZE)
        self.zpool("create", "-m", str(self.mnt), name, str(image))

    def _wait_ready(self) -> None:
        for _ in range(300):
            if self.daemon.poll() is not None:
                raise AssertionError("zfs-fuse exited: "
                                     + (self.root / "zfs-fuse.log").read_text())
            probe = subprocess.run([*self.prefix, "zpool", "list"], capture_output=True,
                                   timeout=60)
            if probe.returncode == 0:
                return
            time.sleep(0.1)
        raise AssertionError("zfs-fuse did not start")

    def command(self, *args: str) -> list[str]:
        """A command line that runs inside the daemon's namespace."""
        return [*self.prefix, *args]

    def zfs(self, *args: str) -> bytes:
        return run(*self.command("zfs", *args))

    def zpool(self, *args: str) -> bytes:
        return run(*self.command("zpool", *args))

    def write(self, name: str, data: bytes) -> None:
        run(*self.command("sh", "-c", 'cat > "$0"', str(self.mnt / name)), input=data)

    def guid(self, snapshot: str) -> str:
        return self.zfs("get", "-H", "-p", "-o", "value", "guid", snapshot).decode().strip()

    def close(self) -> None:
        try:
            if self.daemon.poll() is None:
                subprocess.run([*self.prefix, "zpool", "destroy", "-f", self.name],
                               capture_output=True, timeout=120)
        finally:
            self.daemon.terminate()
            try:
                self.daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()


class Btrfs:
    """A btrfs filesystem on a loop device over a 256 MiB image."""

    def __init__(self, root: Path):
        self.root = root
        self.image = root / "btrfs.img"
        with open(self.image, "wb") as f:
            f.truncate(POOL_SIZE)
        run("mkfs.btrfs", "-q", str(self.image))
        self.loop = run("losetup", "-f", "--show", str(self.image)).decode().strip()
        self.mnt = root / "mnt"
        self.mnt.mkdir()
        try:
            run("mount", self.loop, str(self.mnt))
        except BaseException:
            run("losetup", "-d", self.loop)
            raise

    def btrfs(self, *args: str) -> bytes:
        return run("btrfs", "-q", *args)

    def close(self) -> None:
        try:
            subprocess.run(["umount", str(self.mnt)], capture_output=True, timeout=120)
            if os.path.ismount(self.mnt):
                subprocess.run(["umount", "-l", str(self.mnt)], capture_output=True, timeout=60)
        finally:
            subprocess.run(["losetup", "-d", self.loop], capture_output=True, timeout=60)
