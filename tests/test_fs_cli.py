"""cryophilefs's command line and its man page agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cryophile import errors
from tests.fsrig import fskeys  # noqa: F401 (fixture)
from cryophilefs import mount

MAN = Path(__file__).resolve().parent.parent / "man" / "cryophilefs.8"


def man_text() -> str:
    return MAN.read_text().replace("\\-", "-")


def test_every_option_of_help_is_in_the_man_page():
    text = man_text()
    for action in mount.parser()._actions:
        for option in action.option_strings:
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), option


@pytest.mark.parametrize("name", ["spool", "config", "keyring", "pass_fd", "allow_other",
                                  "restore_tier", "restore_days", "thaw_poll"])
def test_every_mount_option_is_documented(name):
    assert name in man_text()
    assert name in mount.EPILOG


def parse(*opts: str):
    args = mount.parser().parse_args([*opts, "/mnt"])
    return args, mount.parse_options(args)


def test_mount_options_map_to_flags():
    args, opts = parse("-o", "rw,spool=/s,config=/c,keyring=/k1,keyring=/k2,_netdev",
                       "-o", "restore_tier=Bulk,restore_days=3,thaw_poll=0.5")
    assert (args.spool, args.config, args.keyring) == ("/s", "/c", ["/k1", "/k2"])
    assert (opts.restore_tier, opts.restore_days, opts.thaw_poll) == ("Bulk", 3, 0.5)
    assert not opts.allow_other and "default_permissions" not in opts.fuse


def test_allow_other_adds_default_permissions():
    _, opts = parse("-o", "allow_other,fsname=backup")
    assert opts.allow_other and {"allow_other", "default_permissions", "fsname=backup"} <= opts.fuse
    assert "fsname=cryophile" not in opts.fuse


@pytest.mark.parametrize("bad", ["frobnicate", "restore_tier=Fast", "restore_days=0", "spool",
                                 "max_read=65536"])
def test_bad_mount_options(bad):
    with pytest.raises(errors.UsageError):
        parse("-o", bad)


def test_max_read_is_refused_with_the_reason():
    with pytest.raises(errors.UsageError, match="max_read=65536.*not supported: libfuse"):
        parse("-o", "max_read=65536")


def test_mount_helper_arguments(monkeypatch):
    seen = []
    monkeypatch.setattr(mount, "main", lambda argv: seen.append(argv) or 0)
    with pytest.raises(SystemExit):
        mount.mount_helper(["cryophile", "/mnt", "-n", "-o", "rw,spool=/s"])
    assert seen == [["-o", "rw,spool=/s", "cryophile", "/mnt"]]


def test_every_key_file_must_serve(tmp_path, fskeys):
    """-k files that give neither recipients nor a secret key are refused with the
    reason, even beside a usable one: a typo must not mount without that key."""
    cert, key = fskeys
    junk = tmp_path / "junk.key"
    junk.write_bytes(b"garbage")
    for paths, why in (([str(cert), str(tmp_path / "typo.key")], "No such file"),
                       ([str(junk), str(key)], "not OpenPGP data")):
        with pytest.raises(errors.KeyringError, match=why):
            mount.load_keys(paths, None)
    certificates, keyring = mount.load_keys([str(cert), str(key)], None)
    assert certificates and keyring is not None
