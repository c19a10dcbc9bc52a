"""A do-nothing pyfuse3 filesystem: the baseline for benchmarks/fs.py.

    python benchmarks/nullfs.py MOUNTPOINT ZERO_SIZE

Every created file swallows its writes; the file ``zero`` reads as
ZERO_SIZE zero bytes.  File handles use the same flags as cryophilefs
(direct I/O for writes, the page cache and kernel readahead for reads), so
the ratio measures what cryophilefs does, not how FUSE is set up.
"""

from __future__ import annotations

import errno
import os
import stat
import sys

import pyfuse3
import trio

ZERO_INO = pyfuse3.ROOT_INODE + 1


class NullFS(pyfuse3.Operations):
    def __init__(self, zero_size: int):
        super().__init__()
        self.zero_size = zero_size
        self.names = {b"zero": ZERO_INO}
        self.sizes = {ZERO_INO: zero_size}
        self.zeros = bytes(1 << 20)

    def _attrs(self, ino: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.st_mode = (stat.S_IFDIR | 0o755) if ino == pyfuse3.ROOT_INODE else (stat.S_IFREG | 0o644)
        a.st_size = self.sizes.get(ino, 0)
        a.st_blksize = 1 << 20
        a.st_uid, a.st_gid = os.getuid(), os.getgid()
        return a

    async def getattr(self, inode, ctx=None):
        if inode != pyfuse3.ROOT_INODE and inode not in self.sizes:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(inode)

    async def lookup(self, parent_inode, name, ctx=None):
        if name not in self.names:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(self.names[name])

    async def create(self, parent_inode, name, mode, flags, ctx=None):
        ino = self.names.setdefault(name, max(self.sizes) + 1)
        self.sizes.setdefault(ino, 0)
        return pyfuse3.FileInfo(fh=ino, direct_io=True), self._attrs(ino)

    async def open(self, inode, flags, ctx=None):
        return pyfuse3.FileInfo(fh=inode, direct_io=True)     # as cryophilefs opens archives

    async def setattr(self, inode, attr, fields, fh, ctx=None):
        return self._attrs(inode)

    async def write(self, fh, off, buf):
        return len(buf)

    async def read(self, fh, off, size):
        size = max(0, min(size, self.sizes.get(fh, 0) - off))
        return self.zeros[:size] if size <= len(self.zeros) else bytes(size)


async def serve(mountpoint: str, zero_size: int) -> None:
    pyfuse3.init(NullFS(zero_size), mountpoint, {"fsname=nullfs"})
    try:
        await pyfuse3.main()
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    trio.run(serve, sys.argv[1], int(sys.argv[2]))
