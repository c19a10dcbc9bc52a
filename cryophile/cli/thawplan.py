"""cryophile thaw --plan VAULT[/PREFIX][/ULID] and restore -n: what a thaw
will request, take and cost, printed before anything is requested."""

from __future__ import annotations

import json
import sys

from .. import config, errors, plan as plans
from ..ledger import Budget, Guard
from .common import Context, positive_int


def add_arguments(p, plan: str = "--plan") -> None:
    """--tier/--days (restore and thaw --plan), --json (with ``plan``, the
    option that prints a plan in that command)."""
    p.add_argument("--tier", choices=config.TIERS,
                   help="restore tier (default: the vault's restore_tier)")
    p.add_argument("--days", type=positive_int, metavar="N",
                   help="days a thawed copy stays readable (default: the vault's restore_days)")
    p.add_argument("--json", action="store_true",
                   help=f"with {plan}: print the plan as JSON")


def add_restore_arguments(p) -> None:
    p.add_argument("-n", "--dry-run", action="store_true",
                   help="print what the restore would thaw, how long it takes and what it "
                        "costs; request nothing, decrypt nothing")
    p.add_argument("--approve", action="store_true",
                   help="thaw even if this passes thaw_budget_daily or thaw_budget_monthly")
    add_arguments(p, "-n")


def settings(ctx: Context, args, vault: str) -> tuple[str, int]:
    """(tier, days): from the command line, else the vault's configuration."""
    v = ctx.vault(vault)
    return (getattr(args, "tier", None) or v.restore_tier,
            getattr(args, "days", None) or v.restore_days)


def new_plan(ctx: Context, args, vault: str) -> plans.Plan:
    tier, days = settings(ctx, args, vault)
    return plans.Plan(tier, days, ctx.config.prices)


def show(plan: plans.Plan, as_json: bool, budget: Budget | None = None) -> None:
    if as_json:
        out = plan.to_json()
        if budget is not None:
            out["budget"] = budget.report()
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(plan.table())
    sys.stdout.flush()


def run(args) -> int:
    """thaw --plan TARGET: every archive under the target (none thawed)."""
    ctx = Context(args)
    try:
        vault, prefix, ulid = plans.parse_target(args.plan, lambda v: ctx.vault(v).uuid)
        store = ctx.store(vault)
        plan = new_plan(ctx, args, vault)
        if ulid is not None:
            bids = [plans.BackupId(vault, prefix, ulid)]
        else:
            bids = plans.find(store, vault, prefix)
            if not bids:        # (a mistyped prefix must not read as "nothing to thaw")
                where = f"{vault}/{prefix}" if prefix else vault
                raise errors.NotFoundError(f"no archive under {where} in {store.url}")
        for bid in bids:
            plans.add_archive(plan, ctx.spool, store, plans.read_clear(ctx.spool, store, bid))
        show(plan, args.json, Budget(ctx.spool, ctx.config))
    finally:
        ctx.close()
    return 0


def guard(ctx: Context) -> Guard:
    return Guard(ctx.spool, ctx.config, approved=getattr(ctx.args, "approve", False))


def reserve(ctx: Context, bid, clear, fragments=None) -> plans.Plan:
    """Charge the thaw a restore is about to ask for to the ledger, or refuse it
    (BudgetError) before anything is requested; the plan."""
    tier, days = settings(ctx, ctx.args, bid.vault)
    if fragments is None:
        fragments = range(1, len(clear.fragments) + 1)
    return guard(ctx).reserve(ctx.store(bid.vault), clear, fragments, tier, days)


def dry_run(ctx: Context, bid, fragments=None) -> int:
    """restore -n: the plan for one archive; no key needed, nothing requested."""
    try:
        store = ctx.store(bid.vault)
        plan = new_plan(ctx, ctx.args, bid.vault)
        plans.add_archive(plan, ctx.spool, store, plans.read_clear(ctx.spool, store, bid),
                          fragments)
        show(plan, ctx.args.json)
    finally:
        ctx.close()
    return 0
