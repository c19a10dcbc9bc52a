"""Thaw plans and the thaw budget, against the moto server through the fault
proxy with slow restores: what the plan announces is what the proxy sees."""

from __future__ import annotations

import json
import os
import urllib.parse

import pytest

from tests.keyrecipes import sqop_recipe
from tests.test_s3_e2e import S3Rig

FRAG = 64 * 1024


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    return sqop_recipe(tmp_path_factory.mktemp("plankey"), "plan")


@pytest.fixture
def rig(tmp_path, bucket, s3proxy):
    return S3Rig(tmp_path, bucket, s3proxy.endpoint)


def frozen(rig, key, nfrags: int, prefix: str = "tank") -> tuple[str, bytes]:
    data = os.urandom((nfrags - 1) * FRAG + 100)
    ulid = rig.backup(data, key.cert, "-p", prefix, "-s", "64KiB", "-C", "none")
    rig.run("freeze", "--once", check=True)
    return ulid, data


def restore_keys(s3proxy) -> list[str]:
    return sorted(urllib.parse.unquote(r.path) for r in s3proxy.requests("POST", "restore"))


def plan_json(rig, *args) -> dict:
    proc = rig.run(*args, "--json", check=True)
    return json.loads(proc.stdout)


@pytest.mark.timeout(300)
def test_plan_matches_the_restore_requests_the_proxy_sees(rig, key, s3proxy, s3client, bucket):
    ulid, data = frozen(rig, key, 5)
    sizes = {o["Key"]: o["Size"] for o in s3client.list_objects_v2(Bucket=bucket)["Contents"]}
    stored = sum(s for k, s in sizes.items() if not k.endswith("chunk.0"))

    plan = plan_json(rig, "thaw", "--plan", f"{rig.vault}/tank/{ulid}")
    assert plan["fragments"] == plan["requests"] == 5
    assert plan["stored_bytes"] == stored
    assert plan["tier"] == "Standard" and plan["wait"] == "3–5 h"
    assert plan["cost"] == pytest.approx(stored / 1e9 * 0.01 + 5 / 1000 * 0.05)
    assert plan["currency"] == "USD" and plan["prices"]["as_of"]
    dry = plan_json(rig, "restore", "-v", rig.vault, "-p", "tank", "-u", ulid, "-n",
                    "--tier", "Bulk", "--days", "3")
    assert dry["fragments"] == 5 and dry["tier"] == "Bulk" and dry["days"] == 3
    assert dry["wait"] == "5–12 h" and dry["cost"] == 0.0
    assert s3proxy.requests("POST", "restore") == [], "a plan requests nothing"
    assert not any(rig.spool.glob("thaw/**/chunk.*")), "a plan queues nothing"

    s3proxy.restore_delay = 1.0
    out = rig.restore(ulid, key.key, "-p", "tank", "--tier", "Bulk", check=True)
    assert out.stdout == data
    requested = restore_keys(s3proxy)
    assert len(set(requested)) == plan["requests"]
    assert sum(sizes[k.split("/", 2)[2]] for k in set(requested)) == plan["stored_bytes"]

    after = plan_json(rig, "thaw", "--plan", f"{rig.vault}/tank")
    assert after["fragments"] == 0 and after["readable"] == 5, "restored: nothing to thaw"
    ledger = json.loads((rig.spool / "thaw" / ".ledger.json").read_text())
    (day,) = ledger["days"].values()
    assert day["*"]["bytes"] == stored and day[rig.vault]["bytes"] == stored


@pytest.mark.timeout(300)
def test_plan_of_a_prefix_as_a_table(rig, key, s3proxy):
    frozen(rig, key, 2, "a")
    frozen(rig, key, 3, "a/b")
    frozen(rig, key, 1, "c")
    plan = plan_json(rig, "thaw", "--plan", f"offsite/a")
    assert len(plan["archives"]) == 2 and plan["fragments"] == 5
    table = rig.run("thaw", "--plan", rig.vault, check=True).stdout.decode()
    assert "fragments to thaw" in table and "6" in table
    assert "aws.amazon.com/s3/pricing" in table
    assert s3proxy.requests("POST", "restore") == []


@pytest.mark.timeout(300)
@pytest.mark.expect_log
def test_budget_refuses_until_approved(rig, key, s3proxy):
    rig.write_s3_config(thaw_budget_daily="128KiB")
    ulid, data = frozen(rig, key, 3)
    proc = rig.restore(ulid, key.key, "-p", "tank")
    err = proc.stderr.decode()
    assert proc.returncode == 16, err
    assert "thaw_budget_daily" in err and "--approve" in err and "3 fragment(s)" in err
    assert len(err.strip().splitlines()) == 1, err
    assert s3proxy.requests("POST", "restore") == [], "refused before any request"
    assert not (rig.spool / "thaw" / ".ledger.json").exists() or \
        "bytes" not in (rig.spool / "thaw" / ".ledger.json").read_text()

    out = rig.restore(ulid, key.key, "-p", "tank", "--approve", check=True)
    assert out.stdout == data
    assert len(set(restore_keys(s3proxy))) == 3


@pytest.mark.timeout(300)
@pytest.mark.expect_log
def test_two_concurrent_restores_share_one_ledger(rig, key, s3proxy):
    # one archive of 2 fragments fits the budget; two do not
    rig.write_s3_config(thaw_budget_daily="100KiB")
    first, _ = frozen(rig, key, 2, "one")
    second, _ = frozen(rig, key, 2, "two")
    s3proxy.restore_delay = 1.0
    procs = [rig.popen("restore", "-v", rig.vault, "-p", p, "-u", u, "-k", str(key.key),
                       "-o", str(rig.root / f"out-{p}"))
             for p, u in (("one", first), ("two", second))]
    results = [p.communicate(timeout=240) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 16], results
    assert len(set(restore_keys(s3proxy))) == 2, "only the archive that fit was thawed"
    ledger = json.loads((rig.spool / "thaw" / ".ledger.json").read_text())
    (day,) = ledger["days"].values()
    assert day["*"]["bytes"] <= 100 * 1024
    assert len(ledger["keys"]) == 2


@pytest.mark.timeout(300)
@pytest.mark.expect_log
def test_thaw_service_keeps_to_the_budget(rig, key, s3proxy):
    rig.write_s3_config(thaw_budget_monthly=0.000001)
    ulid, _ = frozen(rig, key, 2)
    # queue a thaw request as a restore would, then let the service serve it
    req = rig.spool / "thaw" / rig.vault / "tank" / ulid
    req.mkdir(parents=True)
    (req / "chunk.1").touch()
    proc = rig.run("thaw", "--once")
    assert proc.returncode == 16, proc.stderr
    assert b"thaw_budget_monthly" in proc.stderr
    assert s3proxy.requests("POST", "restore") == []
