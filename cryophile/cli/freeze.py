"""cryophile freeze: upload the freeze queue into the vaults."""

from __future__ import annotations

from .. import ids
from ..freeze import Freezer
from ..spool import FreezeDaemonLock
from .common import Context, add_limit_option, run_service


def add_parser(sub) -> None:
    p = sub.add_parser(
        "freeze", help="upload queued fragments into their vaults",
        description="Upload whole fragments from the spool's freeze queue into their vaults "
                    "(S3 with the vault's storage class, or a local directory) and remove "
                    "each local copy once stored.  Keeps watching the queue unless --once, "
                    "retrying failures with exponential backoff.  Several freeze processes "
                    "may serve one spool: each archive is frozen by one at a time.  An "
                    "object already in the vault is never overwritten.")
    p.add_argument("--once", action="store_true",
                   help="drain the queue once and exit (default: keep watching); a "
                        "failing vault does not stop the others, the exit code reports it")
    p.add_argument("-v", "--vault", metavar="VAULT", help="only this vault")
    p.add_argument("-p", "--prefix", metavar="PREFIX", help="only this prefix (with -v)")
    p.add_argument("-u", "--ulid", metavar="ULID", help="only this archive (with -v and -p)")
    add_limit_option(p, "upload", "upload")
    p.set_defaults(run=run)


def run(args) -> int:
    ctx = Context(args)
    select = selector(ctx, args)
    ctx.spool.ensure()
    freezer = Freezer(ctx.spool, ctx.store, lambda v: ctx.vault(v).storage_class, select,
                      vault=ctx.vault(args.vault).uuid if args.vault else None)
    freezer.progress = True
    # A daemon that freezes everything tells backups so (they wait for it
    # instead of freezing inline); a selective one would leave them waiting.
    daemon = FreezeDaemonLock(ctx.spool)
    if not args.once and not (args.vault or args.prefix or args.ulid):
        daemon.hold()
    try:
        run_service(freezer.run, args.once)
    finally:
        daemon.release()
        ctx.close()
    return 0


def selector(ctx: Context, args):
    """A filter on backup ids from -v/-p/-u."""
    vault = ctx.vault(args.vault).uuid if args.vault else None
    prefix = ids.parse_prefix(args.prefix) if args.prefix else None
    ulid = ids.parse_ulid(args.ulid) if args.ulid else None
    return lambda bid: ((vault is None or bid.vault == vault)
                        and (prefix is None or bid.prefix == prefix)
                        and (ulid is None or bid.ulid == ulid))
