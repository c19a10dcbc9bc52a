"""restore's finding options (which archive) and ``--chain -- COMMAND``:
every archive of a chain of incrementals into a receiving command, in
order, one run of COMMAND per archive."""

from __future__ import annotations

import argparse
import io
import logging
import re
import subprocess

from .. import errors, finding, ids, manifest, ranges
from ..ids import BackupId
from .common import timestamp

log = logging.getLogger("cryophile.restore")
FINDERS = ("ulid", "latest", "before", "name")
ZERO_RE = re.compile(r"^\s*0+\s*([KMGTP]i?)?B?\s*$", re.I)      # --offset 0, 0K, 0MiB


def add_options(p) -> None:
    p.add_argument("target", nargs=argparse.REMAINDER,
                   metavar="VAULT/PREFIX/ULID [-- COMMAND ARGS]",
                   help="the archive, as ls prints it (instead of -v, -p and -u); with "
                        "--chain, the receiving command after --")
    p.add_argument("--latest", action="store_true",
                   help="the newest sealed archive under -v VAULT [-p PREFIX]")
    p.add_argument("--before", metavar="TIME", type=timestamp,
                   help="the newest sealed archive made before TIME")
    p.add_argument("--name", metavar="NAME",
                   help="the newest sealed archive with this name or snapshot (the names "
                        "are encrypted: needs the secret key, and reads every chunk.0)")
    p.add_argument("--chain", action="store_true",
                   help="restore the archive's whole chain of incrementals, full backup "
                        "first, each into its own run of the COMMAND given after --")
    p.set_defaults(target_parser=p, prepare=split_words)


def add_range_options(p) -> None:
    p.add_argument("--offset", metavar="N",
                   help="restore the plaintext from byte N on (512, 64MiB, 1G…), thawing only "
                        "the fragments that hold the range (needs the secret key, also with -n)")
    p.add_argument("--length", metavar="M",
                   help="restore M bytes (to the end of the archive if it ends first)")


def byte_range(args) -> tuple[int, int | None] | None:
    """(offset, length or None) from --offset/--length, None for the whole archive."""
    if args.offset is None and args.length is None:
        return None
    if args.chain:
        raise errors.UsageError("--offset/--length restore a byte range of one archive, "
                                "not a --chain")
    offset = 0
    if args.offset is not None and not ZERO_RE.match(args.offset):
        offset = ids.parse_size(args.offset, "--offset")
    length = None if args.length is None else ids.parse_size(args.length, "--length")
    return offset, length


def range_fragments(ctx, bid: BackupId, keyring, span) -> list[int]:
    """For restore -n: the fragments the byte range needs (the seek index is in
    the encrypted manifest: this needs the secret key)."""
    data = None
    for queue in ("restore", "freeze"):
        try:
            with open(ctx.spool.path(queue, bid, 0), "rb") as f:
                data = f.read()
            break
        except FileNotFoundError:
            continue
    if data is None:
        buf = io.BytesIO()
        ctx.store(bid.vault).get(bid.fragment_key(0), buf)
        data = buf.getvalue()
    clear, encrypted = manifest.read_clear(data)
    manifest.check_identity(clear, bid)
    body = manifest.read_manifest(encrypted, clear, keyring.decrypt_session_key)
    return ranges.fragments(clear, body, *ranges.span(clear.size, *span, str(bid)))


def split_words(args) -> None:
    """Sort the words after restore's options: the target, options given
    after it, and the command after ``--``.  Run by main before it sets up
    logging, so that -d, -q and --log-file after the target count too."""
    words, args.command = list(args.target or ()), []
    args.target = None
    if words and not words[0].startswith("-"):
        args.target, words = words[0], words[1:]
    if "--" in words:
        at = words.index("--")
        words, args.command = words[:at], words[at + 1:]
    if words:
        more = args.target_parser.parse_args(words)
        for key, value in vars(more).items():
            if key == "target" or value == args.target_parser.get_default(key):
                continue
            if isinstance(value, list) and isinstance(getattr(args, key, None), list):
                value = getattr(args, key) + value
            elif key in ("debug_after", "quiet_after"):     # counts add up
                value += getattr(args, key, 0)
            setattr(args, key, value)


def resolve(ctx, args, keyring) -> BackupId:
    """The archive restore was asked for (after split_words)."""
    chosen = [f for f in FINDERS if getattr(args, f) not in (None, False)]
    if args.command and not args.chain:
        raise errors.UsageError("a command after -- needs --chain")
    if args.chain and not args.command:
        raise errors.UsageError("--chain needs the receiving command after --, e.g. "
                                "-- zfs receive -u pool/fs")
    if args.chain and args.output != "-":
        raise errors.UsageError("--chain writes into its command, not to -o")
    if args.target is not None:
        if chosen or args.vault or args.prefix:
            raise errors.UsageError("give the archive either as VAULT/PREFIX/ULID or with "
                                    "-v/-p and -u, --latest, --before or --name")
        return finding.backup_id(ctx.config, args.target)
    if not args.vault:
        raise errors.UsageError("which archive? give VAULT/PREFIX/ULID, or -v VAULT with -u "
                                "ULID, --latest, --before TIME or --name NAME")
    if len(chosen) != 1:
        raise errors.UsageError("give one of -u ULID, --latest, --before TIME, --name NAME")
    vault, prefix = ctx.vault(args.vault).uuid, ids.parse_prefix(args.prefix)
    if args.ulid:
        return BackupId(vault, prefix, ids.parse_ulid(args.ulid))
    found = finding.entries(ctx, vault, keyring if args.name is not None else None)
    bid = finding.pick(found, vault, prefix, latest=args.latest, before=args.before,
                       name=args.name)
    what = (f"named {args.name!r}" if args.name is not None else
            f"made before {args.before.isoformat()}" if args.before is not None else "")
    log.info("the newest archive %s: %s", what or "sealed", bid)   # which one was picked
    return bid


def restore_chain(ctx, bid: BackupId, keyring, command: list[str], restore_class) -> int:
    """Each archive of ``bid``'s chain into its own run of ``command``;
    stops at the first failure, naming the archive."""
    links = finding.chain_of(finding.entries(ctx, bid.vault), bid)
    for n, entry in enumerate(links, 1):
        where = f"archive {n} of {len(links)} ({entry.bid})"
        log.info("restoring %s into %s", where, command[0])
        try:
            proc = subprocess.Popen(command, stdin=subprocess.PIPE)
        except OSError as exc:
            raise errors.ProducerError(f"cannot run {command[0]}: {exc.strerror}") from None
        try:
            restore_class(ctx, entry.bid, keyring).run(proc.stdin)
            proc.stdin.close()
        except (BrokenPipeError, errors.OutputClosedError):   # (the latter: from decryption)
            _close(proc)
            raise errors.ProducerError(f"{command[0]} stopped reading {where} "
                                       f"(exit status {proc.wait()}); chain not restored") \
                from None
        except BaseException as exc:
            _close(proc, stop=True)
            if isinstance(exc, BaseExceptionGroup):
                exc = errors.unwrap(exc)
            if isinstance(exc, errors.Error):
                raise type(exc)(f"{exc} (chain stopped at {where})") from None
            raise
        status = proc.wait()
        if status != 0:
            raise errors.ProducerError(f"{command[0]} failed on {where} with exit status "
                                       f"{status}; the chain stops there")
    return 0


def _close(proc: subprocess.Popen, stop: bool = False) -> None:
    """Stop the receiving command: what it got was not the whole archive."""
    if stop:
        proc.terminate()
    try:
        proc.stdin.close()
    except BrokenPipeError:
        pass
    proc.wait()
