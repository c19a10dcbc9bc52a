"""The price table: shipped defaults, [prices] overrides, budgets in the config."""

import pytest
from hypothesis import given, strategies as st

from cryophile import config, prices
from cryophile.errors import ConfigError
from cryophile.prices import PriceTable

VAULT = "0b8c3a7e-5a1d-4f7e-9a53-3f1c2d4e5f60"


def test_defaults_are_us_east_1_list_prices():
    p = PriceTable()
    assert p.currency == "USD"
    assert p.storage_per_gb_month("GLACIER") == 0.0036
    assert p.storage_per_gb_month("DEEP_ARCHIVE") == 0.00099
    assert p.min_storage_days("GLACIER") == 90
    assert p.min_storage_days("DEEP_ARCHIVE") == 180
    assert p.min_storage_days("STANDARD_IA") == 30
    assert p.min_storage_days("STANDARD") == 0
    assert p.retrieval_per_gb("GLACIER", "Expedited") == 0.03
    assert p.retrieval_per_gb("GLACIER", "Bulk") == 0.0
    assert p.retrieval_per_gb("DEEP_ARCHIVE", "Bulk") == 0.0025
    assert p.retrieval_per_gb("GLACIER_IR", "Bulk") == 0.03   # one price for every tier
    assert p.restore_requests_per_1000("GLACIER", "Expedited") == 10.0
    assert p.restore_requests_per_1000("DEEP_ARCHIVE", "Standard") == 0.10
    assert p.restore_requests_per_1000("STANDARD", "Standard") == 0.0
    assert p.transfer_out_per_gb == 0.09
    assert p.as_dict()["as_of"] == prices.AS_OF and p.as_dict()["source"]


def test_thaw_cost_adds_retrieval_requests_and_transfer():
    p = PriceTable()
    cost = p.thaw_cost("GLACIER", "Standard", 10 * prices.GB, 2000)
    assert cost == pytest.approx(10 * 0.01 + 2 * 0.05)
    cost = p.thaw_cost("GLACIER", "Standard", 10 * prices.GB, 2000, transfer_out=True)
    assert cost == pytest.approx(10 * 0.01 + 2 * 0.05 + 10 * 0.09)


def test_overrides_from_the_config():
    cfg = config.parse({"prices": {
        "currency": "EUR", "transfer_out_per_gb": 0,
        "storage_per_gb_month": {"GLACIER": 0.004},
        "min_storage_days": {"GLACIER": 60},
        "retrieval_per_gb": {"GLACIER": {"Standard": 0.02}, "DEEP_ARCHIVE": 0.5},
        "restore_requests_per_1000": {"GLACIER_IR": {"Bulk": 1}},
    }})
    p = cfg.prices
    assert p.currency == "EUR" and p.transfer_out_per_gb == 0.0
    assert p.storage_per_gb_month("GLACIER") == 0.004
    assert p.storage_per_gb_month("DEEP_ARCHIVE") == 0.00099   # untouched
    assert p.min_storage_days("GLACIER") == 60
    assert p.retrieval_per_gb("GLACIER", "Standard") == 0.02
    assert p.retrieval_per_gb("GLACIER", "Expedited") == 0.03  # other tiers kept
    assert p.retrieval_per_gb("DEEP_ARCHIVE", "Standard") == 0.5
    assert p.restore_requests_per_1000("GLACIER_IR", "Bulk") == 1.0
    assert p.restore_requests_per_1000("GLACIER_IR", "Standard") == 0.0
    assert p.as_dict()["source"] is None
    assert PriceTable().retrieval_per_gb("GLACIER", "Standard") == 0.01   # defaults not shared


@pytest.mark.parametrize("table, words", [
    ({"currency": 3}, "currency"),
    ({"transfer_out_per_gb": -1}, "transfer_out_per_gb"),
    ({"transfer_out_per_gb": "cheap"}, "transfer_out_per_gb"),
    ({"storage_per_gb_month": {"TAPE": 1}}, "unknown storage class"),
    ({"storage_per_gb_month": 1}, "table by storage class"),
    ({"min_storage_days": {"GLACIER": 1.5}}, "whole number"),
    ({"retrieval_per_gb": {"GLACIER": {"Fast": 1}}}, "tier must be one of"),
    ({"coffee": 1}, "unknown setting 'coffee'"),
])
def test_bad_prices_are_refused_with_their_name(table, words):
    with pytest.raises(ConfigError, match=words):
        config.parse({"prices": table})


def test_budgets_and_thaw_on_read():
    cfg = config.parse({"thaw_budget_daily": "10GiB", "thaw_budget_monthly": 5,
                        "thaw_on_read": "never", "thaw_readahead": 2,
                        "vault": {VAULT: {"thaw_budget_daily": 0, "thaw_budget_monthly": 0.5}}})
    assert cfg.thaw_budget_daily == 10 << 30 and cfg.thaw_budget_monthly == 5.0
    assert cfg.thaw_on_read == "never" and cfg.thaw_readahead == 2
    v = cfg.vault(VAULT)
    assert v.thaw_budget_daily == 0 and v.thaw_budget_monthly == 0.5
    assert config.parse({}).thaw_on_read == "budget"
    assert config.parse({}).thaw_budget_daily is None


@pytest.mark.parametrize("data, words", [
    ({"thaw_on_read": "sometimes"}, "thaw_on_read"),
    ({"thaw_budget_daily": "lots"}, "thaw_budget_daily"),
    ({"thaw_budget_monthly": -2}, "thaw_budget_monthly"),
    ({"thaw_readahead": -1}, "thaw_readahead"),
    ({"prices": 1}, r"\[prices\]"),
    ({"vault": {VAULT: {"thaw_budget_monthly": "x"}}}, "thaw_budget_monthly"),
])
def test_bad_thaw_settings_are_refused(data, words):
    with pytest.raises((ConfigError,), match=words):
        try:
            config.parse(data)
        except config.UsageError as exc:      # parse_file turns these into ConfigError
            raise ConfigError(str(exc)) from None


@given(st.sampled_from(config.STORAGE_CLASSES), st.sampled_from(config.TIERS),
       st.integers(0, 1 << 50), st.integers(0, 10 ** 6))
def test_thaw_cost_is_never_negative_and_grows_with_bytes(cls, tier, nbytes, requests):
    p = PriceTable()
    cost = p.thaw_cost(cls, tier, nbytes, requests)
    assert cost >= 0
    assert p.thaw_cost(cls, tier, nbytes + prices.GB, requests) >= cost
