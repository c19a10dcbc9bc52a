"""The thaw ledger and budgets, on a spool in a temporary directory."""

import datetime
import multiprocessing
import tempfile

import pytest
from hypothesis import given, settings, strategies as st

from cryophile import config, errors
from cryophile.ids import BackupId
from cryophile.ledger import ALL, Budget, spent
from cryophile.plan import Item, Plan
from cryophile.spool import Spool

V1 = "0b8c3a7e-5a1d-4f7e-9a53-3f1c2d4e5f60"
V2 = "1b8c3a7e-5a1d-4f7e-9a53-3f1c2d4e5f60"
NOW = datetime.datetime(2026, 11, 26, 12, tzinfo=datetime.timezone.utc)
ULIDS = ["01JD0000000000000000000000", "01JD0000000000000000000001"]


def plan_of(cfg, vault=V1, ulid=ULIDS[0], sizes=(1000,), cls="GLACIER", tier="Standard"):
    p = Plan(tier, 1, cfg.prices)
    bid = BackupId(vault, "", ulid)
    p.archives.append(bid)
    p.thaw = [Item(bid, n, size, cls) for n, size in enumerate(sizes, 1)]
    return p


def test_daily_budget_refuses_whole_thaws_and_charges_each_fragment_once(tmp_path):
    cfg = config.parse({"thaw_budget_daily": "3000"})
    budget = Budget(Spool(str(tmp_path)), cfg)
    budget.reserve(plan_of(cfg, sizes=(1000, 1000)), now=NOW)
    budget.reserve(plan_of(cfg, sizes=(1000, 1000)), now=NOW)    # charged already: free
    with pytest.raises(errors.BudgetError, match="thaw_budget_daily.*--approve"):
        budget.reserve(plan_of(cfg, ulid=ULIDS[1], sizes=(600, 600)), now=NOW)
    data = budget.ledger.snapshot()
    assert spent(data, ALL, NOW) == (2000, pytest.approx(2000 / 1e9 * 0.01 + 2 * 0.05 / 1000))
    budget.reserve(plan_of(cfg, ulid=ULIDS[1], sizes=(600, 600)), approved=True, now=NOW)
    assert spent(budget.ledger.snapshot(), ALL, NOW)[0] == 3200
    tomorrow = NOW + datetime.timedelta(days=1)
    assert spent(budget.ledger.snapshot(), ALL, tomorrow)[0] == 0


def test_monthly_and_per_vault_budgets(tmp_path):
    cfg = config.parse({"thaw_budget_monthly": 1.0,
                        "vault": {V2: {"thaw_budget_daily": "1000"}}})
    budget = Budget(Spool(str(tmp_path)), cfg)
    budget.reserve(plan_of(cfg, vault=V1, sizes=(5000,)), now=NOW)
    with pytest.raises(errors.BudgetError, match=f"thaw_budget_daily of vault {V2}"):
        budget.reserve(plan_of(cfg, vault=V2, sizes=(5000,)), now=NOW)
    # 100 Expedited requests cost 1.00 USD: with what was spent, over the month's budget
    expensive = plan_of(cfg, ulid=ULIDS[1], sizes=[1] * 100, tier="Expedited")
    with pytest.raises(errors.BudgetError, match="thaw_budget_monthly"):
        budget.reserve(expensive, now=NOW)
    next_month = NOW + datetime.timedelta(days=10)
    budget.reserve(plan_of(cfg, ulid=ULIDS[1], sizes=[1] * 90, tier="Expedited"),
                   now=next_month)


def test_a_zero_budget_needs_approval_for_any_thaw_but_not_for_nothing(tmp_path):
    cfg = config.parse({"thaw_budget_daily": 0})
    budget = Budget(Spool(str(tmp_path)), cfg)
    budget.reserve(plan_of(cfg, sizes=()), now=NOW)
    with pytest.raises(errors.BudgetError):
        budget.reserve(plan_of(cfg, sizes=(1,)), now=NOW)


def test_a_charge_expires_with_its_restored_copy(tmp_path):
    cfg = config.parse({})
    budget = Budget(Spool(str(tmp_path)), cfg)
    budget.reserve(plan_of(cfg), now=NOW)
    budget.reserve(plan_of(cfg), now=NOW + datetime.timedelta(days=1))
    assert spent(budget.ledger.snapshot(), ALL, NOW)[0] == 1000
    budget.reserve(plan_of(cfg), now=NOW + datetime.timedelta(days=3))
    assert budget.ledger.snapshot()["days"][(NOW + datetime.timedelta(days=3))
                                           .strftime("%Y-%m-%d")][ALL]["bytes"] == 1000


def _reserve_many(root: str, first: int) -> int:
    cfg = config.parse({"thaw_budget_daily": "50000"})
    budget = Budget(Spool(root), cfg)
    granted = 0
    for i in range(first, first + 40):
        ulid = f"01JD{i:022d}"
        try:
            budget.reserve(plan_of(cfg, ulid=ulid, sizes=(1000,)), now=NOW)
            granted += 1
        except errors.BudgetError:
            pass
    return granted


@pytest.mark.timeout(120)
def test_concurrent_processes_never_pass_the_budget_together(tmp_path):
    with multiprocessing.get_context("fork").Pool(3) as pool:
        granted = pool.starmap(_reserve_many, [(str(tmp_path), k * 100) for k in range(3)])
    assert sum(granted) == 50
    budget = Budget(Spool(str(tmp_path)), config.parse({}))
    assert spent(budget.ledger.snapshot(), ALL, NOW)[0] == 50000


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.lists(st.integers(1, 5000), max_size=4)),
                max_size=12),
       st.integers(1, 20000))
def test_unapproved_thaws_never_pass_the_daily_budget(thaws, limit):
    cfg = config.parse({"thaw_budget_daily": limit})
    with tempfile.TemporaryDirectory() as root:
        budget = Budget(Spool(root), cfg)
        for k, sizes in thaws:
            try:
                budget.reserve(plan_of(cfg, ulid=f"01JD{k:022d}", sizes=sizes), now=NOW)
            except errors.BudgetError:
                pass
        assert spent(budget.ledger.snapshot(), ALL, NOW)[0] <= limit
