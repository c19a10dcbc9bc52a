"""ls options, chain, and restore's ways of finding an archive, through the
real command on a local vault (synthetic zfs streams: the real producers
are in test_chain_restore.py)."""

from __future__ import annotations

import json

import pytest

from tests.clirig import make_rig
from tests.streamgen import zfs_substream

pytestmark = pytest.mark.timeout(300)


def zstream(to: int, frm: int, name: str) -> bytes:
    return zfs_substream("<", to, frm, name, [])


@pytest.fixture
def rig(tmp_path):
    return make_rig(tmp_path)


@pytest.fixture
def zchain(rig, recipes):
    """full (t=1e9) ← inc1 (t=1e9+100) ← inc2 (t=1e9+200), and a tar, frozen."""
    cert = recipes["sq"].cert
    a = rig.backup(zstream(11, 0, "tank/fs@a"), cert, "-p", "tank/fs", "-t", "1000000000")
    b = rig.backup(zstream(22, 11, "tank/fs@b"), cert, "-p", "tank/fs", "-t", "1000000100",
                   "--name", "second")
    c = rig.backup(zstream(33, 22, "tank/fs@c"), cert, "-p", "tank/fs", "-t", "1000000200")
    t = rig.backup(b"just bytes", cert, "-t", "1000000300")
    rig.run("freeze", "--once", check=True)
    return a, b, c, t


def ls_json(rig, *args):
    return json.loads(rig.run("ls", "--json", *args, check=True).stdout)


def test_ls_json_has_kind_parent_and_sizes(rig, zchain):
    a, b, c, t = zchain
    rows = {r["ulid"]: r for r in ls_json(rig, rig.vault)}
    assert set(rows) == {a, b, c, t}
    assert [rows[u]["parent"] for u in (a, b, c)] == [None, a, b]
    assert rows[c]["kind"] == "zfs" and rows[t]["kind"] == "unknown"
    assert rows[c]["id"] == f"{rig.vault}/tank/fs/{c}" and rows[c]["prefix"] == "tank/fs"
    assert rows[a]["stored"] > 0 and rows[a]["size"] == len(zstream(11, 0, "tank/fs@a"))
    assert rows[a]["storage_class"] == "LOCAL" and rows[a]["state"] == "local"
    assert rows[b]["name"] is None and rows[b]["snapshot"] is None     # no key given


def test_ls_scripted_and_time_window(rig, zchain, recipes):
    a, b, c, t = zchain
    out = rig.run("ls", "-H", "--since", "1000000100", "--until", "2001-09-09T01:51:00Z",
                  rig.vault, check=True).stdout.decode()
    lines = [line.split("\t") for line in out.splitlines()]
    assert [cols[0] for cols in lines] == [f"tank/fs/{b}", f"tank/fs/{c}"]   # no header
    assert all(len(cols) == 10 for cols in lines)
    assert lines[0][8] == a and lines[0][2].isdigit()          # parent, bytes
    named = rig.run("ls", "-H", "-k", str(recipes["sq"].key), rig.vault,
                    check=True).stdout.decode()
    assert "second (tank/fs@b)" in named and "\ttank/fs@c\n" in named


def test_ls_table_columns_fit(rig, zchain):
    lines = rig.run("ls", rig.vault, check=True).stdout.decode().splitlines()
    assert lines[0].split() == ["ARCHIVE", "CREATED", "SIZE", "FRAGS", "STATE", "STORED",
                                "CLASS", "KIND", "PARENT", "NAME"]
    starts = {line.index("local") for line in lines[1:]}
    assert len(starts) == 1 and lines[0].index("STATE") in starts    # aligned


def test_chain_lists_full_first(rig, zchain):
    a, b, c, t = zchain
    out = rig.run("chain", "-H", f"{rig.vault}/tank/fs/{c}", check=True).stdout.decode()
    assert [line.split("\t")[0] for line in out.splitlines()] == [
        f"{rig.vault}/tank/fs/{u}" for u in (a, b, c)]
    rows = json.loads(rig.run("chain", "--json", f"{rig.vault}/tank/{t}".replace("tank/", ""),
                              check=True).stdout)
    assert [r["ulid"] for r in rows] == [t]


def test_broken_chain_names_the_missing_link(rig, zchain):
    a, b, c, t = zchain
    for p in (rig.vaults / rig.vault / "tank/fs" / b).iterdir():
        p.unlink()
    proc = rig.run("chain", f"{rig.vault}/tank/fs/{c}")
    assert proc.returncode == 7
    err = proc.stderr.decode()
    assert f"tank/fs/{c} needs the zfs snapshot with guid 22" in err
    assert len(err.strip().splitlines()) == 1


def test_restore_finds_by_id_latest_before_and_name(rig, zchain, recipes):
    a, b, c, t = zchain
    key = str(recipes["sq"].key)

    def got(*args):
        return rig.run("restore", "-k", key, *args, input=None, check=True).stdout
    assert got(f"{rig.vault}/tank/fs/{b}") == zstream(22, 11, "tank/fs@b")
    assert got(f"{rig.vault}/tank/fs/{b}", "-k", key) == zstream(22, 11, "tank/fs@b")
    after = rig.run("restore", f"{rig.vault}/tank/fs/{b}", "-k", key, "-o",
                    str(rig.root / "out"), input=None, check=True)        # options after it
    assert after.stdout == b"" and (rig.root / "out").read_bytes() == zstream(22, 11, "tank/fs@b")
    assert got("-v", rig.vault, "-p", "tank/fs", "--latest") == zstream(33, 22, "tank/fs@c")
    for finder, args in (("sealed", ["--latest"]), ("named 'second'", ["--name", "second"]),
                         ("made before", ["--before", "1000000150"])):   # says which it took
        proc = rig.run("restore", "-k", key, "-v", rig.vault, "-p", "tank/fs", "-n", *args,
                       input=None, check=True)
        picked = c if finder == "sealed" else b
        assert f"the newest archive {finder}" in proc.stderr.decode(), proc.stderr
        assert f"{rig.vault}/tank/fs/{picked}" in proc.stderr.decode(), proc.stderr
    assert got("-v", rig.vault, "--latest") == b"just bytes"
    assert got("-v", rig.vault, "-p", "tank/fs", "--before", "1000000150") == \
        zstream(22, 11, "tank/fs@b")
    assert got("-v", rig.vault, "-p", "tank/fs", "--name", "second") == \
        zstream(22, 11, "tank/fs@b")
    assert got("-v", rig.vault, "-p", "tank/fs", "--name", "tank/fs@a") == \
        zstream(11, 0, "tank/fs@a")


@pytest.mark.parametrize("args, message", [
    (["-v", "V", "--latest", "--before", "1"], "give one of"),
    (["VAULT_ID", "-u", "01ARZ3NDEKTSV4RRFFQ69G5FAV"], "either as VAULT/PREFIX/ULID"),
    (["VAULT_ID/01ARZ3NDEKTSV4RRFFQ69G5FAV", "--", "cat"], "needs --chain"),
    (["VAULT_ID/01ARZ3NDEKTSV4RRFFQ69G5FAV", "--chain"], "needs the receiving command"),
    ([], "which archive"),
])
def test_restore_finding_usage_errors(rig, recipes, args, message):
    args = [a.replace("VAULT_ID", rig.vault).replace("V", rig.vault) if a in ("V",) or
            a.startswith("VAULT_ID") else a for a in args]
    proc = rig.run("restore", "-k", str(recipes["sq"].key), *args, input=None)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr.decode()


def test_restore_latest_and_name_when_nothing_matches(rig, zchain, recipes):
    key = str(recipes["sq"].key)
    proc = rig.run("restore", "-k", key, "-v", rig.vault, "-p", "tank/none", "--latest",
                   input=None)
    assert proc.returncode == 7 and "no archive sealed in" in proc.stderr.decode()
    proc = rig.run("restore", "-k", key, "-v", rig.vault, "--name", "nope", input=None)
    assert proc.returncode == 7 and "no archive named 'nope'" in proc.stderr.decode()


def test_restore_chain_into_a_command(rig, zchain, recipes, tmp_path):
    a, b, c, t = zchain
    log = tmp_path / "received"
    script = f"cat >> {log}; echo >> {log}"
    proc = rig.run("restore", "-k", str(recipes["sq"].key), f"{rig.vault}/tank/fs/{c}",
                   "--chain", "--", "sh", "-c", script, input=None, check=True)
    assert proc.stdout == b""
    assert log.read_bytes() == b"".join(
        zstream(*x) + b"\n" for x in ((11, 0, "tank/fs@a"), (22, 11, "tank/fs@b"),
                                      (33, 22, "tank/fs@c")))


def test_restore_chain_stops_at_the_first_failing_run(rig, zchain, recipes, tmp_path):
    a, b, c, t = zchain
    count = tmp_path / "count"
    script = f"cat > /dev/null; echo x >> {count}; test $(wc -l < {count}) -lt 2"
    proc = rig.run("restore", "-k", str(recipes["sq"].key), "-v", rig.vault, "-p",
                   "tank/fs", "-u", c, "--chain", "--", "sh", "-c", script, input=None)
    assert proc.returncode == 13
    assert f"failed on archive 2 of 3 ({rig.vault}/tank/fs/{b})" in proc.stderr.decode()
    assert count.read_text() == "x\nx\n"


def test_restore_chain_stops_at_a_damaged_archive(rig, zchain, recipes, tmp_path):
    a, b, c, t = zchain
    frag = rig.vaults / rig.vault / "tank/fs" / b / "chunk.1"
    data = bytearray(frag.read_bytes())
    data[len(data) // 2] ^= 1
    frag.write_bytes(bytes(data))
    count = tmp_path / "count"
    proc = rig.run("restore", "-k", str(recipes["sq"].key), f"{rig.vault}/tank/fs/{c}",
                   "--chain", "--", "sh", "-c", f"cat > /dev/null; echo x >> {count}",
                   input=None)
    assert proc.returncode == 9, proc.stderr
    err = proc.stderr.decode()
    lines = err.strip().splitlines()
    assert [line.split(" (")[0] for line in lines[:2]] == [
        "cryophile: restoring archive 1 of 3", "cryophile: restoring archive 2 of 3"]
    assert len(lines) == 3 and "not to be trusted" in lines[2]
    assert f"chain stopped at archive 2 of 3 ({rig.vault}/tank/fs/{b})" in lines[2]
    assert count.read_text() == "x\n"          # the second run was stopped, the third never ran


def test_restore_chain_names_a_command_that_stops_reading(rig, zchain, recipes):
    """A receiving command that exits without reading (zfs receive into a
    dataset that does not exist) is named with its status, exit 13: not the
    quiet 141 of a closed stdout, which would leave the user guessing."""
    a, b, c, t = zchain
    proc = rig.run("restore", "-k", str(recipes["sq"].key), f"{rig.vault}/tank/fs/{c}",
                   "--chain", "--", "sh", "-c", "exit 3", input=None)
    err = proc.stderr.decode()
    assert proc.returncode == 13, err
    # (stopped reading, or failed if it happened to exit after the archive fit in the pipe)
    assert f"archive 1 of 3 ({rig.vault}/tank/fs/{a})" in err and "exit status 3" in err, err
    assert len(err.splitlines()) == 2, err     # "restoring archive 1 of 3", then the error
