"""cryophile rm: delete archives from their vault and the spool."""

from __future__ import annotations

import logging
import sys

from .. import errors, ids, remove
from .common import Context

log = logging.getLogger("cryophile")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "rm", help="delete archives",
        description="Delete archives from their vault and the spool: chunk.0 first (from "
                    "then on the archive is no longer listed), then its fragments.  Running "
                    "rm again after an interruption finishes the job.  An archive still "
                    "being written or frozen is refused.  Needs delete (and list) permission "
                    "on the vault: not the backup host's write-only identity.")
    p.add_argument("targets", nargs="+", metavar="VAULT/PREFIX/ULID",
                   help="archive(s) to delete; VAULT may be an alias")
    p.set_defaults(run=run)


def archive_id(ctx: Context, text: str) -> ids.BackupId:
    """VAULT/PREFIX/ULID with VAULT a UUID or an alias."""
    vault, _, rest = text.strip("/").partition("/")
    if not rest:
        raise errors.UsageError(f"{text!r} is not a backup id (VAULT/PREFIX/ULID)")
    return ids.BackupId.parse(f"{ctx.vault(vault).uuid}/{rest}")


def run(args) -> int:
    ctx = Context(args)
    failed: errors.Error | None = None
    try:
        bids = [archive_id(ctx, text) for text in args.targets]
        for bid in bids:
            try:
                remove.remove(ctx.spool, ctx.store(bid.vault), bid)
            except errors.Error as exc:
                log.error("%s", exc)
                failed = failed or exc
                continue
            sys.stdout.write(f"removed {bid}\n")
            sys.stdout.flush()
    finally:
        ctx.close()
    return failed.exit_code if failed else 0
