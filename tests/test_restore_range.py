"""restore --offset/--length: a byte range of the plaintext, thawing only the
fragments that hold it.  Through the real `cryophile` command, against the
moto server behind the fault proxy (slow restores), and on a local vault for
the options' edges."""

from __future__ import annotations

import json
import os
import re
import urllib.parse

import pytest

from tests.clirig import make_rig
from tests.keyrecipes import sqop_recipe
from tests.test_s3_e2e import S3Rig

MiB = 1 << 20


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    return sqop_recipe(tmp_path_factory.mktemp("rangekey"), "range")


def restored(s3proxy) -> list[str]:
    return sorted(urllib.parse.unquote(r.path).rsplit("/", 1)[1]
                  for r in s3proxy.requests("POST", "restore"))


@pytest.mark.timeout(300)
def test_a_range_restore_requests_only_its_fragments(tmp_path, key, s3proxy, bucket):
    rig = S3Rig(tmp_path, bucket, s3proxy.endpoint)
    data = os.urandom(4 * MiB + 100)
    ulid = rig.backup(data, key.cert, "-s", "512KiB", "-C", "none")      # 9 fragments
    rig.run("freeze", "--once", check=True)
    offset, length = 2 * MiB + 1000, 100
    rng = ("--offset", str(offset), "--length", str(length))

    plan = json.loads(rig.restore(ulid, key.key, *rng, "-n", "--json", check=True).stdout)
    # chunk.1 holds the session key packets; the 1 MiB frame from 2 MiB on
    # lies in chunk.5 … chunk.7 (512 KiB fragments, behind the key packets)
    assert plan["fragments"] == plan["requests"] == 4, plan
    assert s3proxy.requests("POST", "restore") == [], "a plan requests nothing"

    s3proxy.restore_delay = 1.0
    out = tmp_path / "out"
    rig.restore(ulid, key.key, *rng, "-o", str(out), check=True)
    assert out.read_bytes() == data[offset:offset + length]
    assert restored(s3proxy) == ["chunk.1", "chunk.5", "chunk.6", "chunk.7"]
    assert not list((rig.spool / "thaw").rglob("chunk.*")), "no thaw request left behind"
    assert not list((rig.spool / "restore").rglob("*")), "nothing left in the restore queue"
    ledger = json.loads((rig.spool / "thaw" / ".ledger.json").read_text())
    (day,) = ledger["days"].values()
    assert day["*"]["bytes"] == plan["stored_bytes"], "the budget is charged for the range only"

    # to stdout, in a frame of its own, running past the end: to the end
    before = restored(s3proxy)
    proc = rig.restore(ulid, key.key, "--offset", "4MiB", "--length", "1G", check=True)
    assert proc.stdout == data[4 * MiB:]
    # the frame from 4 MiB on starts in chunk.9; chunk.1 is restored already
    assert sorted(set(restored(s3proxy)) - set(before)) == ["chunk.9"]


@pytest.fixture
def local(tmp_path, key):
    rig = make_rig(tmp_path)
    data = os.urandom(300_000)
    ulid = rig.backup(data, key.cert, "-s", "64KiB", "-C", "lz4")
    rig.run("freeze", "--once", check=True)
    return rig, ulid, data


@pytest.mark.timeout(120)
def test_range_edges_on_a_local_vault(local, key):
    rig, ulid, data = local
    for offset, length, want in [("0", "1", data[:1]), ("0KiB", "2", data[:2]),
                                 ("1KiB", None, data[1024:]), ("299999", "5", data[-1:]),
                                 ("300000", "5", b"")]:
        args = ("--offset", offset) + (("--length", length) if length else ())
        proc = rig.restore(ulid, key.key, *args, check=True)
        assert proc.stdout == want, (offset, length)
    proc = rig.restore(ulid, key.key, "--length", "100k", check=True)
    assert proc.stdout == data[:100 * 1024]
    proc = rig.run("restore", f"{rig.vault}/{ulid}", "-k", str(key.key), "--offset", "64KiB",
                   "--length", "10", input=None, check=True)      # options after the target
    assert proc.stdout == data[65536:65546]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("args, message", [
    (("--offset", "300001"), "--offset 300001 is beyond the end of .* \\(300000 bytes\\)"),
    (("--offset", "1T", "-n"), "--offset 1099511627776 is beyond the end"),
    (("--offset", "lots"), "--offset 'lots' is not a size"),
    (("--length", "0"), "--length must be greater than zero"),
    (("--offset", "1", "--chain", "--", "cat"), "not a --chain"),
])
def test_range_errors_are_one_line(local, key, tmp_path, args, message):
    rig, ulid, _ = local
    out = tmp_path / "never"
    proc = rig.restore(ulid, key.key, *args,
                       *(() if "--chain" in args else ("-o", str(out))))
    assert proc.returncode == 2, proc
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), lines
    assert not out.exists()


@pytest.mark.timeout(300)
def test_a_range_within_the_budget_passes_where_the_whole_archive_is_refused(
        tmp_path, key, s3proxy, bucket):
    rig = S3Rig(tmp_path, bucket, s3proxy.endpoint, thaw_budget_daily="3MiB")
    data = os.urandom(4 * MiB + 100)
    ulid = rig.backup(data, key.cert, "-s", "512KiB", "-C", "none")      # 9 fragments
    rig.run("freeze", "--once", check=True)
    whole = rig.restore(ulid, key.key)
    assert whole.returncode == 16 and b"thaw_budget_daily" in whole.stderr, whole
    assert restored(s3proxy) == []
    at_end = rig.restore(ulid, key.key, "--offset", str(len(data)), check=True)
    assert at_end.stdout == b"" and restored(s3proxy) == [], "an empty range thaws nothing"
    s3proxy.restore_delay = 0.5
    proc = rig.restore(ulid, key.key, "--offset", str(2 * MiB + 1000), "--length", "100",
                       check=True)
    assert proc.stdout == data[2 * MiB + 1000:2 * MiB + 1100]
    assert restored(s3proxy) == ["chunk.1", "chunk.5", "chunk.6", "chunk.7"]
