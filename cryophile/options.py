"""Options and prompts that cryophile and cryophilefs share.

Both command lines sit on top of this module; it depends on nothing above
it, so the filesystem never imports the command line.
"""

from __future__ import annotations

import os

from . import errors


def add_spool_options(p, default=None) -> None:
    """-S and -c, which cryophile and cryophilefs share."""
    p.add_argument("-S", "--spool", metavar="SPOOL", default=default,
                   help="spool directory (default from the configuration, else "
                        "/var/spool/cryophile)")
    p.add_argument("-c", "--config", metavar="CONFIG", default=default,
                   help="read only this configuration file (it must exist)")


def add_verbosity_options(p, debug_also: str = "", quiet_also: str = "") -> None:
    """-d and -q, which cryophile and cryophilefs share; each may say more of
    what they do there (``debug_also``, ``quiet_also`` end the help texts)."""
    p.add_argument("-d", "--debug", action="count", default=0,
                   help="more log output; twice for trace" + debug_also)
    p.add_argument("-q", "--quiet", action="count", default=0,
                   help="less log output: warnings and errors only" + quiet_also)


def add_log_file_option(p, default=None) -> None:
    p.add_argument("--log-file", metavar="PATH", default=default,
                   help="append the log to PATH, with timestamps, instead of stderr")


def passphrase_reader(fd: int | None):
    """A callback reading the passphrase from ``fd`` once, else from the terminal."""
    if fd is not None and fd < 0:
        raise errors.UsageError(f"--pass-fd {fd}: a file descriptor is 0 or more")
    cache: dict[str, str] = {}

    def read(description: str) -> str:
        if fd is not None:
            if "fd" not in cache:
                try:
                    with os.fdopen(fd, "rb", closefd=False) as f:
                        cache["fd"] = f.readline().decode().rstrip("\r\n")
                except OSError as exc:
                    raise errors.UsageError(f"cannot read the passphrase from fd {fd}: "
                                            f"{exc.strerror}") from None
            return cache["fd"]
        return _prompt(description)
    return read


def _prompt(description: str) -> str:
    import getpass
    try:                        # getpass asks on /dev/tty: is there one?
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        raise errors.BadPassphraseError(
            f"{description} is protected by a passphrase: give it with --pass-fd FD "
            "(no terminal to ask on)") from None
    try:
        return getpass.getpass(f"Passphrase for {description}: ")
    except EOFError:
        raise errors.BadPassphraseError(f"no passphrase given for {description}") from None
