"""The contract every vault backend keeps (see cryophile/store/base.py).

Use it by subclassing in a test module that provides a ``store`` fixture
(any ``Store`` whose objects are readable at once, e.g. STANDARD class):

    class TestLocalStoreContract(StoreContract):
        pass
"""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from cryophile.errors import ConflictError, NotFoundError
from cryophile.store.base import State


def write_file(tmp_path, data: bytes, name: str = "fragment") -> tuple[str, int, bytes]:
    """A file to put: (path, size, sha256)."""
    path = tmp_path / name
    path.write_bytes(data)
    return str(path), len(data), hashlib.sha256(data).digest()


def put_bytes(store, tmp_path, key: str, data: bytes, **kwargs) -> None:
    path, size, sha256 = write_file(tmp_path, data, name=key.replace("/", "_"))
    store.put(key, path, size=size, sha256=sha256, **kwargs)


def get_bytes(store, key: str, **kwargs) -> bytes:
    out = io.BytesIO()
    count = store.get(key, out, **kwargs)
    assert count == len(out.getvalue())
    return out.getvalue()


class StoreContract:
    DATA = os.urandom(100_000)

    def test_put_then_get_whole(self, store, tmp_path):
        put_bytes(store, tmp_path, "p/01ULID/chunk.1", self.DATA)
        assert get_bytes(store, "p/01ULID/chunk.1") == self.DATA

    @pytest.mark.parametrize("start,end", [(0, 1), (10, 20), (99_999, 100_000),
                                           (50_000, None), (0, 100_000)])
    def test_get_range(self, store, tmp_path, start, end):
        put_bytes(store, tmp_path, "k", self.DATA)
        assert get_bytes(store, "k", start=start, end=end) == self.DATA[start:end]

    def test_get_range_past_the_end_is_clipped(self, store, tmp_path):
        put_bytes(store, tmp_path, "k", self.DATA)
        assert get_bytes(store, "k", start=99_990, end=200_000) == self.DATA[99_990:]
        assert get_bytes(store, "k", start=100_000) == b""
        assert get_bytes(store, "k", start=5, end=5) == b""

    def test_empty_object(self, store, tmp_path):
        put_bytes(store, tmp_path, "empty", b"")
        assert get_bytes(store, "empty") == b""
        assert store.head("empty").size == 0

    def test_head(self, store, tmp_path):
        put_bytes(store, tmp_path, "k", self.DATA)
        info = store.head("k")
        assert (info.key, info.size, info.state) == ("k", len(self.DATA), State.AVAILABLE)

    def test_missing_key(self, store):
        with pytest.raises(NotFoundError):
            store.head("nope")
        with pytest.raises(NotFoundError):
            store.get("nope", io.BytesIO())

    def test_put_again_is_harmless(self, store, tmp_path):
        put_bytes(store, tmp_path, "k", self.DATA)
        put_bytes(store, tmp_path, "k", self.DATA)
        assert get_bytes(store, "k") == self.DATA

    def test_put_again_without_sha256_is_harmless(self, store, tmp_path):
        put_bytes(store, tmp_path, "k", self.DATA)
        path, size, _ = write_file(tmp_path, self.DATA, "again")
        store.put("k", path, size=size)
        assert get_bytes(store, "k") == self.DATA

    @pytest.mark.parametrize("other", [b"same size, other bytes".ljust(100_000, b"!"),
                                       b"shorter"])
    def test_put_never_replaces_other_bytes(self, store, tmp_path, other):
        put_bytes(store, tmp_path, "p/01ULID/chunk.1", self.DATA)
        path, size, sha256 = write_file(tmp_path, other, "other")
        with pytest.raises(ConflictError) as exc:
            store.put("p/01ULID/chunk.1", path, size=size, sha256=sha256)
        assert "p/01ULID/chunk.1" in str(exc.value) and "\n" not in str(exc.value)
        assert get_bytes(store, "p/01ULID/chunk.1") == self.DATA
        assert os.path.exists(path), "the local copy is left alone"

    def test_list_by_prefix(self, store, tmp_path):
        keys = ["a/01X/chunk.0", "a/01X/chunk.1", "a/01Y/chunk.1", "b/01Z/chunk.1"]
        for key in keys:
            put_bytes(store, tmp_path, key, key.encode())
        assert sorted(i.key for i in store.list()) == keys
        found = {i.key: i.size for i in store.list("a/01X/")}
        assert found == {"a/01X/chunk.0": 13, "a/01X/chunk.1": 13}
        assert list(store.list("c/")) == []

    def test_list_of_many_pages_is_every_key_once_in_order(self, store, tmp_path):
        """Stores that list several pages at once (S3: listing.py), made to
        use tiny pages: every key once, in order, whatever the cuts."""
        inner = getattr(store, "inner", store)
        if hasattr(inner, "list_page"):
            inner.list_page, inner.list_workers = 3, 4
        ulids = ["01J0AAAAAAAAAAAAAAAAAAAAAA", "01J0AZZZZZZZZZZZZZZZZZZZZZ",
                 "01J5M0000000000000000000AB", "01J5M0000000000000000000AC",
                 "01JZ00000000000000000000AA", "01K0000000000000000000000A"]
        keys = sorted([f"tank/home/{u}/chunk.{n}" for u in ulids for n in (0, 1, 12)]
                      + [f"tank/{u}/chunk.0" for u in ulids[:2]] + ["z/x"])
        for key in keys:
            put_bytes(store, tmp_path, key, b"x")
        assert [i.key for i in store.list()] == keys
        assert [i.key for i in store.list("tank/home/")] == [k for k in keys
                                                            if k.startswith("tank/home/")]

    def test_delete(self, store, tmp_path):
        put_bytes(store, tmp_path, "k", self.DATA)
        store.delete("k")
        with pytest.raises(NotFoundError):
            store.head("k")
        store.delete("k")       # absent: not an error

    def test_restore_of_available_object_is_a_no_op(self, store, tmp_path):
        put_bytes(store, tmp_path, "k", self.DATA)
        store.request_restore("k", tier="Standard", days=1)
        assert store.head("k").state == State.AVAILABLE
        assert get_bytes(store, "k") == self.DATA

    def test_list_tells_when_each_object_was_stored(self, store, tmp_path):
        import datetime
        before = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
        put_bytes(store, tmp_path, "k", self.DATA)
        (info,) = store.list("k")
        assert info.modified is not None and info.modified.tzinfo is not None
        assert before < info.modified < before + datetime.timedelta(hours=1)
