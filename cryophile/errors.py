"""Named errors that carry a one-line message and an exit code.

Errors cross each boundary once: code inside raises these, the CLI prints
``cryophile: <message>`` and exits with ``exit_code``; the filesystem maps
them to an errno in one place.
"""

import errno as _errno


class Error(Exception):
    """Base class: a failure the user can act on."""

    exit_code = 1
    errno = _errno.EIO

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(Error):
    """Bad arguments: a vault that is not a UUID, a bad prefix, -t with -u…"""

    exit_code = 2
    errno = _errno.EINVAL


class NameTooLongError(UsageError):
    """A prefix too long for its keys or for a directory name in the spool."""

    errno = _errno.ENAMETOOLONG


class ConfigError(Error):
    exit_code = 3
    errno = _errno.EINVAL


class KeyringError(Error):
    """A certificate or key file that cannot be used."""

    exit_code = 4
    errno = _errno.ENOKEY


class NoMatchingKeyError(KeyringError):
    """No loaded secret key matches any recipient of the archive."""

    exit_code = 5


class BadPassphraseError(KeyringError):
    exit_code = 6
    errno = _errno.EACCES


class NotFoundError(Error):
    """Unknown archive (ULID) or vault."""

    exit_code = 7
    errno = _errno.ENOENT


class BrokenChainError(NotFoundError):
    """An incremental archive whose parent (or an earlier link) is not in
    the vault, or links that loop: the chain cannot be received."""


class MissingFragmentError(Error):
    """A fragment is missing or shorter than the manifest says."""

    exit_code = 8


class IntegrityError(Error):
    """Ciphertext failed verification (SHA-256 or MDC): output not to be trusted."""

    exit_code = 9


class FormatError(IntegrityError):
    """Bytes that do not parse as the archive format."""


class StoreError(Error):
    """The vault's storage failed (permissions, missing bucket, network)."""

    exit_code = 10


class TransientStoreError(StoreError):
    """A failure worth retrying (5xx, SlowDown, reset, timeout)."""


class AccessDeniedError(StoreError):
    """The credentials may not do this (e.g. a write-only backup identity)."""

    errno = _errno.EACCES


class ConflictError(StoreError):
    """The vault already holds another object under a key we would write:
    it is never overwritten, and the local copy stays in the spool."""

    errno = _errno.EEXIST


class NotRestoredError(StoreError):
    """The object is in an archived storage class and not restored yet."""

    errno = _errno.EAGAIN


class SpoolError(Error):
    """The spool or output cannot be written (permissions, disk full)."""

    exit_code = 11


class DiskFullError(SpoolError):
    exit_code = 12
    errno = _errno.ENOSPC


class ProducerError(Error):
    """The command given after ``--`` failed: its output is not a backup."""

    exit_code = 13


class IncompleteStreamError(Error):
    """A zfs/btrfs/tar stream that does not end as its kind must (cut short)."""

    exit_code = 14


class EmptyInputError(Error):
    """No input at all, where a backup was expected."""

    exit_code = 15


class BudgetError(Error):
    """A thaw refused: it would pass thaw_budget_daily or thaw_budget_monthly
    (or the mount's thaw_on_read policy) and was not approved.  In the mount:
    EDQUOT, which tools report as "Disk quota exceeded"."""

    exit_code = 16
    errno = _errno.EDQUOT


class OutputClosedError(SpoolError):
    """The reader of our output went away (``| head``): not a failure to report.
    The exit code is what a shell reports for a command killed by SIGPIPE."""

    exit_code = 141
    errno = _errno.EPIPE


class Interrupted(Error):
    exit_code = 130
    errno = _errno.EINTR


SPOOL_FULL = ("free space there, or set spool_max (cryophile.toml(5)) below what its "
              "filesystem holds, so that a backup waits for freeze instead of failing")


def from_oserror(exc: OSError, what: str, full: str = "") -> Error:
    """Turn an OSError on ``what`` (a path and a verb) into a named error;
    ``full`` is what to do if the disk is full (e.g. ``SPOOL_FULL``)."""
    if exc.errno == _errno.EPIPE:
        return OutputClosedError(f"{what}: the reader went away (broken pipe)")
    if exc.errno in (_errno.ENOSPC, _errno.EDQUOT):
        return DiskFullError(f"{what}: no space left on device" + (f"; {full}" if full else ""))
    if exc.errno in (_errno.EACCES, _errno.EPERM, _errno.EROFS):
        return SpoolError(f"{what}: {exc.strerror} (check ownership and permissions)")
    return SpoolError(f"{what}: {exc.strerror or exc}")


def unwrap(group: BaseExceptionGroup) -> BaseException:
    """The one exception to report from a group (tasks that failed together):
    damage first, since it says the output is not to be trusted; then any
    other named error; an interruption only when nothing else explains it."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)
    walk(group)
    for kind in (IntegrityError, MissingFragmentError, Error, KeyboardInterrupt, Interrupted):
        for exc in leaves:
            if isinstance(exc, kind) and (kind is Interrupted or not isinstance(exc, Interrupted)):
                return exc
    return group
