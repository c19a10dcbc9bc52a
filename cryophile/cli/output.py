"""Where restore writes: stdout, or a file that appears only when complete.

``-o PATH`` names a regular file.  The plaintext goes into an unnamed file
(``O_TMPFILE``) in PATH's directory, mode 0600, which is linked in as PATH
only once the whole archive verified: a restore that fails or is killed,
even by SIGKILL, leaves nothing behind.  Where the filesystem has no
``O_TMPFILE``, a hidden ``.NAME.cryophile-PID`` file takes its place and is
removed on any failure or signal that can be caught.

PATH must not exist, unless ``--force`` allows an existing *regular* file
to be replaced (atomically, by rename).  Anything else that exists there —
a device such as /dev/null, a FIFO, a socket, a directory, a symbolic link
— is refused and never touched: restore > PATH writes into such a thing.
"""

from __future__ import annotations

import errno
import os
import stat
import sys

from .. import errors

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))
# O_TMPFILE unsupported by this filesystem or kernel (open(2))
_NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT}


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


class Output:
    """stdout, or a file that appears only when complete."""

    def __init__(self, path: str, force: bool = False):
        self.path, self.force = path, force
        self.tmp: str | None = None          # the named fallback's name, if used
        self.fd: int | None = None
        if path == "-":
            if sys.stdout.isatty():
                raise errors.UsageError("refusing to write an archive to a terminal: "
                                        "use -o FILE or a pipe")
            self.file = sys.stdout.buffer
            return
        full = os.path.abspath(path)
        self.name = os.path.basename(full)
        if not self.name:           # "/"
            raise errors.SpoolError(f"cannot write output {path}: it is a directory, not a "
                                    "regular file")
        try:
            # names below are relative to this directory: it cannot be swapped meanwhile
            self.dirfd = os.open(os.path.dirname(full), os.O_RDONLY | os.O_DIRECTORY
                                 | os.O_CLOEXEC)
        except OSError as exc:
            raise self._error(exc) from None
        try:
            self._check_target()
            self.fd = self._open_unnamed()
            if self.fd is None:
                self.fd = self._open_named()
        except OSError as exc:
            os.close(self.dirfd)
            raise self._error(exc) from None
        except BaseException:
            os.close(self.dirfd)
            raise
        self.file = os.fdopen(self.fd, "wb", closefd=False)

    def _error(self, exc: OSError) -> errors.Error:
        return errors.from_oserror(exc, f"cannot write output {self.path}")

    def _lstat(self) -> os.stat_result | None:
        try:
            return os.lstat(self.name, dir_fd=self.dirfd)
        except FileNotFoundError:
            return None

    def _check_target(self) -> None:
        """Refuse what exists and is not a regular file; a regular file only with force."""
        st = self._lstat()
        if st is None:
            return
        if not stat.S_ISREG(st.st_mode):
            raise errors.SpoolError(
                f"cannot write output {self.path}: it is {_kind(st.st_mode)}, not a regular "
                "file; -o only creates files (redirect stdout to write into it)")
        if not self.force:
            raise errors.SpoolError(f"cannot write output {self.path}: it exists "
                                    "(--force replaces it once the archive verified)")

    def _open_unnamed(self) -> int | None:
        flags = getattr(os, "O_TMPFILE", 0)
        if not flags or not os.path.isdir("/proc/self/fd"):
            return None
        try:
            return os.open(".", flags | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=self.dirfd)
        except OSError as exc:
            if exc.errno in _NO_TMPFILE:
                return None
            raise

    def _open_named(self) -> int:
        self.tmp = f".{self.name}.cryophile-{os.getpid()}"
        return os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                       | os.O_CLOEXEC, 0o600, dir_fd=self.dirfd)

    def commit(self) -> None:
        if self.fd is None:
            return
        try:
            self.file.flush()
            os.fsync(self.fd)
            if self.tmp is None:
                self._link_unnamed()
            else:
                self._publish(self.tmp)
                self.tmp = None
        except OSError as exc:
            raise self._error(exc) from None
        finally:
            self.discard()

    def _link(self, source: str, name: str, src_dir_fd: int | None = None) -> None:
        # with a dir fd, os.link uses linkat(AT_SYMLINK_FOLLOW): /proc/self/fd/N works
        os.link(source, name, src_dir_fd=src_dir_fd, dst_dir_fd=self.dirfd,
                follow_symlinks=True)

    def _link_unnamed(self) -> None:
        source = f"/proc/self/fd/{self.fd}"
        if not self.force:
            try:
                return self._link(source, self.name)
            except FileExistsError:
                raise errors.SpoolError(f"cannot write output {self.path}: it appeared "
                                        "while the archive was restored") from None
        # replace: link under a fresh hidden name, then rename over the target
        for attempt in range(100):
            staged = f".{self.name}.cryophile-{os.getpid()}-{attempt}"
            try:
                self._link(source, staged)
                break
            except FileExistsError:
                continue
        else:
            raise errors.SpoolError(f"cannot write output {self.path}: no free temporary name")
        self._publish(staged)

    def _publish(self, staged: str) -> None:
        """``staged`` becomes the target: linked if it must not exist (so nothing
        that appeared meanwhile is replaced), else renamed over a regular file."""
        if not self.force:
            try:
                self._link(staged, self.name, src_dir_fd=self.dirfd)
                os.unlink(staged, dir_fd=self.dirfd)
                return os.fsync(self.dirfd)
            except FileExistsError:
                os.unlink(staged, dir_fd=self.dirfd)
                raise errors.SpoolError(f"cannot write output {self.path}: it appeared "
                                        "while the archive was restored") from None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP):   # no hard links here
                    raise
        st = self._lstat()
        if st is not None and (not stat.S_ISREG(st.st_mode) or not self.force):
            os.unlink(staged, dir_fd=self.dirfd)
            raise errors.SpoolError(f"cannot write output {self.path}: it appeared while "
                                    "the archive was restored")
        os.rename(staged, self.name, src_dir_fd=self.dirfd, dst_dir_fd=self.dirfd)
        os.fsync(self.dirfd)

    def discard(self) -> None:
        """Close; remove the named temporary file if there is one (idempotent)."""
        if self.fd is None:
            return
        try:
            self.file.close()
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
        if self.tmp is not None:
            try:
                os.unlink(self.tmp, dir_fd=self.dirfd)
            except FileNotFoundError:
                pass
            self.tmp = None
        os.close(self.dirfd)
