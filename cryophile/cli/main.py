"""cryophile [-S SPOOL] [-c CONFIG] [-d…] [-q] COMMAND …"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import signal
import sys

from .. import __version__, errors
from ..options import add_log_file_option, add_spool_options
from ..options import add_verbosity_options

# Each command is a module of this package; its one-line help is also here, so
# that a run imports only the command it runs (see ``parser``).
COMMANDS = {
    "backup": "compress, encrypt and split a stream into the spool",
    "freeze": "upload queued fragments into their vaults",
    "thaw": "restore requested fragments from cold storage into the restore queue",
    "restore": "decrypt an archive to stdout or a file",
    "ls": "list archives",
    "chain": "the chain of incrementals an archive needs",
    "status": "show the spool's queues",
    "rm": "delete archives",
    "prune": "delete archives a retention policy does not keep",
    "check": "check archives in the vault without restoring them",
}
SHELLS = ("bash", "zsh", "tcsh", "fish", "powershell")     # what shtab completes
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
14 input stream cut short (restore: an archive sealed incomplete),
15 empty input, 16 thaw refused by the budget, 130 interrupted.
See cryophile(1)."""
EPILOG += """
A closed output (`cryophile ls | head`) ends quietly with status 141, as a
shell reports a command killed by SIGPIPE.  Global options may also come
after COMMAND, anywhere among its options and arguments."""


def command_module(name: str):
    return importlib.import_module(f"{__package__}.{name}")


def parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line.  Given ``argv``, only the commands named in it
    are built from their modules (a command's imports, such as boto3, pgpy
    or trio, cost more than a short run of another); the others are
    stand-ins with their name and help, which is all the top-level --help
    shows and all a run of another command needs.  The word that names the
    command is always in ``argv``; with none there (--version, --help, an
    error) every command stands in; without ``argv`` every command is built
    (completion, the man page test)."""
    named = set(COMMANDS) if argv is None else set(COMMANDS).intersection(argv)
    stand_ins = argv is not None
    p = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_spool_options(p)
    add_log_file_option(p)
    add_verbosity_options(p, ", with tracebacks on errors", ", and no progress bars")
    p.add_argument("-V", "--version", action="version", version=f"{PROG} {__version__}")
    p.add_argument("--print-completion", choices=SHELLS, action=_PrintCompletion,
                   help="print a completion script for that shell")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help in COMMANDS.items():
        if name in named or not stand_ins:
            command_module(name).add_parser(sub)
        else:
            sub.add_parser(name, help=help)
    for command in sub.choices.values():
        add_options_after_command(command)
    return p


def add_options_after_command(command: argparse.ArgumentParser) -> None:
    """-S, -c, --log-file, -d and -q after COMMAND too.  There they set nothing
    unless given (so they never undo what came before COMMAND), and -d/-q count
    into fields of their own, added up in ``main``; a command's own option with
    the same name wins."""
    group = _Skipping(command.add_argument_group("global options"),
                      set(command._option_string_actions))
    add_spool_options(group, default=argparse.SUPPRESS)
    add_log_file_option(group, default=argparse.SUPPRESS)
    group.add_argument("-d", "--debug", action="count", dest="debug_after",
                       default=argparse.SUPPRESS, help="as before COMMAND")
    group.add_argument("-q", "--quiet", action="count", dest="quiet_after",
                       default=argparse.SUPPRESS, help="as before COMMAND")


class _PrintCompletion(argparse.Action):
    """--print-completion SHELL: shtab's script for the whole command line
    (shtab is imported only here)."""

    def __call__(self, p, namespace, shell, option_string=None):
        import shtab
        print(shtab.complete(parser(), shell=shell))
        p.exit(0)


class _Skipping:
    """add_argument that leaves out option strings a command already uses for itself."""

    def __init__(self, p, taken: set):
        self.p, self.taken = p, taken

    def add_argument(self, *names, **kwargs):
        free = [n for n in names if n not in self.taken]
        if free:
            self.p.add_argument(*free, **kwargs)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    args = parser(argv).parse_args(argv)
    from .. import log, progress        # (after --version and --help: they need neither)
    if getattr(args, "prepare", None):     # a command's own second look at its words
        args.prepare(args)
    verbosity = (args.debug + getattr(args, "debug_after", 0)
                 - args.quiet - getattr(args, "quiet_after", 0))
    args.debug = args.debug + getattr(args, "debug_after", 0)
    try:
        log.setup(PROG, verbosity, log_file=args.log_file)
        progress.quiet = verbosity < 0
    except errors.Error as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    signal.signal(signal.SIGTERM, _terminate)
    try:
        try:
            code = args.run(args) or 0
            if not sys.stdout.closed:
                sys.stdout.flush()
            return code
        except BaseExceptionGroup as group:    # from trio nurseries
            found = errors.unwrap(group)
            if found is group and group.subgroup(BrokenPipeError) is not None:
                raise BrokenPipeError from None
            raise found from None
    except (BrokenPipeError, errors.OutputClosedError):
        return _output_closed()
    except errors.Error as exc:
        _report(args, exc)
        return exc.exit_code
    except KeyboardInterrupt:
        _report(args, errors.Interrupted("interrupted"))
        return errors.Interrupted.exit_code


def _output_closed() -> int:
    """The reader of stdout went away (``| head``): end quietly, with the status a
    shell reports for a command killed by SIGPIPE.  stdout points to /dev/null from
    here, so that Python's own flush at exit finds nothing to complain about."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError):
        pass
    import logging
    logging.getLogger(PROG).debug("output closed by its reader")
    return errors.OutputClosedError.exit_code


def _report(args, exc: errors.Error) -> None:
    import logging
    from .. import log
    logger = logging.getLogger(PROG)
    if args.debug:
        logger.error("%s", exc, exc_info=exc)
    else:
        logger.error("%s", exc)
    if args.log_file:       # the caller (cron, a script) still hears why
        print(f"{PROG}: error: {log.redact(str(exc))}", file=sys.stderr)


def _terminate(signum, frame):
    raise KeyboardInterrupt


def run() -> None:
    try:
        code = main()
    except KeyboardInterrupt:       # Ctrl-C while the command line is read: nothing begun
        print(f"{PROG}: error: interrupted", file=sys.stderr)
        code = errors.Interrupted.exit_code
    # What is left is freed by the exit itself: without this, the interpreter's
    # last garbage collection walks every object the imports made (~0.1 s of a
    # run).  Files are closed and stdout flushed by now; logging's handlers
    # are flushed at exit all the same.
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
