"""Chain resolution without the secret key: pure functions, property tests."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryophile import chains, errors
from cryophile.ids import BackupId

VAULT = "0b8c3a7e-5a1d-4f7e-9a53-3f1c2d4e5f60"


@dataclasses.dataclass
class E:
    bid: BackupId
    stream: dict | None = None
    parent: str | None = None


def ulid(n: int) -> str:
    return f"01J{n:023d}"


def key(n: int, prefix: str = "tank") -> str:
    """An archive's key in its vault, as chains names archives: PREFIX/ULID."""
    return f"{prefix}/{ulid(n)}" if prefix else ulid(n)


def zfs(n, to, frm=None, complete=True, prefix="tank"):
    return E(BackupId(VAULT, prefix, ulid(n)),
             {"kind": "zfs", "complete": complete, "toguid": str(to),
              "fromguid": None if frm is None else str(frm), "package": False})


def btrfs(n, uuid, transid, clone=None):
    return E(BackupId(VAULT, "", ulid(n)),
             {"kind": "btrfs", "complete": True, "uuid": uuid, "ctransid": transid,
              "clone_uuid": clone[0] if clone else None,
              "clone_ctransid": clone[1] if clone else None})


def test_zfs_chain_full_first():
    es = [zfs(3, 30, 20), zfs(1, 10), zfs(2, 20, 10)]
    assert [e.bid.ulid for e in chains.chain(es, key(3))] == [ulid(1), ulid(2), ulid(3)]
    assert chains.parents(es) == {key(1): None, key(2): key(1), key(3): key(2)}


def test_btrfs_chain_by_clone_uuid_and_ctransid():
    es = [btrfs(1, "a", 5), btrfs(2, "b", 7, ("a", 5)), btrfs(3, "c", 9, ("b", 7)),
          btrfs(4, "a", 6)]          # same subvolume, another transid: not the parent
    assert [e.bid.ulid for e in chains.chain(es, ulid(3))] == [ulid(1), ulid(2), ulid(3)]


def test_explicit_parent_wins_and_tar_is_full():
    a = E(BackupId(VAULT, "", ulid(1)), {"kind": "tar", "complete": True})
    b = E(BackupId(VAULT, "", ulid(2)), {"kind": "tar", "complete": True}, parent=ulid(1))
    c = E(BackupId(VAULT, "", ulid(3)), None)        # older archive: unknown, full
    assert chains.parents([a, b, c]) == {ulid(1): None, ulid(2): ulid(1), ulid(3): None}
    assert chains.chain([a, b, c], ulid(2)) == [a, b]


def test_missing_link_is_named():
    es = [zfs(1, 10), zfs(3, 30, 20)]
    with pytest.raises(errors.BrokenChainError, match=f"{ulid(3)} needs the zfs snapshot "
                       "with guid 20"):
        chains.chain(es, key(3))
    assert isinstance(chains.parents(es)[key(3)], chains.Missing)


def test_incomplete_archive_is_no_parent():
    es = [zfs(1, 10), zfs(2, 20, 10, complete=False), zfs(3, 30, 20)]
    with pytest.raises(errors.BrokenChainError, match="guid 20"):
        chains.chain(es, key(3))
    with pytest.raises(errors.BrokenChainError, match="incomplete"):
        chains.chain(es, key(2))


def test_loop_is_refused():
    a = E(BackupId(VAULT, "", ulid(1)), parent=ulid(2))
    b = E(BackupId(VAULT, "", ulid(2)), parent=ulid(1))
    with pytest.raises(errors.BrokenChainError, match="loops"):
        chains.chain([a, b], ulid(1))


def test_unknown_archive():
    with pytest.raises(errors.BrokenChainError, match="not in the vault"):
        chains.chain([zfs(1, 10)], key(9))


def test_same_snapshot_twice_takes_latest_before_child():
    es = [zfs(1, 10), zfs(2, 10), zfs(3, 20, 10), zfs(4, 10)]
    assert chains.parents(es)[key(3)] == key(2)


@st.composite
def forests(draw):
    """Random zfs forests: each archive is full or an incremental of an
    earlier one; guids are unique per snapshot."""
    n = draw(st.integers(1, 40))
    ups = [None] + [draw(st.one_of(st.none(), st.integers(0, i - 1))) for i in range(1, n)]
    return ups


@settings(max_examples=200, deadline=None)
@given(forests(), st.randoms(use_true_random=False))
def test_chain_walks_to_the_full_backup(ups, rnd: random.Random):
    es = [zfs(i + 1, 1000 + i, None if up is None else 1000 + up) for i, up in enumerate(ups)]
    shuffled = es[:]
    rnd.shuffle(shuffled)
    for i in range(len(ups)):
        got = chains.chain(shuffled, key(i + 1))
        expect, j = [], i
        while j is not None:
            expect.append(es[j])
            j = ups[j]
        assert got == expect[::-1]
        assert got[0].stream["fromguid"] is None
        # every link follows its parent's snapshot
        for parent, child in zip(got, got[1:]):
            assert child.stream["fromguid"] == parent.stream["toguid"]


@settings(max_examples=200, deadline=None)
@given(forests(), st.data())
def test_removing_an_archive_breaks_exactly_its_dependents(ups, data):
    es = [zfs(i + 1, 1000 + i, None if up is None else 1000 + up) for i, up in enumerate(ups)]
    gone = data.draw(st.integers(0, len(es) - 1))
    broken = chains.dependents(es, key(gone + 1))
    rest = [e for k, e in enumerate(es) if k != gone]
    for e in rest:
        if e.bid.key in broken:
            with pytest.raises(errors.BrokenChainError, match="is broken"):
                chains.chain(rest, e.bid.key)
        else:
            chains.chain(rest, e.bid.key)


def test_one_ulid_under_two_prefixes_is_two_archives():
    """backup --ulid can give two archives the same ULID under two prefixes:
    each is known by PREFIX/ULID; a --parent ULID means the one under the
    child's prefix, else (several elsewhere) any of them, all held."""
    def tar(prefix, n, parent=None):
        return E(BackupId(VAULT, prefix, ulid(n)), {"kind": "tar", "complete": True},
                 parent=parent)
    a, b, child = tar("a", 1), tar("b", 1), tar("b", 2, parent=ulid(1))
    assert chains.parents([a, b, child]) == {"a/" + ulid(1): None, "b/" + ulid(1): None,
                                              "b/" + ulid(2): "b/" + ulid(1)}
    assert chains.chain([child, a, b], "b/" + ulid(2)) == [b, child]
    assert chains.dependents([a, b, child], "a/" + ulid(1)) == set()
    assert chains.dependents([a, b, child], "b/" + ulid(1)) == {"b/" + ulid(2)}
    elsewhere = tar("c", 2, parent=ulid(1))          # neither is under its prefix
    assert sorted(chains.bases([a, b, elsewhere])["c/" + ulid(2)]) == \
        ["a/" + ulid(1), "b/" + ulid(1)]
    for base in ("a/" + ulid(1), "b/" + ulid(1)):
        assert chains.dependents([a, b, elsewhere], base) == {"c/" + ulid(2)}
