"""What storage and thaws cost: a price table with shipped defaults.

The defaults are AWS S3 list prices for us-east-1 (``SOURCE``, read on
``AS_OF``); prices change and differ by region and provider, so users must
check them and can override any of them in ``[prices]`` of the config::

    [prices]
    currency = "EUR"
    transfer_out_per_gb = 0.0
    storage_per_gb_month = { GLACIER = 0.0036 }
    min_storage_days = { DEEP_ARCHIVE = 180 }
    retrieval_per_gb = { GLACIER = { Standard = 0.01 }, GLACIER_IR = 0.03 }
    restore_requests_per_1000 = { DEEP_ARCHIVE = { Bulk = 0.025 } }
    get_per_1000 = 0.0004

A tiered price (retrieval, restore requests) is a table by tier or one number
for every tier. Amounts are in ``currency`` per GB (10^9 bytes, as billed).
This module is pure: no I/O, nothing else in cryophile imported but errors.
"""

from __future__ import annotations

import copy
import dataclasses
import math

from .errors import ConfigError

SOURCE = "https://aws.amazon.com/s3/pricing/ (us-east-1)"
AS_OF = "2026-11-26"
GB = 10 ** 9

TIERS = ("Expedited", "Standard", "Bulk")
# Classes whose objects must be restored before a GET; the others are read at once.
ARCHIVED = ("GLACIER", "DEEP_ARCHIVE")

_DEFAULTS: dict = {
    "currency": "USD",
    "transfer_out_per_gb": 0.09,
    "get_per_1000": 0.0004,
    "storage_per_gb_month": {
        "STANDARD": 0.023, "REDUCED_REDUNDANCY": 0.023, "INTELLIGENT_TIERING": 0.023,
        "STANDARD_IA": 0.0125, "ONEZONE_IA": 0.01,
        "GLACIER_IR": 0.004, "GLACIER": 0.0036, "DEEP_ARCHIVE": 0.00099,
    },
    "min_storage_days": {
        "STANDARD": 0, "REDUCED_REDUNDANCY": 0, "INTELLIGENT_TIERING": 0,
        "STANDARD_IA": 30, "ONEZONE_IA": 30,
        "GLACIER_IR": 90, "GLACIER": 90, "DEEP_ARCHIVE": 180,
    },
    "retrieval_per_gb": {
        "STANDARD": 0.0, "REDUCED_REDUNDANCY": 0.0, "INTELLIGENT_TIERING": 0.0,
        "STANDARD_IA": 0.01, "ONEZONE_IA": 0.01, "GLACIER_IR": 0.03,
        "GLACIER": {"Expedited": 0.03, "Standard": 0.01, "Bulk": 0.0},
        # Deep Archive has no Expedited tier; S3 refuses it.
        "DEEP_ARCHIVE": {"Standard": 0.02, "Bulk": 0.0025},
    },
    "restore_requests_per_1000": {
        "GLACIER": {"Expedited": 10.0, "Standard": 0.05, "Bulk": 0.0},
        "DEEP_ARCHIVE": {"Standard": 0.10, "Bulk": 0.025},
    },
}

_SCALARS = ("transfer_out_per_gb", "get_per_1000")
_BY_CLASS = ("storage_per_gb_month", "min_storage_days")
_BY_CLASS_TIER = ("retrieval_per_gb", "restore_requests_per_1000")


@dataclasses.dataclass
class PriceTable:
    """Prices by storage class (and restore tier); see the module docstring."""

    table: dict = dataclasses.field(default_factory=lambda: copy.deepcopy(_DEFAULTS))
    overridden: bool = False

    @classmethod
    def from_config(cls, overrides: dict | None, where: str = "[prices]") -> "PriceTable":
        """The defaults with ``overrides`` (the config's ``[prices]`` table) laid
        over them; raises ConfigError naming the first bad entry."""
        prices = cls()
        for key, value in (overrides or {}).items():
            prices._override(key, value, where)
        return prices

    # -- lookups ---------------------------------------------------------
    @property
    def currency(self) -> str:
        return self.table["currency"]

    @property
    def transfer_out_per_gb(self) -> float:
        return self.table["transfer_out_per_gb"]

    @property
    def get_per_1000(self) -> float:
        return self.table["get_per_1000"]

    def storage_per_gb_month(self, storage_class: str) -> float:
        return self.table["storage_per_gb_month"].get(storage_class, 0.0)

    def min_storage_days(self, storage_class: str) -> int:
        return self.table["min_storage_days"].get(storage_class, 0)

    def retrieval_per_gb(self, storage_class: str, tier: str | None = None) -> float:
        return _tiered(self.table["retrieval_per_gb"].get(storage_class, 0.0), tier)

    def restore_requests_per_1000(self, storage_class: str, tier: str | None = None) -> float:
        return _tiered(self.table["restore_requests_per_1000"].get(storage_class, 0.0), tier)

    def thaw_cost(self, storage_class: str, tier: str, nbytes: int, requests: int,
                  *, transfer_out: bool = False) -> float:
        """Retrieval by GB plus restore requests (plus transfer out, if asked)."""
        gb = nbytes / GB
        cost = gb * self.retrieval_per_gb(storage_class, tier)
        cost += requests / 1000 * self.restore_requests_per_1000(storage_class, tier)
        if transfer_out:
            cost += gb * self.transfer_out_per_gb
        return cost

    def as_dict(self) -> dict:
        return {"source": None if self.overridden else SOURCE, "as_of": AS_OF,
                **copy.deepcopy(self.table)}

    # -- overrides -------------------------------------------------------
    def _override(self, key: str, value, where: str) -> None:
        self.overridden = True
        if key == "currency":
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{where} currency must be a name such as \"USD\"")
            self.table["currency"] = value.strip()
        elif key in _SCALARS:
            self.table[key] = _amount(value, f"{where} {key}")
        elif key in _BY_CLASS + _BY_CLASS_TIER:
            if not isinstance(value, dict):
                raise ConfigError(f"{where} {key} must be a table by storage class")
            for cls_name, item in value.items():
                what = f"{where} {key}.{cls_name}"
                if cls_name not in _DEFAULTS["storage_per_gb_month"]:
                    raise ConfigError(f"{what}: unknown storage class")
                if key == "min_storage_days":
                    if not isinstance(item, int) or isinstance(item, bool) or item < 0:
                        raise ConfigError(f"{what} must be a whole number of days")
                    self.table[key][cls_name] = item
                elif key in _BY_CLASS:
                    self.table[key][cls_name] = _amount(item, what)
                else:
                    self.table[key][cls_name] = self._tier_table(key, cls_name, item, what)
        else:
            raise ConfigError(f"{where} has unknown setting {key!r}")

    def _tier_table(self, key: str, cls_name: str, item, what: str):
        if not isinstance(item, dict):
            return _amount(item, what)
        old = self.table[key].get(cls_name, 0.0)
        merged = dict(old) if isinstance(old, dict) else {t: old for t in TIERS}
        for tier, amount in item.items():
            if tier not in TIERS:
                raise ConfigError(f"{what}: tier must be one of {', '.join(TIERS)}")
            merged[tier] = _amount(amount, f"{what}.{tier}")
        return merged


def _tiered(entry, tier: str | None) -> float:
    if isinstance(entry, dict):
        return entry.get(tier or "Standard", 0.0)
    return entry


def _amount(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{what} must be a number, zero or more")
    return float(value)


def parse_amount(value, what: str) -> float:
    """A money amount from the config (thaw_budget_monthly): a number >= 0."""
    return _amount(value, what)
