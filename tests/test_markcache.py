"""The chunk.0 cache's per-vault index: whatever happens to the copies and
to the index (copies added, removed, rewritten in place or filed under
the wrong archive; the index damaged, cut short, left behind by a crash
or written by two listings at once), a listing reads back exactly what
the copies say, and a warm listing opens none of them."""

from __future__ import annotations

import json
import os
import tempfile

from hypothesis import given, settings, strategies as st

from cryophile import errors, manifest
from cryophile.ids import BackupId
from cryophile.markcache import MarkCache, read_index, write_index
from cryophile.spool import Spool

VAULT = "6f0c8a52-3c7e-4f7e-9d1b-2a4b6c8d0e1f"
PREFIXES = ("tank", "tank/home", "pool/a b", "")
ULIDS = [f"01J{n:023d}" for n in range(6)]
BIDS = [BackupId(VAULT, p, u) for p in PREFIXES for u in ULIDS[:3]]


def mark(bid: BackupId, size: int = 100, tail: bytes = b"encrypted") -> bytes:
    clear = manifest.ClearInfo(VAULT, bid.prefix, bid.ulid, "2026-01-01T00:00:00.000Z", size,
                               512, 64 << 20, [manifest.Fragment(512, "0" * 64)],
                               stream={"kind": "zfs", "complete": True})
    return (manifest.MAGIC + b"1\n" + json.dumps(clear.to_json()).encode() + b"\n" + tail)


def truth(cache: MarkCache, prefix: str = "") -> dict[str, manifest.ClearInfo]:
    """What the copies say, read file by file as the cache read them before
    it had an index."""
    found = {}
    top = os.path.join(cache.root, VAULT)
    for dirpath, _dirs, files in os.walk(os.path.join(top, prefix) if prefix else top):
        for name in files:
            if name.startswith(".tmp-") or not name.endswith(".chunk0"):
                continue
            key = os.path.relpath(os.path.join(dirpath, name), top)[:-len(".chunk0")]
            where, _, ulid = key.rpartition("/")
            with open(os.path.join(dirpath, name), "rb") as f:
                data = f.read()
            try:
                clear = manifest.read_clear(data)[0]
                manifest.check_identity(clear, BackupId(VAULT, where, ulid))
            except errors.Error:
                continue
            found[key] = clear
    return found


def rewrite_in_place(path: str, data: bytes) -> None:
    """Overwrite a copy without a rename (same inode), as a damaged disk or
    a hand edit would.  Within one tick of a coarse file clock such a write
    could keep the file's stamp (the known limit of stamps); the test
    leaves no doubt by setting the modification time apart."""
    before = os.stat(path)
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(data)
    after = os.stat(path)
    if (after.st_mtime_ns, after.st_ctime_ns) == (before.st_mtime_ns, before.st_ctime_ns):
        os.utime(path, ns=(after.st_atime_ns, after.st_mtime_ns + 1))


OPS = st.one_of(
    st.tuples(st.just("put"), st.integers(0, len(BIDS) - 1)),
    st.tuples(st.just("add"), st.integers(0, len(BIDS) - 1)),        # another process's copy
    st.tuples(st.just("remove"), st.integers(0, len(BIDS) - 1)),
    st.tuples(st.just("misfile"), st.integers(0, len(BIDS) - 1), st.integers(0, len(BIDS) - 1)),
    st.tuples(st.just("garbage"), st.integers(0, len(BIDS) - 1), st.binary(max_size=40)),
    st.tuples(st.just("resize"), st.integers(0, len(BIDS) - 1), st.integers(0, 10 ** 6)),
    st.tuples(st.just("flip"), st.integers(0, 10 ** 6), st.integers(0, 7)),   # index damage
    st.tuples(st.just("cut"), st.integers(0, 10 ** 6)),
    st.tuples(st.just("crash"), st.binary(max_size=200)),     # a writer's temporary file left
    st.tuples(st.just("list"), st.sampled_from(("", "tank", "pool"))),
    st.tuples(st.just("save"), st.integers(0, 1)),
    st.tuples(st.just("forget"), st.sets(st.integers(0, len(BIDS) - 1))),
    st.tuples(st.just("restart"), st.integers(0, 1)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(OPS, max_size=30))
def test_the_index_never_changes_what_a_listing_reads(ops):
    with tempfile.TemporaryDirectory() as tmp:
        spool = Spool(tmp)
        caches = [MarkCache(spool), MarkCache(spool)]      # two listings at once
        for op in ops:
            cache = caches[0]
            what = op[0]
            if what == "put":
                cache.put(BIDS[op[1]], mark(BIDS[op[1]]))
            elif what == "add":
                other = MarkCache(spool)                    # (its own index stays unsaved)
                other.put(BIDS[op[1]], mark(BIDS[op[1]], size=7))
            elif what == "remove":
                MarkCache._unlink(cache.path(BIDS[op[1]]))
            elif what in ("misfile", "garbage", "resize"):
                path = cache.path(BIDS[op[1]])
                if os.path.exists(path):
                    data = {"misfile": lambda: mark(BIDS[op[2] if what == "misfile" else 0]),
                            "garbage": lambda: op[2],
                            "resize": lambda: mark(BIDS[op[1]], size=op[2])}[what]()
                    rewrite_in_place(path, data)
            elif what in ("flip", "cut"):
                index = cache.index_path(VAULT)
                if os.path.exists(index):
                    with open(index, "rb") as f:
                        data = bytearray(f.read())
                    if what == "flip" and data:
                        data[op[1] % len(data)] ^= 1 << op[2]
                    else:
                        del data[op[1] % (len(data) + 1):]
                    rewrite_in_place(index, bytes(data))
            elif what == "crash":
                os.makedirs(cache.root, exist_ok=True)
                with open(os.path.join(cache.root, ".tmp-crashed"), "wb") as f:
                    f.write(op[1])
            elif what == "list":
                prefix = op[1]
                assert cache.read_all(VAULT, prefix) == truth(cache, prefix)
            elif what == "save":
                caches[op[1]].save(VAULT)
            elif what == "forget":
                present = {BIDS[i].key for i in op[1]}
                cache.read_all(VAULT, "")
                cache.forget_missing(VAULT, "", present)
                assert set(truth(cache)) <= present
            elif what == "restart":
                caches.reverse()
                caches[1] = MarkCache(spool)
        for cache in caches:
            assert cache.read_all(VAULT, "") == truth(cache)
            cache.save(VAULT)
        assert MarkCache(spool).read_all(VAULT, "") == truth(caches[0])


def opened(cache: MarkCache) -> list[str]:
    """Spy on which copies a cache reads from their files."""
    paths = []
    read = cache._read

    def spy(path, bid):
        paths.append(path)
        return read(path, bid)
    cache._read = spy
    return paths


def test_a_warm_listing_opens_no_copy(tmp_path):
    spool = Spool(str(tmp_path))
    first = MarkCache(spool)
    first.read_all(VAULT, "")
    for bid in BIDS:
        first.put(bid, mark(bid))
    first.save(VAULT)
    warm = MarkCache(spool)
    paths = opened(warm)
    assert set(warm.read_all(VAULT, "")) == {b.key for b in BIDS}
    assert paths == []
    # a copy rewritten since the index was written is read from its file again
    rewrite_in_place(warm.path(BIDS[0]), mark(BIDS[0], size=5))
    again = MarkCache(spool)
    paths = opened(again)
    assert again.read_all(VAULT, "")[BIDS[0].key].size == 5
    assert paths == [again.path(BIDS[0])]


def test_a_cold_listing_writes_the_index_once_it_has_read_the_copies(tmp_path):
    spool = Spool(str(tmp_path))
    other = MarkCache(spool)
    for bid in BIDS:
        other.put(bid, mark(bid))           # cached by a process that never listed
    assert not os.path.exists(other.index_path(VAULT))
    cold = MarkCache(spool)
    cold.read_all(VAULT, "")
    cold.save(VAULT)
    assert set(read_index(cold.index_path(VAULT))) == {b.key for b in BIDS}
    assert oct(os.stat(cold.index_path(VAULT)).st_mode)[-3:] == "600"
    assert not [n for n in os.listdir(cold.root) if n.startswith(".tmp-")]


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n"),
            min_size=1, max_size=30),
    st.tuples(st.tuples(*[st.integers(0, 2 ** 64)] * 4),
              st.binary(max_size=60).filter(lambda b: b"\n" not in b)),
    max_size=20))
def test_index_lines_read_back(index):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "i")
        with open(path, "wb") as f:
            f.write(write_index(index))
        assert read_index(path) == index


def test_any_damaged_byte_of_the_index_is_read_as_absent(tmp_path):
    """Every bit of every byte flipped in turn (a digit of a size turned
    into another digit still reads as JSON): the CRC leaves the copy to be
    read from its file."""
    spool = Spool(str(tmp_path))
    cache = MarkCache(spool)
    cache.read_all(VAULT, "")
    cache.put(BIDS[1], mark(BIDS[1], size=1234567))
    cache.save(VAULT)
    path = cache.index_path(VAULT)
    with open(path, "rb") as f:
        good = f.read()
    want = truth(cache)
    for at in range(len(good)):
        for bit in range(8):
            damaged = bytearray(good)
            damaged[at] ^= 1 << bit
            with open(path, "wb") as f:
                f.write(damaged)
            assert MarkCache(spool).read_all(VAULT, "") == want, (at, bit)


def test_a_removed_copy_leaves_the_index(tmp_path):
    spool = Spool(str(tmp_path))
    cache = MarkCache(spool)
    cache.read_all(VAULT, "")
    for bid in BIDS[:3]:
        cache.put(bid, mark(bid))
    cache.save(VAULT)
    os.unlink(cache.path(BIDS[0]))
    later = MarkCache(spool)
    later.read_all(VAULT, "")
    later.save(VAULT)
    assert set(read_index(later.index_path(VAULT))) == {BIDS[1].key, BIDS[2].key}
    later.forget_missing(VAULT, "", {BIDS[2].key})      # as a listing that no longer shows it
    later.save(VAULT)
    assert set(read_index(later.index_path(VAULT))) == {BIDS[2].key}
    assert not os.path.exists(later.path(BIDS[1]))


def test_ls_pauses_the_cyclic_collector_only_while_it_lists():
    import gc

    import pytest

    from cryophile.cli import ls
    assert gc.isenabled()
    with ls._no_cyclic_gc():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(KeyError), ls._no_cyclic_gc():
        raise KeyError("a listing that fails")
    assert gc.isenabled()
    gc.disable()
    try:
        with ls._no_cyclic_gc():
            pass
        assert not gc.isenabled()          # (left as the caller had it)
    finally:
        gc.enable()


def test_an_index_write_a_crash_left_behind_is_swept(tmp_path):
    spool = Spool(str(tmp_path))
    cache = MarkCache(spool)
    cache.read_all(VAULT, "")
    cache.put(BIDS[0], mark(BIDS[0]))
    os.makedirs(cache.root, exist_ok=True)
    dead, live = (os.path.join(cache.root, n) for n in (".tmp-dead", ".tmp-live"))
    for path in (dead, live):
        with open(path, "wb") as f:
            f.write(b"half an index")
    os.utime(dead, (1, 1))
    cache.save(VAULT)
    assert not os.path.exists(dead)
    assert os.path.exists(live)                 # (maybe another listing's, being written)
    assert MarkCache(spool).read_all(VAULT, "") == truth(cache)


def local_vault(tmp_path, bids=BIDS):
    """A local vault holding ``bids`` (each a chunk.0 naming it and a chunk.1
    of the size it records)."""
    from cryophile.store.local import LocalStore
    root = tmp_path / "vaults" / VAULT
    for bid in bids:
        (root / bid.key).mkdir(parents=True, exist_ok=True)
        (root / bid.key / "chunk.0").write_bytes(mark(bid))
        (root / bid.key / "chunk.1").write_bytes(b"\0" * 512)
    return LocalStore(str(root))


class CountingStore:
    def __init__(self, store):
        self.store, self.gets = store, []

    def get(self, key, sink, *args, **kw):
        self.gets.append(key)
        return self.store.get(key, sink, *args, **kw)

    def __getattr__(self, name):
        return getattr(self.store, name)


def spied(monkeypatch) -> list[str]:
    """Every copy any MarkCache reads from its file."""
    paths = []
    read = MarkCache._read

    def spy(self, path, bid):
        paths.append(path)
        return read(self, path, bid)
    monkeypatch.setattr(MarkCache, "_read", spy)
    return paths


def test_prune_reads_the_copies_through_the_index(tmp_path, monkeypatch):
    """As a warm ls: no copy opened, nothing fetched; a cold run fetches
    each chunk.0 once and leaves the index the next run reads."""
    import types
    from cryophile import check
    from cryophile.cli import prune
    spool = Spool(str(tmp_path / "spool"))
    store = CountingStore(local_vault(tmp_path))
    ctx = types.SimpleNamespace(spool=spool)
    paths = spied(monkeypatch)
    items, others, _ = prune._items(ctx, store, VAULT, "tank")
    assert {i.ulid for i in items} == {b.ulid for b in BIDS if b.prefix.startswith("tank")}
    assert len(store.gets) == len(BIDS) and paths == []
    assert set(read_index(MarkCache(spool).index_path(VAULT))) == {b.key for b in BIDS}
    store.gets.clear()
    again, _, _ = prune._items(ctx, store, VAULT, "tank")
    assert again == items
    assert store.gets == [] and paths == []
    # a copy replaced since is read from its file (the index's stamp no longer holds)
    cache = MarkCache(spool)
    rewrite_in_place(cache.path(BIDS[0]), mark(BIDS[0], size=7))
    archives = [a for a in check.scan(store, VAULT).values()]
    check.fetch_marks(store, archives, cache=MarkCache(spool))
    assert paths == [cache.path(BIDS[0])] and store.gets == []
    assert {a.bid.key: a.clear.size for a in archives}[BIDS[0].key] == 7


def test_check_reads_the_chains_other_links_through_the_index(tmp_path, monkeypatch):
    """check reads the checked archive's own chunk.0 from the vault, and
    the other links of its chain as ls reads them: through the index."""
    from cryophile import check
    spool = Spool(str(tmp_path / "spool"))
    store = CountingStore(local_vault(tmp_path))
    check.fetch_marks(store, check.scan(store, VAULT).values(), cache=MarkCache(spool))
    store.gets.clear()
    paths = spied(monkeypatch)
    context = check.scan(store, VAULT, "tank")
    one = {BIDS[0].key: context[BIDS[0].key]}
    checker = check.Checker(store, "LOCAL", queued=lambda bid: False,
                            cache=MarkCache(spool), spool=spool)
    checker.metadata(one, context.values())
    assert checker.problems == [] and [a.bid for a in checker.checked] == [BIDS[0]]
    assert store.gets == [BIDS[0].fragment_key(0)] and paths == []


def test_the_mounts_first_listing_reads_each_cached_copy_once(tmp_path, monkeypatch):
    """Whether the index is out of date (each copy read by read_all, whose
    bytes the mount keeps) or current (no copy read there; each read for
    its encrypted manifest), each copy is read once and nothing fetched."""
    from collections import Counter
    from cryophilefs import vaults
    spool = Spool(str(tmp_path / "spool"))
    store = CountingStore(local_vault(tmp_path))
    first = MarkCache(spool)
    first.read_all(VAULT, "")
    for bid in BIDS:
        first.put(bid, mark(bid))           # no index written: out of date
    paths = spied(monkeypatch)
    for fresh in (False, True):
        if fresh:
            cache = MarkCache(spool)
            cache.read_all(VAULT, "")
            cache.save(VAULT)
        paths.clear()
        found, problem = vaults.scan(spool, store, VAULT, set())
        assert problem is None and set(found) == {b.key for b in BIDS}
        assert found[BIDS[0].key].encrypted == b"encrypted"
        assert Counter(paths) == {first.path(b): 1 for b in BIDS}, fresh
        assert store.gets == []
