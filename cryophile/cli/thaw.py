"""cryophile thaw: serve thaw requests (restore from Glacier, download)."""

from __future__ import annotations

import logging

import trio

from .. import errors, progress, thawprogress
from ..freeze import backoff_loop
from ..ledger import Guard
from ..thaw import DaemonLock, Thawer
from . import thawplan
from .common import Context, add_limit_option, run_service

log = logging.getLogger("cryophile.thaw")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "thaw", help="restore requested fragments from cold storage into the restore queue",
        description="Serve the spool's thaw queue: ask the vault to restore archived "
                    "fragments (the vault's restore_tier and restore_days), wait for them, "
                    "download and verify them into the restore queue.  Keeps watching "
                    "unless --once, retrying failures with exponential backoff.  Needs no "
                    "secret key.")
    p.add_argument("--once", action="store_true",
                   help="serve the requests queued now, then exit")
    p.add_argument("--plan", metavar="VAULT[/PREFIX][/ULID]",
                   help="print what thawing these archives would request, take and cost; "
                        "request nothing")
    thawplan.add_arguments(p)
    add_limit_option(p, "download", "download")
    p.set_defaults(run=run)


def run(args) -> int:
    if args.plan:
        return thawplan.run(args)
    ctx = Context(args)
    ctx.spool.ensure()
    lock = DaemonLock(ctx.spool)
    if not args.once and not lock.acquire():
        raise errors.SpoolError(f"another `cryophile thaw` is already serving {ctx.spool.root}")
    guard = Guard(ctx.spool, ctx.config, approve_hint="`cryophile restore --approve` of it")
    thawer = Thawer(ctx.spool, ctx.store, lambda v: thawplan.settings(ctx, args, v),
                    guard=guard, progress_every=thawprogress.every())

    async def serve():
        if args.once:
            return await thawer.run(once=True)
        await backoff_loop(lambda: thawer.run(once=True), "thaw",
                           lambda: trio.sleep(thawer.poll_min), logger=log)
    thawer.bar = progress.Transfers("thaw", "download")
    try:
        run_service(serve)
    finally:
        thawer.bar.finish()
        lock.release()
        ctx.close()
    return 0
