"""LocalStore (file:// vaults): the store contract, and what only it does."""

from __future__ import annotations

import os

import pytest

from cryophile.errors import ConflictError
from cryophile.store.local import LocalStore
from tests.store_contract import StoreContract, get_bytes, put_bytes, write_file


@pytest.fixture
def store(tmp_path):
    return LocalStore(str(tmp_path / "vaults" / "v1"))


class TestLocalStoreContract(StoreContract):
    pass


def test_put_links_and_leaves_no_temporaries(store, tmp_path):
    put_bytes(store, tmp_path, "a/01X/chunk.1", b"data")
    path, size, sha256 = write_file(tmp_path, b"other", "other")
    with pytest.raises(ConflictError):
        store.put("a/01X/chunk.1", path, size=size, sha256=sha256)
    assert os.listdir(os.path.join(store.root, "a", "01X")) == ["chunk.1"]


def test_a_killed_put_leaves_a_temporary_that_is_never_listed(store, tmp_path):
    put_bytes(store, tmp_path, "k", b"first")
    stale = os.path.join(store.root, "k.tmp-0123")
    with open(stale, "wb") as f:
        f.write(b"half")
    assert [i.key for i in store.list()] == ["k"]
    path, size, sha256 = write_file(tmp_path, b"first", "again")
    store.put("k", path, size=size, sha256=sha256)
    assert not os.path.exists(stale), "swept by the next put of the key"
    assert get_bytes(store, "k") == b"first"
