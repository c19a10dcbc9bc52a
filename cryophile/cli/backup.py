"""cryophile backup: a stream into a new archive in the spool."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import stat
import subprocess
import threading
import sys

from .. import config, errors, ids, keys
from ..pipeline.compress import CODECS
from ..pipeline.writer import ArchiveWriter
from ..backpressure import Backpressure
from .common import Context, Progress

log = logging.getLogger("cryophile.backup")
READ_SIZE = 1 << 20


def add_parser(sub) -> None:
    p = sub.add_parser(
        "backup", help="compress, encrypt and split a stream into the spool",
        usage="%(prog)s -v VAULT [options] [-- COMMAND ARGS...]",
        description="Read a stream (stdin, a file or a FIFO, or the output of COMMAND "
                    "given after --), compress it, encrypt it to the certificates given "
                    "with -k, and split it into fragments in the spool's freeze queue.  "
                    "Prints the new archive's ULID on stdout.  A zfs send, btrfs send or "
                    "tar stream that does not end as one (cut short), a COMMAND that "
                    "fails, and empty input are refused: nothing is kept.")
    p.add_argument("-v", "--vault", required=True, metavar="VAULT",
                   help="vault UUID (or its alias from the configuration)")
    p.add_argument("-p", "--prefix", metavar="PREFIX", help="path grouping archives, e.g. tank/home")
    p.add_argument("-k", "--keyring", action="append", default=[], metavar="KEYRING",
                   help="certificate file(s) to encrypt to; repeatable (default: the "
                        "vault's keyring in the configuration)")
    p.add_argument("-C", "--compression", metavar="none|lz4|zstd",
                   help="compression (default: the vault's, else lz4)")
    p.add_argument("-i", "--input", default="-", metavar="INPUT",
                   help="file or FIFO to read (default: - for stdin)")
    p.add_argument("-t", "--timestamp", metavar="TIMESTAMP",
                   help="make the ULID at this time (ISO 8601 or seconds since the epoch)")
    p.add_argument("-u", "--ulid", metavar="ULID", help="use this ULID")
    p.add_argument("-s", "--fragment-size", metavar="SIZE",
                   help="fragment size from 4KiB to 5TiB, e.g. 64MiB, 1G "
                        "(default: the vault's, else 64MiB)")
    p.add_argument("--name", metavar="NAME", help="a name kept (encrypted) with the archive")
    p.add_argument("--allow-empty", action="store_true",
                   help="keep an archive of empty input (refused otherwise)")
    p.add_argument("--parent", metavar="ULID",
                   help="record the archive this one is an increment of (for streams "
                        "whose kind cannot tell it)")
    p.add_argument("producer", nargs="*", metavar="COMMAND",
                   help="after --: run COMMAND ARGS... and back up its output; a non-zero "
                        "exit abandons the archive")
    p.set_defaults(run=run)


def run(args) -> int:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop_once)
    if args.timestamp and args.ulid:
        raise errors.UsageError("give either -t TIMESTAMP or -u ULID, not both")
    ctx = Context(args)
    vault = ctx.vault(args.vault)
    compression = args.compression or vault.compression
    if compression not in CODECS:
        raise errors.UsageError(f"unknown compression {compression!r}: use none, lz4 or zstd")
    fragment_size = ids.parse_fragment_size(args.fragment_size or vault.fragment_size)
    prefix = ids.parse_prefix(args.prefix, base=vault.key_base)
    if args.ulid:
        ulid = ids.parse_ulid(args.ulid)
    else:
        ulid = ids.new_ulid(ids.parse_timestamp(args.timestamp) if args.timestamp else None)
    certs = args.keyring or vault.keyring
    if not certs:
        raise errors.UsageError("no certificate to encrypt to: give -k CERTFILE or set "
                                "keyring in the vault's configuration")
    parent = ids.parse_ulid(args.parent) if args.parent else None
    if args.producer and args.input != "-":
        raise errors.UsageError("give either -i INPUT or -- COMMAND, not both")
    recipients = keys.load_certificates(certs)
    bid = ids.BackupId(vault.uuid, prefix, ulid)
    if args.ulid:
        _refuse_existing(vault, bid)
    source = None if args.producer else _open_input(args.input)
    ctx.spool.ensure()
    ctx.spool.clean_dead_backups()
    source = source or Producer(args.producer)
    pressure = Backpressure(ctx.spool, ctx.config.spool_max, freeze_inline=_InlineFreeze(ctx))
    stop = threading.Event()        # the writer's abort ends a wait for spool room
    try:
        writer = ArchiveWriter(ctx.spool, bid, recipients, compression, fragment_size,
                               name=args.name, created=ids.ulid_time(ulid),
                               before_fragment=lambda: pressure.wait(stop), parent=parent,
                               stop=stop)
        try:
            _copy(source, writer)
            if isinstance(source, Producer):
                source.wait()
            writer.close(incomplete="refuse", allow_empty=args.allow_empty)
        except BaseException:
            writer.abort()
            raise
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    print(ulid, flush=True)
    return 0


def _stop_once(signum, frame) -> None:
    """The first Ctrl-C or SIGTERM stops the backup; later ones are ignored, so
    that a second Ctrl-C cannot cut short the abandoning of the archive (which
    would leave it dead in the spool until the next run cleans it up).  The
    abort's waits all have an end."""
    for other in (signal.SIGINT, signal.SIGTERM):
        signal.signal(other, signal.SIG_IGN)
    raise KeyboardInterrupt


class _InlineFreeze:
    """freeze.InlineFreeze, made at its first call: most backups never freeze
    inline, and freeze's imports (trio, the catalog) would cost each of them."""

    def __init__(self, ctx: Context):
        self.ctx, self.made = ctx, None

    def __call__(self) -> None:
        if self.made is None:
            from ..freeze import InlineFreeze
            self.made = InlineFreeze(self.ctx.spool, self.ctx.store,
                                     lambda v: self.ctx.vault(v).storage_class)
        self.made()

    @property
    def failure(self) -> errors.Error | None:
        return self.made.failure if self.made is not None else None


class Producer:
    """COMMAND ARGS…, whose standard output is the backup's input.  Its exit
    status decides whether what it wrote is a backup (as restic's
    --stdin-from-command, borg's --content-from-command)."""

    def __init__(self, argv: list[str]):
        self.argv = argv
        self.what = " ".join(argv[:2]) if argv[0] in ("zfs", "btrfs") else argv[0]
        try:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, bufsize=0)
        except OSError as exc:
            raise errors.ProducerError(f"cannot run {argv[0]}: {exc.strerror}; "
                                       "nothing was backed up") from None

    def fileno(self) -> int:
        return self.proc.stdout.fileno()

    def wait(self) -> None:
        """After end of input: a non-zero exit makes the input no backup."""
        self.proc.stdout.close()
        status = self.proc.wait()
        if status > 0:
            raise errors.ProducerError(f"{self.what} exited with status {status}: "
                                       "the archive was abandoned")
        if status < 0:
            try:
                name = signal.Signals(-status).name
            except ValueError:
                name = f"signal {-status}"
            raise errors.ProducerError(f"{self.what} was killed by {name}: "
                                       "the archive was abandoned")

    def close(self) -> None:
        """Stop the command if it still runs (the backup failed first)."""
        if self.proc.returncode is not None:
            return
        self.proc.stdout.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _refuse_existing(vault, bid: ids.BackupId) -> None:
    """-u ULID must not name an archive the vault already holds: freeze would
    overwrite it.  A vault that cannot be asked now is left to freeze."""
    try:
        store = config.open_store(vault, retry_attempts=1)
    except errors.Error as exc:
        log.debug("cannot check %s for an existing %s: %s", vault.uuid, bid, exc)
        return
    try:
        store.head(bid.fragment_key(0))
    except errors.NotFoundError:
        return
    except errors.Error as exc:
        log.debug("cannot check %s for an existing %s: %s", vault.uuid, bid, exc)
        return
    finally:
        store.close()
    raise errors.UsageError(f"archive {bid} already exists in its vault")


def _open_input(path: str):
    if path == "-":
        if sys.stdin.isatty():
            raise errors.UsageError("refusing to read a backup from a terminal: pipe a "
                                    "stream in (zfs send … | cryophile backup …) or use -i FILE")
        return sys.stdin.buffer
    try:
        return open(path, "rb", buffering=0)
    except OSError as exc:
        raise errors.UsageError(f"cannot read input {path}: {exc.strerror}") from None


def _copy(source, writer: ArchiveWriter) -> None:
    """Each read is a new bytes object, which the writer compresses where it
    is (no copy) when it holds whole frames, as reads of a file do."""
    fd = source.fileno()
    progress = Progress("backup", _remaining(fd))
    _widen_pipe(fd)
    while True:
        try:
            data = os.read(fd, READ_SIZE)
        except OSError as exc:
            raise errors.Error(f"cannot read the input: {exc.strerror}") from None
        if not data:
            break
        writer.write(data)
        progress.add(len(data))
    progress.finish()


def _remaining(fd: int) -> int | None:
    """The bytes left in a regular file (-i FILE, or stdin redirected from one),
    so that the bar shows a percentage and the time left; None for a pipe."""
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            return max(st.st_size - os.lseek(fd, 0, os.SEEK_CUR), 0) or None
    except OSError:
        pass
    return None


def _widen_pipe(fd: int) -> None:
    """A pipe holds 64 KiB by default: 16 reads (and as many wake-ups of the
    producer) per frame.  Ask for one frame's worth; a pipe that cannot grow
    (pipe-max-size, the user's pipe quota) stays as it is."""
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, READ_SIZE)
    except OSError as exc:
        log.debug("pipe left at its size: %s", exc)
