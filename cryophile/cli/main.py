"""cryophile [-S SPOOL] [-c CONFIG] [-d…] [-q] COMMAND …"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from .. import __version__, errors, log
from . import backup, chain, freeze, ls, restore, status, thaw
from .common import add_spool_options

COMMANDS = (backup, freeze, thaw, restore, ls, chain, status)
PROG = "cryophile"

DESCRIPTION = """\
Off-site backups of streams (zfs send, btrfs send, tar) into S3 Glacier or a
local directory, compressed and encrypted end to end to OpenPGP certificates.
backup writes an archive into the spool, freeze moves it into its vault,
thaw brings fragments back, restore decrypts them to stdout or a file."""

EPILOG = """\
environment:
  CRYOPHILE_LOG        log filter, e.g. 'debug' or 'warn,cryophile.freeze=trace'
  CRYOPHILE_LOG_STYLE  auto (default), always or never: colours in the log

exit status: 0 success, 2 usage, 3 configuration, 4 unusable key,
5 no matching secret key, 6 wrong passphrase, 7 archive not found,
8 fragment missing or truncated, 9 damaged archive, 10 vault storage,
11 spool or output not writable, 12 disk full, 13 backup's COMMAND failed,
14 input stream cut short, 15 empty input, 130 interrupted.
See cryophile(1)."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_spool_options(p)
    p.add_argument("-d", "--debug", action="count", default=0,
                   help="more log output; twice for trace, with tracebacks on errors")
    p.add_argument("-q", "--quiet", action="count", default=0,
                   help="less log output: warnings and errors only")
    p.add_argument("-V", "--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    log.setup(PROG, args.debug - args.quiet)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        try:
            return args.run(args) or 0
        except BaseExceptionGroup as group:    # from trio nurseries
            raise errors.unwrap(group) from None
    except errors.Error as exc:
        _report(args, exc)
        return exc.exit_code
    except KeyboardInterrupt:
        _report(args, errors.Interrupted("interrupted"))
        return errors.Interrupted.exit_code
    except BrokenPipeError:
        _report(args, errors.SpoolError("output closed early (broken pipe)"))
        return errors.SpoolError.exit_code
    finally:
        sys.stdout.flush() if not sys.stdout.closed else None


def _report(args, exc: errors.Error) -> None:
    logger = logging.getLogger(PROG)
    if args.debug:
        logger.error("%s", exc, exc_info=exc)
    else:
        logger.error("%s", exc)


def _terminate(signum, frame):
    raise KeyboardInterrupt


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
