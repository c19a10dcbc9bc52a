"""Configuration values of the wrong type or meaning: one clear line, exit 3."""

from __future__ import annotations

import pytest

from cryophile import config
from tests.clirig import VAULT, make_rig
from tests.test_cli_errors import CONFIG, USAGE, failed

OTHER = "9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d"


@pytest.fixture
def rig(tmp_path):
    return make_rig(tmp_path)


@pytest.mark.parametrize("text, needles", [
    (f"[vault.{VAULT}]\nkeyring = 5\n", ["keyring", "file name", "not a number"]),
    (f"[vault.{VAULT}]\nkeyring = ['a', 5]\n", ["keyring", "list of file names"]),
    (f"[vault.{VAULT}]\nname = 5\n", ["name", "string", "not a number"]),
    (f"[vault.{VAULT}]\nrestore_days = true\n", ["restore_days", "whole number", "boolean"]),
    (f"[vault.{VAULT}]\nrestore_days = 1.5\n", ["restore_days", "whole number"]),
    (f"[vault.{VAULT}]\nfragment_size = true\n", ["fragment_size", "size"]),
    (f"[vault.{VAULT}]\nfragment_size = 1\n", ["fragment_size", "4KiB to 5TiB"]),
    (f"[vault.{VAULT}]\nfragment_size = '512B'\n", ["fragment_size", "'512B'", "4KiB"]),
    (f"[vault.{VAULT}]\nregion = ['eu']\n", ["region", "string", "list"]),
    (f"[vault.{VAULT}]\nstorage_class = 3\n", ["storage_class", "string"]),
    (f"[vault.{VAULT}]\nurl = {{ a = 1 }}\n", ["url", "string", "table"]),
    (f"[vault.{VAULT}]\nurl = 's3:/bucket'\n", ["url", "s3:/bucket", "no bucket",
                                                 "s3://BUCKET"]),
    (f"[vault.{VAULT}]\nurl = 's3://'\n", ["url", "no bucket"]),
    (f"[vault.{VAULT}]\nurl = 's3:///path'\n", ["url", "no bucket"]),
    (f"[vault.{VAULT}]\nurl = 'file://backups/x'\n", ["url", "'backups'", "file:///"]),
    (f"[vault.{VAULT}]\nurl = 'file://'\n", ["url", "absolute", "file:///"]),
    (f"[vault.{VAULT}]\nurl = 'file:backups'\n", ["url", "absolute", "file:///"]),
    (f"[vault.{VAULT}]\nendpoint_url = 'localhost:9000'\n", ["endpoint_url",
                                                              "http://HOST[:PORT]"]),
    (f"[vault.{VAULT}]\nendpoint_url = 'htp://minio'\n", ["endpoint_url", "'htp://minio'"]),
    (f"[vault.{VAULT}]\nendpoint_url = 'http://'\n", ["endpoint_url", "https://"]),
    (f"[vault.{VAULT}]\nendpoint_url = 'http://[::1'\n", ["endpoint_url", "[::1"]),
    (f"[vault.{VAULT}]\nendpoint_url = 'http://minio:port'\n", ["endpoint_url", "port"]),
    ("spool = 5\n", ["spool", "string"]),
    ("spool_max = true\n", ["spool_max", "size"]),
    ("vault = 5\n", ["vault", "tables"]),
    (f"[vault]\n'{VAULT}' = 5\n", ["vault", "tables"]),
    (f"[vault.{VAULT}]\nname = 'off'\n[vault.{OTHER}]\nname = 'off'\n", ["off", "share"]),
    (f"[vault.{VAULT}]\nname = 'a/b'\n", ["a/b", "plain name"]),
    (f"[vault.{VAULT}]\nname = '{OTHER}'\n", [OTHER, "UUID"]),
    (f"[vault.{VAULT}]\n[vault.{VAULT.upper()}]\n", ["configured twice"]),
])
def test_wrong_values_exit_3_with_one_line(rig, text, needles):
    rig.config.write_text(f'spool = "{rig.spool}"\n' * ("spool" not in text) + text)
    failed(rig.run("status"), CONFIG, str(rig.config), *needles)


def test_a_mistyped_alias_names_the_aliases(rig, recipes):
    rig.config.write_text(f'spool = "{rig.spool}"\n[vault.{VAULT}]\nname = "offsite"\n'
                          f'url = "file://{rig.vaults}"\n[vault.{OTHER}]\nname = "cold"\n')
    for args in (["ls", "ofsite"], ["backup", "-v", "ofsite", "-k", str(recipes["sq"].cert)]):
        failed(rig.run(*args, input=b"x"), USAGE, "'ofsite'", "neither a UUID nor",
               "cold, offsite")
    failed(rig.run("ls", VAULT.replace("-", "")), USAGE, "canonical")     # a UUID still


def test_a_configuration_not_in_utf8_exits_3(rig):
    rig.config.write_bytes(b'spool = "/tmp/\xe9t\xe9"\n')       # Latin-1
    failed(rig.run("status"), CONFIG, str(rig.config), "UTF-8")


def test_decimal_units_are_decimal():
    cfg = config.parse({"spool_max": "20GB", "vault": {VAULT: {"fragment_size": "64MB",
                                                               "part_size": "8MiB"}}})
    assert cfg.spool_max == 20 * 10 ** 9
    assert cfg.vaults[VAULT].fragment_size == 64 * 10 ** 6
    assert cfg.vaults[VAULT].part_size == 8 << 20


def test_the_vault_path_counts_against_the_prefix(tmp_path, recipes):
    rig = make_rig(tmp_path)
    base = "b" * 100
    rig.config.write_text(f'spool = "{rig.spool}"\n[vault.{VAULT}]\n'
                          f'url = "s3://{VAULT}/{base}"\n')
    prefix = "p" * 200 + "/" + "p" * 200 + "/" + "p" * 200 + "/" + "p" * 200 + "/" + "p" * 80
    proc = rig.run("backup", "-v", VAULT, "-k", str(recipes["sq"].cert), "-p", prefix,
                   input=b"x")
    failed(proc, USAGE, f"at most {984 - 101}", f"{base}/PREFIX")


@pytest.mark.parametrize("args, needles", [
    (["-t", "4294967296"], ["2106", "32 bits"]),
    (["-t", "99999999999999"], ["out of range"]),
    (["-t", "-5"], ["before 1970"]),
    (["-u", "7ZZZZZZZZZZZZZZZZZZZZZZZZZ"], ["no archive can carry"]),
])
def test_timestamps_out_of_range_in_backup(rig, recipes, args, needles):
    proc = rig.run("backup", "-v", VAULT, "-k", str(recipes["sq"].cert), *args, input=b"x")
    failed(proc, USAGE, *needles)


def test_two_backups_at_time_zero(rig, recipes):
    first = rig.backup(b"a", recipes["sq"].cert, "-t", "0")
    second = rig.backup(b"b", recipes["sq"].cert, "-t", "1970-01-01T00:00:00Z")
    assert first != second
    assert rig.restore(first, recipes["sq"].key, check=True).stdout == b"a"
    assert rig.restore(second, recipes["sq"].key, check=True).stdout == b"b"


def test_settings_parsed_by_their_own_parsers_keep_their_toml_types():
    cfg = config.parse({"vault": {VAULT: {"thaw_budget_daily": "20GB",
                                          "thaw_budget_monthly": 2.5}}})
    assert cfg.vaults[VAULT].thaw_budget_daily == 20 * 10 ** 9
    assert cfg.vaults[VAULT].thaw_budget_monthly == 2.5
    with pytest.raises(config.ConfigError, match="thaw_budget_daily must be a size"):
        config.parse({"vault": {VAULT: {"thaw_budget_daily": True}}})
