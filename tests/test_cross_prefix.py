"""Chains across prefixes of one vault: an incremental stored under another
prefix than its base (zfs send -i into VAULT/tank/home-incr, base in
VAULT/tank/home; backup --parent across prefixes) is resolved vault-wide by
chain, check, ls, prune (its base is held) and rm (its base is refused)."""

from __future__ import annotations

import json
import os

import pytest

from tests.clirig import archive_dir, make_rig
from tests.streamgen import zfs_substream

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def rig(tmp_path):
    return make_rig(tmp_path)


def zfs(rig, recipes, to: int, frm: int, day: int, prefix: str) -> str:
    stream = zfs_substream("<", to, frm, f"tank/home@d{day}", [])
    return rig.backup(stream, recipes["gpg"].cert, "-t", f"2026-02-0{day}T00:00:00Z",
                      "-p", prefix)


@pytest.fixture
def split(rig, recipes):
    """Fulls in tank/home; an incremental of the oldest in tank/home-incr."""
    base = zfs(rig, recipes, 11, 0, 1, "tank/home")
    newer = zfs(rig, recipes, 22, 0, 2, "tank/home")
    incr = zfs(rig, recipes, 33, 11, 3, "tank/home-incr")
    rig.run("freeze", "--once", check=True)
    return base, newer, incr


def plan_lines(proc) -> dict[str, str]:
    out = {}
    for line in proc.stdout.decode().splitlines()[:-1]:
        action, bid, _created, _size, _unit, *why = line.split()
        out[bid.rsplit("/", 1)[1]] = " ".join([action, *why])
    return out


def test_chain_and_ls_of_a_prefix_find_a_base_in_another(rig, split):
    base, _newer, incr = split
    rows = json.loads(rig.run("chain", "--json", f"{rig.vault}/tank/home-incr/{incr}",
                              check=True).stdout)
    assert [r["id"] for r in rows] == [f"{rig.vault}/tank/home/{base}",
                                       f"{rig.vault}/tank/home-incr/{incr}"]
    rows = json.loads(rig.run("ls", "--json", f"{rig.vault}/tank/home-incr", check=True).stdout)
    assert [(r["ulid"], r["parent"], r["parent_missing"]) for r in rows] == [(incr, base, None)]


def test_check_of_a_prefix_finds_a_base_in_another(rig, split):
    _base, _newer, incr = split
    for target in (f"{rig.vault}/tank/home-incr", f"{rig.vault}/tank/home-incr/{incr}"):
        proc = rig.run("check", target)
        assert proc.returncode == 0, (proc.stdout, proc.stderr)


def test_prune_of_a_prefix_holds_the_base_of_an_incremental_elsewhere(rig, split):
    base, newer, incr = split
    proc = rig.run("prune", f"{rig.vault}/tank/home", "--keep-last", "1", check=True)
    assert plan_lines(proc) == {newer: "keep last",
                                base: f"held base of {rig.vault}/tank/home-incr/{incr}"}
    assert (archive_dir(rig, base, "tank/home") / "chunk.0").exists()
    assert rig.run("chain", f"{rig.vault}/tank/home-incr/{incr}").returncode == 0


def test_prune_of_a_prefix_holds_a_parent_named_across_prefixes(rig, recipes):
    base = rig.backup(os.urandom(3000), recipes["gpg"].cert, "-p", "db",
                      "-t", "2026-01-01T00:00:00Z")
    newer = rig.backup(os.urandom(3000), recipes["gpg"].cert, "-p", "db",
                       "-t", "2026-01-02T00:00:00Z")
    child = rig.backup(os.urandom(3000), recipes["gpg"].cert, "-p", "db-logs",
                       "--parent", base, "-t", "2026-01-03T00:00:00Z")
    queued = rig.backup(os.urandom(3000), recipes["gpg"].cert, "-p", "db-logs",
                        "--parent", newer, "-t", "2026-01-04T00:00:00Z")
    rig.run("freeze", "--once", "-v", rig.vault, "-p", "db", check=True)
    rig.run("freeze", "--once", "-v", rig.vault, "-p", "db-logs", "-u", child, check=True)
    assert (rig.spool / "freeze" / rig.vault / "db-logs" / queued).is_dir()
    proc = rig.run("prune", f"{rig.vault}/db", "--keep-within", "1h", check=True)
    assert plan_lines(proc) == {newer: "keep within 1h",
                                base: f"held base of {rig.vault}/db-logs/{child}"}
    # the newer one kept by the rule alone would be held for the queued child too
    rig.run("rm", f"{rig.vault}/db-logs/{child}", check=True)
    proc = rig.run("prune", f"{rig.vault}/db", "--keep-last", "1", check=True)
    assert plan_lines(proc) == {newer: "keep last", base: "delete"}


def test_rm_refuses_the_base_of_an_incremental_elsewhere(rig, split):
    base, _newer, incr = split
    proc = rig.run("rm", f"{rig.vault}/tank/home/{base}")
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.decode().strip().splitlines()
    assert len(err) == 1 and f"is the base of {rig.vault}/tank/home-incr/{incr}:" in err[0], err
    assert (archive_dir(rig, base, "tank/home") / "chunk.0").exists()
    proc = rig.run("rm", "-R", f"{rig.vault}/tank/home/{base}", check=True)
    assert proc.stdout.decode().splitlines() == [f"removed {rig.vault}/tank/home-incr/{incr}",
                                                 f"removed {rig.vault}/tank/home/{base}"]
