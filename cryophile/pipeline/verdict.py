"""A fragment's verified SHA-256, kept with the file for this boot.

Who has just hashed a fragment's bytes as they went to disk (the backup
writer, before the fsync; thaw, downloading and checking against chunk.0)
records that as an extended attribute: the digest, the boot, and the
file's inode, size and modification time at that moment.  A reader later
in the same boot takes the fragment as verified without hashing it again
if the file is still that one, unchanged: a write or a truncation changes
the size or the modification time.

Trusted, in this boot, is then the page cache and the disk under it, as
for any file a program reads back; a fault there (a disk returning other
bytes than were written) is no longer caught by the SHA-256 before use,
but by the frame checksums (lz4, zstd) or the MDC (no compression), still
before the frame it damages is written out (docs/FORMAT.md, Verification).
After a reboot nothing is trusted: thaw does not fsync its downloads, and
disks fail over time.  A filesystem without user xattrs keeps no verdicts:
every fragment is then hashed before use.
"""

from __future__ import annotations

import os

XATTR = "user.cryophile.verified"
_boot: str | None = None


def boot_id() -> str:
    """This boot's id (empty where the kernel does not say: nothing is trusted)."""
    global _boot
    if _boot is None:
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                _boot = f.read().strip()
        except OSError:
            _boot = ""
    return _boot


def _value(sha256: str, st: os.stat_result) -> bytes:
    return f"1 {boot_id()} {sha256} {st.st_ino} {st.st_size} {st.st_mtime_ns}".encode()


def record(fd: int, sha256: str) -> None:
    """The file open as ``fd``, written in full, has this SHA-256 (hex)."""
    if not boot_id():
        return
    try:
        os.setxattr(fd, XATTR, _value(sha256, os.fstat(fd)))
    except OSError:
        pass


def _found(fd: int) -> bytes | None:
    """The verdict recorded on the file open as ``fd``, if this boot can
    trust one."""
    if not boot_id():
        return None
    try:
        return os.getxattr(fd, XATTR)
    except OSError:
        return None


def holds(fd: int, sha256: str) -> bool:
    """Whether a verdict recorded in this boot says the file open as ``fd``
    has this SHA-256 and the file has not been written since."""
    found = _found(fd)
    return found is not None and found == _value(sha256, os.fstat(fd))


def recorded(fd: int) -> bool:
    """Whether a verdict recorded in this boot holds for the file open as
    ``fd``, whatever its SHA-256 (``holds`` then checks that one)."""
    found = _found(fd)
    if found is None:
        return False
    parts = found.split()
    return len(parts) == 6 and found == _value(parts[2].decode(), os.fstat(fd))
