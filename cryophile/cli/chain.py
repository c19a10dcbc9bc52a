"""cryophile chain: the archives to receive, in order, to restore one."""

from __future__ import annotations

import json
import sys

from .. import chains, finding
from .common import Context
from .ls import row, write_table


def add_parser(sub) -> None:
    p = sub.add_parser(
        "chain", help="the chain of incrementals an archive needs",
        description="List the archives to receive, in order, full backup first, to "
                    "restore VAULT/PREFIX/ULID: a zfs incremental follows the archive of "
                    "its source snapshot (fromguid = toguid), a btrfs one the archive of "
                    "its parent subvolume (clone uuid and ctransid), any archive the one "
                    "named by backup --parent.  No secret key needed.  A broken chain is "
                    "an error naming the missing link (exit status 7).")
    p.add_argument("target", metavar="VAULT/PREFIX/ULID", help="the archive to restore")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="a JSON array, as ls --json")
    fmt.add_argument("-H", dest="scripted", action="store_true",
                     help="for scripts: no header, tab-separated columns, sizes in bytes")
    p.set_defaults(run=run)


def run(args) -> int:
    ctx = Context(args)
    try:
        bid = finding.backup_id(ctx.config, args.target)
        found = finding.entries(ctx, bid.vault)
        links = chains.parents(found)
        rows = [row(e, links.get(e.bid.key)) for e in finding.chain_of(found, bid)]
    finally:
        ctx.close()
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        write_table(rows, full_ids=True, scripted=args.scripted)
    return 0
