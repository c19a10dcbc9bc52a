"""cryophile rm: delete archives from their vault and the spool."""

from __future__ import annotations

import logging
import sys

from .. import chains, errors, ids, remove
from .common import Context

log = logging.getLogger("cryophile")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "rm", help="delete archives",
        description="Delete archives from their vault and the spool: chunk.0 first (from "
                    "then on the archive is no longer listed), then its fragments.  Running "
                    "rm again after an interruption finishes the job.  An archive still "
                    "being written or frozen is refused, and so is one that another "
                    "archive's chain of incrementals needs as its base (also a backup still "
                    "being written with --parent): the error names them; -R deletes them "
                    "too, --force breaks their chains.  Needs delete (and list) permission "
                    "on the vault: not the backup host's write-only identity.")
    p.add_argument("targets", nargs="+", metavar="VAULT/PREFIX/ULID",
                   help="archive(s) to delete; VAULT may be an alias")
    how = p.add_mutually_exclusive_group()
    how.add_argument("-R", dest="recursive", action="store_true",
                     help="also delete every archive whose chain needs one of them (its "
                          "incrementals, theirs, …), newest first")
    how.add_argument("-f", "--force", action="store_true",
                     help="delete them even though other archives' chains need them (those "
                          "can then no longer be received)")
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
        bids, needs = _with_dependants(ctx, bids, args)
        gone_wrong: set[str] = set()
        # an archive's dependants include its children's: fewer first is children first
        for bid in sorted(bids, key=lambda b: (len(needs.get(str(b), ())), _desc(b.ulid))):
            blocked = needs.get(str(bid), set()) & gone_wrong
            try:
                if blocked:
                    raise remove.DependantsError(
                        f"{bid} not removed: {_names(blocked)}, which needs it, was not removed")
                remove.remove(ctx.spool, ctx.store(bid.vault), bid)
            except errors.Error as exc:
                log.error("%s", exc)
                failed = failed or exc
                gone_wrong.add(str(bid))
                continue
            sys.stdout.write(f"removed {bid}\n")
            sys.stdout.flush()
    finally:
        ctx.close()
    return failed.exit_code if failed else 0


def _with_dependants(ctx: Context, bids: list[ids.BackupId], args
                     ) -> tuple[list[ids.BackupId], dict[str, set[str]]]:
    """The archives to delete (with -R, their dependants too) and, for each,
    the ids (VAULT/PREFIX/ULID) of the archives whose chains need it.  Without
    -R or --force, DependantsError when an archive not named needs one that is."""
    todo = {str(b): b for b in bids}
    needs: dict[str, set[str]] = {}
    for vault in dict.fromkeys(b.vault for b in bids):
        entries = remove.chain_entries(ctx.spool, ctx.store(vault), vault)    # all prefixes
        by_key = {e.bid.key: e.bid for e in entries}

        def dependants(bid: ids.BackupId) -> set[str]:
            return {str(by_key[k]) for k in chains.dependents(entries, bid.key)}
        for bid in [b for b in bids if b.vault == vault]:
            needs[str(bid)] = dependants(bid)
            if args.recursive:
                for key in needs[str(bid)]:
                    dep = todo.setdefault(key, ids.BackupId.parse(key))
                    needs.setdefault(key, dependants(dep))
    for bid in bids:
        others = needs[str(bid)] - set(todo)
        if not others:
            continue
        keys = {ids.BackupId.parse(o).key for o in others}
        if not args.force:
            raise remove.DependantsError(
                f"{bid} is the base of {remove.names(keys, bid)}: not removed (-R "
                "removes those too, --force breaks their chains)")
        log.warning("removing %s breaks the chain of %s", bid, remove.names(keys, bid))
    return list(todo.values()), needs


def _desc(ulid: str) -> tuple:
    return tuple(-ord(c) for c in ulid)


def _names(ulids: set[str]) -> str:
    shown = sorted(ulids)
    more = f" and {len(shown) - 5} more" if len(shown) > 5 else ""
    return ", ".join(shown[:5]) + more
