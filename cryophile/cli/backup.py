"""cryophile backup: a stream into a new archive in the spool."""

from __future__ import annotations

import logging
import os
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
        description="Read a stream (stdin, a file or a FIFO), compress it, encrypt it to "
                    "the certificates given with -k, and split it into fragments in the "
                    "spool's freeze queue.  Prints the new archive's ULID on stdout.")
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
                   help="fragment size, e.g. 64MiB, 1G, 512 (default: 64MiB)")
    p.add_argument("--name", metavar="NAME", help="a name kept (encrypted) with the archive")
    p.set_defaults(run=run)


def run(args) -> int:
    if args.timestamp and args.ulid:
        raise errors.UsageError("give either -t TIMESTAMP or -u ULID, not both")
    ctx = Context(args)
    vault = ctx.vault(args.vault)
    compression = args.compression or vault.compression
    if compression not in CODECS:
        raise errors.UsageError(f"unknown compression {compression!r}: use none, lz4 or zstd")
    fragment_size = ids.parse_size(args.fragment_size or vault.fragment_size, "fragment size")
    prefix = ids.parse_prefix(args.prefix, base=vault.key_base)
    if args.ulid:
        ulid = ids.parse_ulid(args.ulid)
    else:
        ulid = ids.new_ulid(ids.parse_timestamp(args.timestamp) if args.timestamp else None)
    certs = args.keyring or vault.keyring
    if not certs:
        raise errors.UsageError("no certificate to encrypt to: give -k CERTFILE or set "
                                "keyring in the vault's configuration")
    recipients = keys.load_certificates(certs)
    bid = ids.BackupId(vault.uuid, prefix, ulid)
    if args.ulid:
        _refuse_existing(vault, bid)
    source = _open_input(args.input)
    ctx.spool.ensure()
    ctx.spool.clean_dead_backups()
    pressure = Backpressure(ctx.spool, ctx.config.spool_max)
    writer = ArchiveWriter(ctx.spool, bid, recipients, compression, fragment_size,
                           name=args.name, created=ids.ulid_time(ulid),
                           before_fragment=pressure.wait)
    try:
        _copy(source, writer)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        if source is not sys.stdin.buffer:
            source.close()
    print(ulid, flush=True)
    return 0


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
    progress = Progress("backup")
    buf = bytearray(READ_SIZE)
    view = memoryview(buf)
    fd = source.fileno()
    while True:
        try:
            n = os.readv(fd, [buf])
        except OSError as exc:
            raise errors.Error(f"cannot read the input: {exc.strerror}") from None
        if not n:
            break
        writer.write(view[:n])
        progress.add(n)
    progress.finish()
