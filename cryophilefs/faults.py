"""The one place where failures become errno values.

Only ``pyfuse3.FUSEError`` may leave a handler: anything else would end the
mount.  cryophile's named errors carry their errno; an ``FsError`` is a
misuse of the filesystem (a seek in a backup, a write to an archive); an
``OSError`` keeps its errno; anything else is a bug, logged with its traceback.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging

import pyfuse3

from cryophile import errors

log = logging.getLogger("cryophilefs")


class FsError(errors.Error):
    """What the user did is not possible here; logged as a warning."""

    def __init__(self, errno_: int, message: str):
        super().__init__(message)
        self.errno = errno_


def to_fuse(exc: BaseException, where: str) -> pyfuse3.FUSEError:
    if isinstance(exc, pyfuse3.FUSEError):
        return exc
    if isinstance(exc, FsError):
        log.warning("%s: %s", where, exc)
        return pyfuse3.FUSEError(exc.errno)
    if isinstance(exc, errors.Error):
        log.error("%s: %s", where, exc)
        return pyfuse3.FUSEError(exc.errno)
    if isinstance(exc, OSError):
        log.error("%s: %s", where, exc)
        return pyfuse3.FUSEError(exc.errno or errno.EIO)
    log.error("%s: internal error", where, exc_info=exc)
    return pyfuse3.FUSEError(errno.EIO)


def guarded(method):
    """Wrap a handler so that only FUSEError leaves it (trio.Cancelled passes)."""
    @functools.wraps(method)
    async def handler(self, *args):
        try:
            return await method(self, *args)
        except Exception as exc:
            raise to_fuse(exc, self.describe(method.__name__, args)) from None
    return handler


def guard_all(cls):
    """Apply ``guarded`` to every pyfuse3 handler that ``cls`` defines."""
    for name, value in list(vars(cls).items()):
        if inspect.iscoroutinefunction(value) and hasattr(pyfuse3.Operations, name):
            setattr(cls, name, guarded(value))
    return cls
