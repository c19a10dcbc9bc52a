"""cryophile check: are the archives in the vault whole?  Without restoring."""

from __future__ import annotations

import json
import logging
import os
import sys

from .. import check, errors, ids, progress
from ..markcache import MarkCache
from .common import Context

log = logging.getLogger("cryophile")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "check", help="check archives in the vault without restoring them",
        description="Check the archives of a vault, a prefix or one archive without the "
                    "secret key and without a thaw: every fragment present with the size "
                    "chunk.0 records and in the storage class expected, no stray objects, "
                    "chains of incrementals unbroken.  --read-data also thaws, downloads "
                    "and checks every fragment's SHA-256 (still no secret key); with "
                    "--decrypt -k KEY it also decrypts through the MDC, writing nothing.  "
                    "One line per problem on stdout; the exit status is the worst: 9 damaged, "
                    "8 missing or truncated, 10 storage class or vault failure.")
    p.add_argument("target", metavar="VAULT[/PREFIX][/ULID]",
                   help="a vault (UUID or alias), optionally a prefix, optionally one archive")
    p.add_argument("--read-data", action="store_true",
                   help="thaw and download every fragment and check its SHA-256")
    p.add_argument("--decrypt", action="store_true",
                   help="with --read-data: also decrypt and decompress (needs -k), "
                        "writing nothing")
    p.add_argument("-k", "--keyring", action="append", default=[], metavar="KEYRING",
                   help="secret key file(s), for --decrypt")
    p.add_argument("-P", "--pass-fd", type=int, metavar="FD",
                   help="read the secret key's passphrase from file descriptor FD")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document (archives checked, problems) on stdout")
    p.set_defaults(run=run)


def parse_target(ctx: Context, text: str) -> tuple[str, str, str | None]:
    """VAULT[/PREFIX][/ULID] → (vault uuid, prefix, ulid or None)."""
    vault_text, _, rest = text.strip("/").partition("/")
    vault = ctx.vault(vault_text).uuid
    parts = rest.split("/") if rest else []
    ulid = None
    if parts and ids.ULID_RE.match(parts[-1].upper()):
        ulid = ids.parse_ulid(parts.pop())
    return vault, ids.parse_prefix("/".join(parts)), ulid


def run(args) -> int:
    if args.decrypt and not args.read_data:
        raise errors.UsageError("--decrypt goes with --read-data")
    ctx = Context(args)
    keyring = None
    if args.decrypt:
        from .common import secret_keys
        keyring = secret_keys(args.keyring, args.pass_fd)
    elif args.keyring:
        raise errors.UsageError("-k is for --read-data --decrypt: check needs no key otherwise")
    try:
        vault, prefix, ulid = parse_target(ctx, args.target)
        problems, checked = _check(ctx, vault, prefix, ulid, args, keyring)
    finally:
        ctx.close()
    if args.json:
        json.dump({"checked": checked, "problems": [p.to_json() for p in problems],
                   "exit": check.exit_code(problems)}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        for p in problems:
            sys.stdout.write(f"{p}\n")
        log.info("checked %d archive(s): %d problem(s)", len(checked), len(problems))
    return check.exit_code(problems)


def _check(ctx, vault, prefix, ulid, args, keyring):
    conf = ctx.vault(vault)
    store = ctx.store(vault)
    context = check.scan(store, vault, prefix)           # the chains' other links
    archives = {k: a for k, a in context.items() if ulid is None or a.bid.ulid == ulid}
    where = f"{vault}/{prefix}" if prefix else vault
    if not archives:
        what = f"archive {where}/{ulid}" if ulid else f"no archive under {where}"
        raise errors.NotFoundError(f"{what} not found in {store.url}" if ulid
                                   else f"{what} in {store.url}")
    checker = check.Checker(
        store, conf.storage_class, restore=(conf.restore_tier, conf.restore_days),
        queued=lambda bid: os.path.isdir(ctx.spool.dir("freeze", bid)),
        cache=MarkCache(ctx.spool), spool=ctx.spool, read_data=args.read_data,
        widen=(lambda: (check.scan(store, vault).values(),
                        check.queued_entries(ctx.spool, vault))) if prefix else None)
    checker.metadata(archives, context.values(), check.queued_entries(ctx.spool, vault, prefix))
    if args.read_data:
        total = sum(f.size for a in checker.checked if a.clear for f in a.clear.fragments)
        bar = progress.Transfers("check", "download", total or None)   # on a terminal
        try:
            for archive in checker.checked:
                if keyring is None:
                    checker.read_data(archive)
                else:
                    ctx.spool.ensure()
                    checker.decrypt(archive, keyring.decrypt_session_key, ctx.spool.root)
        finally:
            bar.finish()
    return checker.problems, [str(a.bid) for a in checker.checked]
