"""Docs follow the code: every option `--help` lists is in the man page."""

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cryophile.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    found = set()
    for action in parser._actions:
        found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= option_strings(sub)
    return found


def man_text(name: str) -> str:
    raw = (ROOT / "man" / name).read_text()
    return raw.replace("\\-", "-")


def test_every_cryophile_option_is_in_the_man_page():
    text = man_text("cryophile.1")
    missing = [o for o in option_strings(cli_main.parser()) if o not in text]
    assert not missing, f"options missing from man/cryophile.1: {missing}"


def test_every_command_has_a_section():
    text = man_text("cryophile.1")
    for name in cli_main.COMMANDS:
        assert re.search(rf"^\.SS {name}$", text, re.M), name


def test_every_config_setting_is_in_the_man_page():
    from cryophile.config import VaultConfig
    import dataclasses
    text = man_text("cryophile.toml.5")
    for field in dataclasses.fields(VaultConfig):
        if field.name != "uuid":
            assert f".B {field.name}" in text, field.name
    assert ".B spool_max" in text


@pytest.mark.parametrize("page", ["cryophile.1", "cryophile.toml.5"])
def test_man_page_renders_without_warnings(page):
    proc = subprocess.run(["man", "--warnings", "-l", str(ROOT / "man" / page)],
                          capture_output=True, text=True, env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0
    assert "NAME" in proc.stdout
    assert proc.stderr.strip() == "", proc.stderr


def test_help_runs_for_every_command():
    for cmd in ([], ["backup"], ["freeze"], ["thaw"], ["restore"], ["ls"]):
        proc = subprocess.run([sys.executable, "-m", "cryophile", *cmd, "--help"],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert "usage: cryophile" in proc.stdout


def test_backup_help_gives_the_configured_defaults_first():
    """-C and -s default to the vault's setting, as the man page says."""
    text = " ".join(cli_main.parser(["backup"])._subparsers._group_actions[0]
                    .choices["backup"].format_help().split())
    for option in ("--compression none|lz4|zstd", "--fragment-size SIZE"):
        after = text.split(option, 1)[1]
        assert after.split("(default:", 1)[1].lstrip().startswith("the vault's"), after[:200]
