"""The mount's listing of an S3 vault (cryophilefs/vaults.py) through moto
behind the counting proxy: it places its LIST requests by the keys it
expects, as a warm `cryophile ls` does, so an unchanged vault costs one
LIST per page of keys and not one request more."""

from __future__ import annotations

import json

import pytest
import trio

from tests.test_s3_e2e import S3Rig

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def rig(tmp_path, bucket, s3proxy):
    return S3Rig(tmp_path, bucket, s3proxy.endpoint, storage_class="STANDARD")


def list_requests(s3proxy) -> int:
    return len(s3proxy.requests("GET", "list-type=2"))


def test_the_mounts_listing_places_its_ranges_by_the_keys_it_expects(rig, recipes, s3proxy):
    from cryophile.spool import Spool
    from cryophile.store.s3 import S3Store
    from cryophilefs import vaults
    ulids = [rig.backup(f"archive {i}".encode(), recipes["sq"].cert, "-p", "tank")
             for i in range(5)]                 # 10 objects: chunk.0 and chunk.1 each
    rig.run("freeze", "--once", check=True)
    rows = json.loads(rig.run("ls", "--json", rig.vault, check=True).stdout)   # caches chunk.0s
    assert sorted(r["ulid"] for r in rows) == sorted(ulids)
    store = S3Store(rig.vault, endpoint_url=s3proxy.endpoint)
    store.list_page = 3
    found: dict = {}
    listings = vaults.Listings(Spool(str(rig.spool)), lambda vault: store,
                               lambda vault, archives: found.update(archives))
    counts = []

    async def refresh():
        s3proxy.reset()
        await listings.refresh(rig.vault, force=True)
        counts.append((list_requests(s3proxy), len(s3proxy.requests())))
    try:
        trio.run(refresh)           # the first: the keys the chunk.0 cache names
        trio.run(refresh)           # then: the keys of the archives it knows
    finally:
        store.close()
    assert sorted(a.bid.ulid for a in found.values()) == sorted(ulids)
    assert counts == [(4, 4), (4, 4)], counts       # ⌈10 / 3⌉ LISTs, nothing else
