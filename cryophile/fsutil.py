"""Small filesystem helpers shared by the spool and the local vault."""

import os
import shutil
import sys
import tempfile


def fsync_dir(path: str) -> None:
    """Make a rename or link in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write ``path`` whole: into a temporary file beside it (a dot name,
    which spool scans skip), fsynced, then renamed over it.  A reader, or a
    crash, sees the old file or the new one, never part of one; on any
    failure the temporary file is removed and the OSError raised."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def remove_tree(path: str) -> None:
    """Remove a directory tree; one that is gone already (or goes meanwhile)
    is no failure, anything else left behind raises the first OSError, with
    its whole path."""
    failures: list[OSError] = []

    def failed(function, name, exc):
        if not isinstance(exc, FileNotFoundError):
            failures.append(OSError(exc.errno, exc.strerror, name))
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=failed)
    else:           # onerror is deprecated from 3.12 on
        shutil.rmtree(path, onerror=lambda function, name, info: failed(function, name, info[1]))
    if failures:
        raise failures[0]
