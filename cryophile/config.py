"""Configuration: cryophile.toml (design.md, "Configuration")."""

from __future__ import annotations

import dataclasses
import os
import tomllib
import urllib.parse

from . import ids
from .errors import ConfigError, UsageError
from .pipeline.compress import CODECS
from .prices import PriceTable, parse_amount

SEARCH = ("~/.config/cryophile/cryophile.toml", "/etc/cryophile/cryophile.toml")
STORAGE_CLASSES = ("STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING",
                   "GLACIER", "GLACIER_IR", "DEEP_ARCHIVE", "REDUCED_REDUNDANCY")
TIERS = ("Expedited", "Standard", "Bulk")


@dataclasses.dataclass
class VaultConfig:
    uuid: str
    name: str | None = None
    url: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    storage_class: str = "GLACIER"
    restore_tier: str = "Standard"
    restore_days: int = 1
    keyring: list[str] = dataclasses.field(default_factory=list)
    compression: str = "lz4"
    fragment_size: int = 64 << 20
    part_size: int = 16 << 20
    conditional_writes: bool = True     # If-None-Match on uploads (S3 since 2024)
    thaw_budget_daily: int | None = None        # stored bytes thawed per UTC day
    thaw_budget_monthly: float | None = None    # in the price table's currency

    @property
    def location(self) -> str:
        return self.url or f"s3://{self.uuid}"

    @property
    def key_base(self) -> str:
        """The path inside the bucket every key starts with (s3://BUCKET/PATH), or ''."""
        parts = urllib.parse.urlsplit(self.location)
        return parts.path.strip("/") if parts.scheme == "s3" else ""


@dataclasses.dataclass
class Config:
    path: str | None = None
    spool: str = "/var/spool/cryophile"
    spool_max: int | None = None
    vaults: dict[str, VaultConfig] = dataclasses.field(default_factory=dict)
    prices: PriceTable = dataclasses.field(default_factory=PriceTable)
    thaw_budget_daily: int | None = None
    thaw_budget_monthly: float | None = None
    thaw_on_read: str = "budget"
    thaw_readahead: int = 1                     # fragments thawed past a mount read
    limit_upload: int | None = None             # bytes/s, the whole process (throttle.py)
    limit_download: int | None = None

    def vault(self, text: str) -> VaultConfig:
        """A vault by UUID or by its alias; an unconfigured UUID gets defaults."""
        for v in self.vaults.values():
            if v.name is not None and v.name == text:
                return v
        try:
            uuid = ids.parse_vault(text)
        except UsageError:
            aliases = sorted(v.name for v in self.vaults.values() if v.name is not None)
            if not aliases or _is_uuid(text):
                raise
            raise UsageError(f"vault {text!r} is neither a UUID nor a configured alias "
                             f"({', '.join(aliases)})") from None
        return self.vaults.get(uuid) or VaultConfig(uuid)


def _is_uuid(text: str) -> bool:
    import uuid
    try:
        uuid.UUID(text)
        return True
    except ValueError:
        return False


def load(path: str | None) -> Config:
    if path is not None:
        if not os.path.exists(path):
            raise ConfigError(f"configuration file {path} does not exist")
        return parse_file(path)
    for candidate in SEARCH:
        candidate = os.path.expanduser(candidate)
        if os.path.isfile(candidate):
            return parse_file(candidate)
    return Config()


def parse_file(path: str) -> Config:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except UnicodeDecodeError as exc:       # TOML is UTF-8
        raise ConfigError(f"{path}: not UTF-8 (byte {exc.object[exc.start]:#04x} at "
                          f"offset {exc.start})") from None
    try:
        return parse(data, path)
    except UsageError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def parse(data: dict, path: str | None = None) -> Config:
    where = path or "configuration"
    cfg = Config(path=path)
    unknown = set(data) - {"spool", "spool_max", "vault"} - THAW_KEYS - LIMIT_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown setting {sorted(unknown)[0]!r}")
    if "spool" in data:
        cfg.spool = _checked(data["spool"], (str,), "a string", f"{where}: spool")
    if "spool_max" in data:
        cfg.spool_max = ids.parse_size(data["spool_max"], "spool_max")
    _thaw_settings(cfg, data, where)
    for name in LIMIT_KEYS & set(data):
        setattr(cfg, name, _rate(data[name], name, where))
    vaults = data.get("vault", {})
    if not isinstance(vaults, dict) or not all(isinstance(t, dict) for t in vaults.values()):
        raise ConfigError(f"{where}: vaults must be tables: [vault.UUID]")
    for key, table in vaults.items():
        v = _vault(key, table, where)
        if v.uuid in cfg.vaults:
            raise ConfigError(f"{where}: vault {v.uuid} is configured twice")
        cfg.vaults[v.uuid] = v
    _check_names(cfg, where)
    return cfg


def _check_alias(name: str | None, here: str) -> None:
    """An alias names a directory in the mount and stands for a vault on the command
    line: a plain file name, and never a UUID (which would mean another vault)."""
    if name is None:
        return
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise ConfigError(f"{here} name {name!r} must be a plain name (no '/', not '.' or '..')")
    try:
        ids.parse_vault(name)
    except UsageError:
        return
    raise ConfigError(f"{here} name {name!r} is a UUID: an alias must not look like a vault")


def _check_names(cfg: Config, where: str) -> None:
    seen: dict[str, str] = {}
    for v in cfg.vaults.values():
        if v.name is None:
            continue
        if v.name in seen:
            raise ConfigError(f"{where}: vaults {seen[v.name]} and {v.uuid} share the "
                              f"name {v.name!r}: an alias must name one vault")
        seen[v.name] = v.uuid


# Settings whose TOML type is not their type once parsed
_DESCRIBED = {
    "fragment_size": ((str, int), 'a size like "64MiB" or a number of bytes'),
    "part_size": ((str, int), 'a size like "64MiB" or a number of bytes'),
    "keyring": ((str, list), "a file name or a list of file names"),
    "thaw_budget_daily": ((str, int), 'a size like "20GiB" or a number of bytes'),
    "thaw_budget_monthly": ((str, int, float), "an amount like 5 or 2.50"),
}
_BY_ANNOTATION = (("bool", (bool,), "true or false"), ("int", (int,), "a whole number"),
                  ("float", (int, float), "a number"), ("", (str,), "a string"))
_TOML_TYPES = {bool: "a boolean", int: "a number", float: "a number", str: "a string",
               list: "a list", dict: "a table"}


def _checked(value, types: tuple, description: str, what: str):
    """``value`` if it has one of ``types`` (a boolean is not a number), else a
    ConfigError naming ``what``, what it must be, and what it is."""
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        found = next((n for t, n in _TOML_TYPES.items() if isinstance(value, t)), "a value")
        raise ConfigError(f"{what} must be {description}, not {found} ({value!r})")
    return value


def _typed(name: str, value, here: str):
    """A vault setting's value, of the type VaultConfig declares for it."""
    if name in _DESCRIBED:
        types, description = _DESCRIBED[name]
    else:
        annotation = str(VaultConfig.__dataclass_fields__[name].type)
        types, description = next((t, d) for prefix, t, d in _BY_ANNOTATION
                                  if annotation.startswith(prefix))
    _checked(value, types, description, f"{here} {name}")
    if name == "keyring" and isinstance(value, list):
        for item in value:
            _checked(item, (str,), "a list of file names", f"{here} keyring")
    return value


def _vault(key: str, table: dict, where: str) -> VaultConfig:
    v = VaultConfig(ids.parse_vault(key))
    fields = {f.name for f in dataclasses.fields(VaultConfig)} - {"uuid"}
    for name, value in table.items():
        if name not in fields:
            raise ConfigError(f"{where}: [vault.{key}] has unknown setting {name!r}")
        setattr(v, name, _typed(name, value, f"{where}: [vault.{key}]"))
    _budgets(v, table, f"{where}: [vault.{key}]")
    if isinstance(v.keyring, str):
        v.keyring = [v.keyring]
    v.fragment_size = ids.parse_fragment_size(v.fragment_size, "fragment_size")
    v.part_size = ids.parse_size(v.part_size, "part_size")
    if v.part_size < 5 << 20:
        raise ConfigError(f"{where}: [vault.{key}] part_size must be at least 5MiB (S3's minimum)")
    if v.compression not in CODECS:
        raise ConfigError(f"{where}: [vault.{key}] compression must be one of {', '.join(CODECS)}")
    if v.storage_class not in STORAGE_CLASSES:
        raise ConfigError(f"{where}: [vault.{key}] unknown storage_class {v.storage_class!r}")
    if v.restore_tier not in TIERS:
        raise ConfigError(f"{where}: [vault.{key}] restore_tier must be one of {', '.join(TIERS)}")
    if not isinstance(v.restore_days, int) or v.restore_days < 1:
        raise ConfigError(f"{where}: [vault.{key}] restore_days must be a positive integer")
    if not isinstance(v.conditional_writes, bool):
        raise ConfigError(f"{where}: [vault.{key}] conditional_writes must be true or false")
    if v.url is not None:
        _check_url(v.url, f"{where}: [vault.{key}]")
    if v.endpoint_url is not None:
        _check_endpoint(v.endpoint_url, f"{where}: [vault.{key}]")
    _check_alias(v.name, f"{where}: [vault.{key}]")
    return v


LIMIT_KEYS = {"limit_upload", "limit_download"}


def _rate(value, name: str, where: str) -> int | None:
    from .throttle import parse_rate
    _checked(value, (str, int), 'a rate like "10M" (bytes per second) or a number',
             f"{where}: {name}")
    return parse_rate(value, name)


def _check_url(url: str, where: str) -> None:
    """s3://BUCKET[/PATH] or file:///DIR: a typo must not send archives to some
    other place (file://dir/x would be /x, s3:/bucket no bucket at all)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("file", "s3"):
        raise ConfigError(f"{where} url must start with file:// or s3://")
    if parts.scheme == "s3" and not parts.netloc:
        raise ConfigError(f"{where} url {url!r} names no bucket: write s3://BUCKET[/PATH]")
    if parts.scheme == "file" and parts.netloc not in ("", "localhost"):
        raise ConfigError(f"{where} url {url!r} would mean the directory {parts.path or '/'} "
                          f"on host {parts.netloc!r}: a local directory is file:///DIR "
                          "(three slashes, an absolute path)")
    if parts.scheme == "file" and not parts.path.startswith("/"):
        raise ConfigError(f"{where} url {url!r} needs an absolute path: file:///DIR")


def _check_endpoint(url: str, where: str) -> None:
    """http(s)://HOST[:PORT][/PATH]: what botocore takes, checked here so that a typo
    is a configuration error rather than botocore's traceback at the first request."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port                          # noqa: B018 (raises on a bad port)
    except ValueError as exc:
        raise ConfigError(f"{where} endpoint_url {url!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where} endpoint_url {url!r} must be http://HOST[:PORT] or "
                          "https://HOST[:PORT]")


THAW_KEYS = {"prices", "thaw_budget_daily", "thaw_budget_monthly", "thaw_on_read",
             "thaw_readahead"}
THAW_ON_READ = ("budget", "always", "never")


def _budgets(obj, table: dict, where: str) -> None:
    """thaw_budget_daily (a size) and thaw_budget_monthly (an amount), on the
    config or on one vault."""
    if "thaw_budget_daily" in table:
        daily = table["thaw_budget_daily"]   # 0: every thaw needs approval
        obj.thaw_budget_daily = 0 if daily in (0, "0") else ids.parse_size(
            daily, f"{where} thaw_budget_daily")
    if "thaw_budget_monthly" in table:
        obj.thaw_budget_monthly = parse_amount(table["thaw_budget_monthly"],
                                               f"{where} thaw_budget_monthly")


def _thaw_settings(cfg: Config, data: dict, where: str) -> None:
    if not isinstance(data.get("prices", {}), dict):
        raise ConfigError(f"{where}: [prices] must be a table")
    cfg.prices = PriceTable.from_config(data.get("prices"), f"{where}: [prices]")
    _budgets(cfg, data, where + ":")
    cfg.thaw_on_read = data.get("thaw_on_read", cfg.thaw_on_read)
    if cfg.thaw_on_read not in THAW_ON_READ:
        raise ConfigError(f"{where}: thaw_on_read must be one of {', '.join(THAW_ON_READ)}")
    readahead = data.get("thaw_readahead", cfg.thaw_readahead)
    if not isinstance(readahead, int) or isinstance(readahead, bool) or readahead < 0:
        raise ConfigError(f"{where}: thaw_readahead must be a number of fragments, 0 or more")
    cfg.thaw_readahead = readahead


def _tell_unconfigured(cfg: Config, v: VaultConfig, store) -> None:
    """Say once which bucket an unconfigured vault becomes: a mistyped UUID
    should not go to Amazon S3 unnoticed."""
    import logging
    endpoint = getattr(getattr(store, "inner", store), "endpoint", "Amazon S3")
    logging.getLogger("cryophile").info(
        "vault %s has no [vault.%s] table in %s: using the S3 bucket %s at %s "
        "(boto3's default endpoint and region); configure url or endpoint_url to "
        "store it elsewhere", v.uuid, v.uuid, cfg.path or "the configuration (none found)",
        v.uuid, endpoint)


def open_store(v: VaultConfig, *, retry_attempts: int | None = None):
    """The Store for a vault (local directory or S3), wrapped for retries."""
    parts = urllib.parse.urlsplit(v.location)
    if parts.scheme == "file":
        from .store.local import LocalStore
        return LocalStore(os.path.join(urllib.parse.unquote(parts.path), v.uuid))
    from .store.retry import RetryingStore
    from .store.s3 import S3Store
    store = S3Store(parts.netloc, prefix=parts.path.strip("/"), endpoint_url=v.endpoint_url,
                    region=v.region, profile=v.profile, storage_class=v.storage_class,
                    part_size=v.part_size, multipart_threshold=v.part_size + 1,
                    conditional_writes=v.conditional_writes)
    if retry_attempts is None and os.environ.get("CRYOPHILE_S3_ATTEMPTS"):
        retry_attempts = int(os.environ["CRYOPHILE_S3_ATTEMPTS"])
    kwargs = {} if retry_attempts is None else {"attempts": retry_attempts}
    return RetryingStore(store, **kwargs)


class Stores:
    """One Store per vault, made on first use: ``stores(vault_uuid)``."""

    def __init__(self, cfg: Config):
        self.cfg, self.made = cfg, {}

    def __call__(self, vault: str):
        if vault not in self.made:
            v = self.cfg.vault(vault)
            self.made[vault] = open_store(v)
            if vault not in self.cfg.vaults:
                _tell_unconfigured(self.cfg, v, self.made[vault])
        return self.made[vault]

    def close(self) -> None:
        for store in self.made.values():
            store.close()
