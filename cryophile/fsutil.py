"""Small filesystem helpers shared by the spool and the local vault."""

import os


def fsync_dir(path: str) -> None:
    """Make a rename or link in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
