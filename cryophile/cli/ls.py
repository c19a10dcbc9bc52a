"""cryophile ls: archives in the spool and in the vaults."""

from __future__ import annotations

import logging
import sys

from .. import catalog, ids
from .common import Context, escape, human, passphrase_reader

log = logging.getLogger("cryophile")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "ls", help="list archives",
        description="List the archives of a vault (or of every configured vault and every "
                    "vault in the spool): backup id, creation time, plaintext size, "
                    "fragments and state.  Names are encrypted: give the secret key with "
                    "-k to show them.")
    p.add_argument("target", nargs="?", metavar="VAULT[/PREFIX]",
                   help="a vault (UUID or alias), optionally with a prefix")
    p.add_argument("-k", "--keyring", action="append", default=[], metavar="KEYRING",
                   help="secret key file(s), to show archive names")
    p.add_argument("-P", "--pass-fd", type=int, metavar="FD",
                   help="read the secret key's passphrase from file descriptor FD")
    p.set_defaults(run=run)


def run(args) -> int:
    ctx = Context(args)
    if args.target:
        vault_text, _, prefix = args.target.partition("/")
        vaults = [ctx.vault(vault_text).uuid]
        prefix = ids.parse_prefix(prefix)
    else:
        vaults = sorted(set(ctx.config.vaults) | catalog.spool_vaults(ctx.spool))
        prefix = ""
    keyring = None
    if args.keyring:
        from .. import keys
        keyring = keys.load_secret_keys(args.keyring, passphrase_reader(args.pass_fd))
    out = sys.stdout
    out.write(f"{'ARCHIVE':<40} {'CREATED':<21} {'SIZE':>10} {'FRAGS':>5} {'STATE':<10} NAME\n")
    try:
        for vault in vaults:
            for entry in catalog.list_archives(ctx.spool, ctx.store(vault), vault, prefix,
                                               keyring):
                out.write(f"{escape(entry.bid.key if args.target else str(entry.bid)):<40} "
                          f"{entry.created[:19] + 'Z':<21} {_size(entry.size):>10} "
                          f"{entry.fragments if entry.fragments is not None else '-':>5} "
                          f"{entry.state:<10} {escape(entry.name or '')}\n")
    finally:
        ctx.close()
    return 0


def _size(n: int | None) -> str:
    return "-" if n is None else human(n)
