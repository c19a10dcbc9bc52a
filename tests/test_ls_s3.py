"""ls through a real S3 protocol server (moto, behind the counting proxy):
the chunk.0 cache makes a second listing cost LIST requests only; deleted
archives leave the cache; one vault failing does not hide the others."""

from __future__ import annotations

import json

import pytest

from tests.test_s3_e2e import S3Rig

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def rig(tmp_path, bucket, s3proxy):
    return S3Rig(tmp_path, bucket, s3proxy.endpoint, storage_class="STANDARD")


def frozen(rig, recipes, n):
    ulids = [rig.backup(f"archive {i}".encode(), recipes["sq"].cert, "-p", "tank")
             for i in range(n)]
    rig.run("freeze", "--once", check=True)
    return ulids


def listing(rig, s3proxy):
    s3proxy.reset()
    rows = json.loads(rig.run("ls", "--json", rig.vault, check=True).stdout)
    methods = [(r.method, r.query.split("&")[0].split("=")[0]) for r in s3proxy.requests()]
    return {r["ulid"]: r for r in rows}, methods


def test_warm_ls_makes_only_list_requests(rig, recipes, s3proxy):
    ulids = frozen(rig, recipes, 5)
    rows, cold = listing(rig, s3proxy)
    assert set(rows) == set(ulids) and all(r["state"] == "stored" for r in rows.values())
    assert sum(1 for m, _ in cold if m == "GET" and _ != "list-type") == 5   # the chunk.0s
    assert not [m for m, _ in cold if m == "HEAD"]
    cached = sorted(p.name for p in (rig.spool / "cache" / rig.vault / "tank").iterdir())
    assert cached == sorted(f"{u}.chunk0" for u in ulids)
    assert oct((rig.spool / "cache" / rig.vault / "tank" / cached[0]).stat().st_mode)[-3:] \
        == "600"
    rows, warm = listing(rig, s3proxy)
    assert set(rows) == set(ulids)
    assert warm and all(m == "GET" and q == "list-type" for m, q in warm), warm


def test_deleted_archive_leaves_the_cache(rig, recipes, s3proxy, s3client, bucket):
    ulids = frozen(rig, recipes, 3)
    listing(rig, s3proxy)
    for obj in s3client.list_objects_v2(Bucket=bucket, Prefix=f"tank/{ulids[1]}/")["Contents"]:
        s3client.delete_object(Bucket=bucket, Key=obj["Key"])
    rows, _ = listing(rig, s3proxy)
    assert set(rows) == {ulids[0], ulids[2]}
    assert not (rig.spool / "cache" / rig.vault / "tank" / f"{ulids[1]}.chunk0").exists()


def test_a_cached_copy_of_another_archive_is_refused(rig, recipes, s3proxy):
    ulids = frozen(rig, recipes, 2)
    listing(rig, s3proxy)
    top = rig.spool / "cache" / rig.vault / "tank"
    (top / f"{ulids[0]}.chunk0").write_bytes((top / f"{ulids[1]}.chunk0").read_bytes())
    rows, requests = listing(rig, s3proxy)
    assert set(rows) == set(ulids)
    assert rows[ulids[0]]["size"] == len(b"archive 0")
    assert sum(1 for m, q in requests if m == "GET" and q != "list-type") == 1   # refetched


@pytest.mark.expect_log
def test_one_vault_failing_shows_the_others(rig, recipes, s3proxy, tmp_path):
    ulids = frozen(rig, recipes, 1)
    broken = "9d5c0f6e-1b2a-4c3d-8e9f-0a1b2c3d4e5f"
    with open(rig.config, "a") as f:
        f.write(f'[vault.{broken}]\nendpoint_url = "http://127.0.0.1:9"\n')
    proc = rig.run("ls", env={"CRYOPHILE_S3_ATTEMPTS": "1"}, timeout=120)
    assert proc.returncode == 10, proc.stderr
    assert f"{rig.vault}/tank/{ulids[0]}" in proc.stdout.decode()
    err = proc.stderr.decode().strip().splitlines()
    assert len(err) == 1 and f"cannot list vault {broken}" in err[0]


def test_prune_plans_from_the_chunk0_cache(rig, recipes, s3proxy):
    """prune -n reads the chunk.0s a listing cached instead of GETting each
    again, and fills the cache itself when cold; check still reads the vault's."""
    ulids = frozen(rig, recipes, 4)
    def gets(*words):
        s3proxy.reset()
        rig.run(*words, check=True)
        return sum(1 for r in s3proxy.requests()
                   if r.method == "GET" and not r.query.startswith("list-type"))
    assert gets("prune", "-n", "--keep-last", "1", f"{rig.vault}/tank") == 4    # cold
    assert len(list((rig.spool / "cache" / rig.vault / "tank").iterdir())) == 4
    assert gets("prune", "-n", "--keep-last", "1", f"{rig.vault}/tank") == 0    # warm
    assert gets("check", f"{rig.vault}/tank") >= len(ulids)     # the vault's own copies


def list_requests(s3proxy) -> int:
    return len(s3proxy.requests("GET", "list-type=2"))


def test_expected_keys_cost_one_list_per_page(bucket, s3client, s3proxy):
    from cryophile.store.s3 import S3Store
    keys = [f"tank/k{i:03d}/chunk.{n}" for i in range(25) for n in (0, 1)]
    for key in keys:
        s3client.put_object(Bucket=bucket, Key=key, Body=b"x")
    store = S3Store(bucket, endpoint_url=s3proxy.endpoint)
    store.list_page = 10
    try:
        s3proxy.reset()
        assert [i.key for i in store.list("tank/", expected=keys)] == keys
        assert list_requests(s3proxy) == 5
        # one archive gone from the middle, two new at the end: still one per page
        for key in keys[20:22]:
            s3client.delete_object(Bucket=bucket, Key=key)
        new = [f"tank/k{i:03d}/chunk.{n}" for i in (25, 26) for n in (0, 1)]
        for key in new:
            s3client.put_object(Bucket=bucket, Key=key, Body=b"x")
        s3proxy.reset()
        now = keys[:20] + keys[22:] + new
        assert [i.key for i in store.list("tank/", expected=keys)] == now
        assert list_requests(s3proxy) == -(-len(now) // 10) == 6
    finally:
        store.close()


def test_warm_listing_places_its_ranges_by_the_cache(rig, recipes, s3proxy):
    from cryophile import catalog
    from cryophile.spool import Spool
    from cryophile.store.s3 import S3Store
    ulids = frozen(rig, recipes, 5)         # 10 objects: chunk.0 and chunk.1 each
    listing(rig, s3proxy)                   # caches the chunk.0s
    store = S3Store(rig.vault, endpoint_url=s3proxy.endpoint)
    store.list_page = 3
    try:
        s3proxy.reset()
        entries = catalog.vault_entries(store, rig.vault, "tank", spool=Spool(str(rig.spool)))
    finally:
        store.close()
    assert sorted(e.bid.ulid for e in entries.values()) == sorted(ulids)
    assert list_requests(s3proxy) == 4 == len(s3proxy.requests())     # ⌈10 / 3⌉, LIST only
