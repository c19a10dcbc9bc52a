"""cryophile prune: delete the archives a retention policy does not keep."""

from __future__ import annotations

import argparse
import datetime
import logging
import sys

from .. import chains, check, errors, remove, retention
from ..markcache import MarkCache
from ..ids import BackupId, ulid_time
from .check import parse_target
from .common import Context, human, positive_int

log = logging.getLogger("cryophile")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "prune", help="delete archives a retention policy does not keep",
        description="Apply a retention policy (restic's forget rules, to each prefix on its "
                    "own, by the archives' ULID times in UTC) and delete the archives it "
                    "does not keep, printing the plan: every archive with keep, delete or "
                    "held and why.  An archive that a kept archive's chain of incrementals "
                    "needs is held, and so is one whose objects are younger than their "
                    "storage class's minimum storage duration (unless "
                    "--allow-early-delete).  At least one --keep option is required.")
    p.add_argument("target", metavar="VAULT[/PREFIX]",
                   help="a vault (UUID or alias), optionally a prefix (and those under it)")
    for rule, what in (("last", "the N newest archives"),
                       ("hourly", "the newest archive of each of the N newest hours"),
                       ("daily", "… of each of the N newest days"),
                       ("weekly", "… of each of the N newest ISO weeks"),
                       ("monthly", "… of each of the N newest months"),
                       ("yearly", "… of each of the N newest years")):
        p.add_argument(f"--keep-{rule}", type=positive_int, default=0, metavar="N",
                       help=f"keep {what}")
    p.add_argument("--keep-within", type=_duration, metavar="DURATION",
                   help="keep every archive made within DURATION (e.g. 1y6m, 30d, 12h) "
                        "before the prefix's newest")
    p.add_argument("-n", "--dry-run", action="store_true",
                   help="print the plan, delete nothing")
    p.add_argument("--allow-early-delete", action="store_true",
                   help="also delete archives younger than their storage class's minimum "
                        "storage duration (the plan shows the charge)")
    p.set_defaults(run=run)


def _duration(text: str) -> retention.Duration:
    try:
        return retention.Duration.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args) -> int:
    policy = retention.Policy(args.keep_last, args.keep_hourly, args.keep_daily,
                              args.keep_weekly, args.keep_monthly, args.keep_yearly,
                              args.keep_within)
    if policy.empty:
        raise errors.UsageError("prune needs at least one --keep-… option: without one it "
                                "would delete every archive")
    ctx = Context(args)
    try:
        vault, prefix, ulid = parse_target(ctx, args.target)
        if ulid:
            raise errors.UsageError("prune takes VAULT[/PREFIX]; to delete one archive use "
                                    "cryophile rm")
        store = ctx.store(vault)
        items, others, entries = _items(ctx, store, vault, prefix)
        links = chains.bases(list(entries.values()))    # by key: PREFIX/ULID
        decisions = retention.plan(
            items, policy, datetime.datetime.now(datetime.timezone.utc),
            lambda item: links.get(retention.item_key(item)),
            retention.Prices.from_table(ctx.config.prices),
            allow_early_delete=args.allow_early_delete, others=others)
        _print(vault, decisions, ctx.config.prices.currency)
        if args.dry_run:
            return 0
        return _delete(ctx, store, vault, decisions)
    finally:
        ctx.close()


def _items(ctx, store, vault: str, prefix: str):
    """Archives of VAULT/PREFIX as retention items: those in the vault (whole:
    with chunk.0) and sealed ones still queued in the spool or being written;
    the vault's archives under other prefixes, which are not planned but hold
    their bases (a chain may cross prefixes); and chain entries by key
    (PREFIX/ULID: two prefixes may hold the same ULID).
    One listing of the whole vault; chunk.0s come from the spool's cache."""
    items: dict[str, retention.Item] = {}
    entries: dict[str, check.Link] = {}
    archives = [a for a in check.scan(store, vault).values() if 0 in a.objects]
    marks = check.fetch_marks(store, archives, cache=MarkCache(ctx.spool))  # as ls does
    for archive in archives:
        failure = marks[archive.bid.key]
        if failure is not None:
            # the base it needs is not known, and its fragments may still be
            # recovered by hand: nothing is deleted on a guess
            bid = archive.bid
            raise type(failure)(f"chunk.0 of {bid} in the vault: {failure.message}; prune "
                                "cannot tell which archive it needs, so it deletes nothing "
                                f"(`cryophile check {bid}` says more, `cryophile rm {bid}` "
                                "removes the archive)") from None
        made = ulid_time(archive.bid.ulid)
        objects = tuple(retention.Stored(o.storage_class, o.size, o.modified or made)
                        for o in archive.objects.values())
        items[archive.bid.key] = retention.Item(archive.bid.ulid, archive.bid.prefix, made,
                                                objects, label=_label(archive.bid, prefix),
                                                incomplete=not archive.clear.complete)
        entries[archive.bid.key] = check.Link(archive.bid, archive.clear.stream,
                                               archive.clear.parent)
    for q in check.queued_entries(ctx.spool, vault):
        if q.bid.key not in items:
            items[q.bid.key] = retention.Item(q.bid.ulid, q.bid.prefix, ulid_time(q.bid.ulid),
                                              queued=True, label=_label(q.bid, prefix),
                                              pending=q.stored or 0)
            entries[q.bid.key] = q
    for w in check.writing_entries(ctx.spool, vault):
        if w.bid.key not in items:
            items[w.bid.key] = retention.Item(w.bid.ulid, w.bid.prefix, ulid_time(w.bid.ulid),
                                              queued=True, writing=True,
                                              label=_label(w.bid, prefix))
            entries[w.bid.key] = w
    mine = [i for i in items.values() if _under(i.prefix, prefix)]
    others = [i for i in items.values() if not _under(i.prefix, prefix)]
    return mine, others, entries


def _under(prefix: str, wanted: str) -> bool:
    return not wanted or prefix == wanted or prefix.startswith(wanted + "/")


def _label(bid: BackupId, prefix: str) -> str:
    """How a plan names an archive: by ULID within the pruned prefix, else in full."""
    return "" if _under(bid.prefix, prefix) else str(bid)


def _print(vault: str, decisions: list[retention.Decision], currency: str) -> None:
    out = sys.stdout
    counts = {retention.KEEP: 0, retention.HELD: 0, retention.DELETE: 0}
    freed = charge = 0.0
    for d in decisions:
        counts[d.action] += 1
        bid = BackupId(vault, d.item.prefix, d.item.ulid)
        why = ", ".join(d.reasons)
        if d.action == retention.DELETE:
            freed += d.item.size
            charge += d.charge
            why = ", ".join(filter(None, [*d.reasons, d.early]))
        created = d.item.time.strftime("%Y-%m-%dT%H:%M:%SZ")
        out.write(f"{d.action:<6} {str(bid):<40} {created} {human(d.item.size):>10}"
                  f"{'  ' + why if why else ''}\n")
    tail = (f", early deletion charges {retention.money(charge)} {currency}"
            if charge else "")
    out.write(f"{counts['keep']} kept, {counts['held']} held, {counts['delete']} to delete "
              f"({human(freed)}){tail}\n")
    out.flush()


def _delete(ctx, store, vault: str, decisions: list[retention.Decision]) -> int:
    """Newest first, so that an interrupted prune never leaves an archive
    whose base is gone while it stays."""
    doomed = sorted((d.item for d in decisions if d.action == retention.DELETE),
                    key=lambda i: i.ulid, reverse=True)
    failed: errors.Error | None = None
    for item in doomed:
        bid = BackupId(vault, item.prefix, item.ulid)
        try:
            remove.remove(ctx.spool, store, bid)
        except errors.Error as exc:
            log.error("%s", exc)
            failed = failed or exc
            if isinstance(exc, errors.StoreError):
                break                 # the vault refuses: the others would fail alike
    return failed.exit_code if failed else 0
