"""cryophile ls: archives in the spool and in the vaults."""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import json
import logging
import sys

from .. import catalog, chains, errors, ids
from .check import parse_target
from .common import Context, escape, human, passphrase_reader, timestamp

log = logging.getLogger("cryophile")

COLUMNS = ("ARCHIVE", "CREATED", "SIZE", "FRAGS", "STATE", "STORED", "CLASS", "KIND",
           "PARENT", "NAME")
RIGHT = {"SIZE", "STORED", "FRAGS"}
VAULTS = 4          # vaults listed at once (one slow or unreachable vault delays no other)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "ls", help="list archives",
        description="List the archives of a vault (or of every configured vault and every "
                    "vault in the spool): backup id, creation time, plaintext and stored "
                    "size, fragments, storage class, state, stream kind and the parent an "
                    "incremental is received on.  Names are encrypted: give the secret key "
                    "with -k to show them (and the snapshot of zfs and btrfs streams).  "
                    "chunk.0s are cached in the spool, so listing again costs only LIST "
                    "requests.")
    p.add_argument("target", nargs="?", metavar="VAULT[/PREFIX][/ULID]",
                   help="a vault (UUID or alias), optionally with a prefix; with a ULID, "
                        "only that archive (as ls prints it; exit 7 when there is none)")
    p.add_argument("-k", "--keyring", action="append", default=[], metavar="KEYRING",
                   help="secret key file(s), to show archive names")
    p.add_argument("-P", "--pass-fd", type=int, metavar="FD",
                   help="read the secret key's passphrase from file descriptor FD")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true",
                     help="a JSON array of archives, sizes in bytes")
    fmt.add_argument("-H", dest="scripted", action="store_true",
                     help="for scripts: no header, tab-separated columns, sizes in bytes")
    p.add_argument("--since", metavar="TIME", type=timestamp,
                   help="only archives created at or after TIME (ISO 8601 or epoch seconds)")
    p.add_argument("--until", metavar="TIME", type=timestamp,
                   help="only archives created before TIME")
    p.set_defaults(run=run)


def run(args) -> int:
    with _no_cyclic_gc():
        return _run(args)


@contextlib.contextmanager
def _no_cyclic_gc():
    """A listing makes some ten objects per archive that all live until it
    ends, and no garbage in cycles: the cyclic collector's passes over them
    took a quarter of a warm listing of 10,000 archives.  Reference
    counting still frees everything else.  At the end what was made is
    moved out of the collector's sight (``gc.freeze``), else its first
    pass would walk all of it at once."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.freeze()
            gc.enable()


def _run(args) -> int:
    ctx = Context(args)
    only = None                             # VAULT/PREFIX/ULID, as ls prints it: that one
    if args.target:
        vault, prefix, only = parse_target(ctx, args.target)
        vaults = [vault]
    else:
        vaults = sorted(set(ctx.config.vaults) | catalog.spool_vaults(ctx.spool))
        prefix = ""
    keyring = None
    if args.keyring:
        from .. import keys
        keyring = keys.load_secret_keys(args.keyring, passphrase_reader(args.pass_fd))
    rows, failure, problems = [], None, []
    try:
        stores = {}
        for vault in vaults:                # made here, used in the threads
            try:
                stores[vault] = ctx.store(vault)
            except errors.Error as exc:
                stores[vault] = exc

        def listing(vault):
            if isinstance(stores[vault], errors.Error):
                return stores[vault]
            try:
                entries = catalog.list_archives(ctx.spool, stores[vault], vault, prefix,
                                                keyring, problems)
                return entries, _parents(ctx, stores[vault], vault, prefix, entries)
            except errors.Error as exc:
                return exc
        # with a key, one vault at a time: unlocking it may ask for a passphrase
        workers = 1 if keyring is not None else max(1, min(len(vaults), VAULTS))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for vault, found in zip(vaults, pool.map(listing, vaults)):
                if isinstance(found, errors.Error):      # show the other vaults all the same
                    log.error("cannot list vault %s: %s", vault, found)
                    failure = failure or found
                    continue
                entries, links = found
                rows += [row(e, links.get(e.bid.key)) for e in entries
                         if _wanted(e, args) and only in (None, e.bid.ulid)]
    finally:
        ctx.close()
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        write_table(rows, full_ids=not args.target, scripted=args.scripted)
    failure = failure or (problems[0] if problems else None)   # warned about as they came
    if only is not None and not rows and failure is None:
        raise errors.NotFoundError(f"no archive {args.target.strip('/')}")
    return failure.exit_code if failure else 0


def _parents(ctx, store, vault: str, prefix: str, entries: list) -> dict:
    """Each entry's parent; one missing under PREFIX is looked for in the
    whole vault (a base may live under another prefix): one more listing,
    only then."""
    links = chains.parents(entries)
    if prefix and any(isinstance(up, chains.Missing) for up in links.values()):
        whole = catalog.list_archives(ctx.spool, store, vault)
        wider = chains.parents(whole)
        links = {key: wider.get(key, up) for key, up in links.items()}
    return links


def _wanted(entry: catalog.Entry, args) -> bool:
    if args.since is None and args.until is None:
        return True
    when = ids.ulid_time(entry.bid.ulid)
    return ((args.since is None or when >= args.since)
            and (args.until is None or when < args.until))


def row(e: catalog.Entry, parent) -> dict:
    return {
        "id": str(e.bid), "vault": e.bid.vault, "prefix": e.bid.prefix, "ulid": e.bid.ulid,
        "created": e.created, "size": e.size, "stored": e.stored, "fragments": e.fragments,
        "storage_class": e.storage_class, "state": e.state, "kind": e.kind,
        "parent": chains.ulid_of(parent) if isinstance(parent, str) else None,
        "parent_missing": parent.what if isinstance(parent, chains.Missing) else None,
        "name": e.name, "snapshot": e.snapshot,
    }


def _cells(r: dict, full_ids: bool, scripted: bool) -> list[str]:
    def size(n):
        return "-" if n is None else (str(n) if scripted else human(n))
    parent = r["parent"] or ("MISSING" if r["parent_missing"] else "-")
    name = r["name"] or ""
    if r["snapshot"]:
        name = f"{name} ({r['snapshot']})" if name else r["snapshot"]
    return [escape(r["id"] if full_ids else r["id"].split("/", 1)[1]),
            r["created"][:19] + "Z", size(r["size"]),
            "-" if r["fragments"] is None else str(r["fragments"]), r["state"],
            size(r["stored"]), r["storage_class"] or "-", r["kind"], parent, escape(name or "-")]


def write_table(rows: list[dict], *, full_ids: bool, scripted: bool) -> None:
    out = sys.stdout
    cells = [_cells(r, full_ids, scripted) for r in rows]
    if scripted:
        for c in cells:
            out.write("\t".join(c) + "\n")
        return
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(COLUMNS)]
    for c in [list(COLUMNS)] + cells:
        line = [v.rjust(w) if h in RIGHT else v.ljust(w) for v, w, h in zip(c, widths, COLUMNS)]
        out.write("  ".join(line).rstrip() + "\n")
