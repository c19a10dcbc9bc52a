"""listing.parallel: ranges cut anywhere still give every key once, in order."""

from __future__ import annotations

import bisect
import threading

import pytest
from hypothesis import given, settings, strategies as st

from cryophile.store import listing

KEY = st.text(alphabet=listing.ALPHABET + "é\x7f", min_size=1, max_size=12)


def pager(keys: list[str], size: int, calls: list):
    lock = threading.Lock()

    def page(after: str, upto: str | None):
        with lock:
            calls.append((after, upto))
        start = bisect.bisect_right(keys, after) if after else 0
        got = keys[start:start + size]
        mine = [k for k in got if upto is None or k <= upto]
        full = start + size < len(keys) and len(mine) == len(got)
        return [k.upper() for k in mine], mine, full
    return page


@settings(max_examples=300, deadline=None)
@given(st.sets(KEY, max_size=300), st.integers(1, 7), st.integers(1, 9))
def test_every_key_once_in_order(keys, size, workers):
    keys = sorted(keys)
    calls = []
    got = list(listing.parallel(pager(keys, size, calls), workers))
    assert got == [k.upper() for k in keys]
    assert len(calls) <= 1 + len(keys) // size * workers     # each full page: one cut


def test_one_page_is_one_request():
    calls = []
    keys = sorted(f"tank/{i:04d}/chunk.0" for i in range(10))
    assert len(list(listing.parallel(pager(keys, 1000, calls), 8))) == 10
    assert calls == [("", None)]


def test_ulid_keys_are_listed_in_parallel_with_few_extra_requests():
    import datetime
    import random
    from cryophile.ids import new_ulid
    rng = random.Random(1)
    base = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    nightly = [new_ulid(base + datetime.timedelta(days=d, seconds=rng.randrange(3600)))
               for d in range(3000)]
    keys = sorted(f"tank/{u}/chunk.{n}" for u in nightly for n in range(3))
    calls = []
    got = list(listing.parallel(pager(keys, 1000, calls), 8))
    assert got == [k.upper() for k in keys]
    pages = -(-len(keys) // 1000)
    assert pages < len(calls) <= 3 * pages, len(calls)


def test_a_failing_page_is_raised():
    def page(after, upto):
        if after:
            raise OSError("boom")
        return ["a", "b"], ["a", "b"], True
    with pytest.raises(OSError, match="boom"):
        list(listing.parallel(page, 4))


def test_bounds_cut_every_page_of_expected_keys():
    keys = [f"k{i:03d}" for i in range(25)]
    assert listing.bounds(keys, 10) == ["k009", "k019"]      # 10, 10, then 5 and any new
    assert listing.bounds(keys[:20], 10) == ["k009"]         # the last range holds a page
    assert listing.bounds(keys[:10], 10) == [] and listing.bounds([], 10) == []


@settings(max_examples=300, deadline=None)
@given(st.sets(KEY, max_size=200), st.integers(1, 9), st.integers(1, 9),
       st.sets(KEY, max_size=20), st.sets(KEY, max_size=20))
def test_expected_keys_only_place_ranges(keys, size, workers, gone, added):
    """Whatever was expected (stale: keys gone, keys added since), every key
    comes once, in order; with nothing changed, one request per page."""
    expected = sorted(keys)
    actual = sorted((keys - gone) | added)
    calls = []
    got = list(listing.parallel(pager(actual, size, calls), workers,
                                bounds=listing.bounds(expected, size)))
    assert got == [k.upper() for k in actual]
    if not gone and not added:
        assert len(calls) == max(1, -(-len(actual) // size))


def test_keys_added_at_the_end_cost_only_their_pages():
    keys = [f"tank/{i:05d}/chunk.{n}" for i in range(1000) for n in (0, 1)]
    new = keys + [f"tank/{i:05d}/chunk.{n}" for i in range(1000, 1010) for n in (0, 1)]
    calls = []
    got = list(listing.parallel(pager(new, 100, calls), 8, bounds=listing.bounds(keys, 100)))
    assert got == [k.upper() for k in new]
    assert len(calls) == -(-len(new) // 100) == 21
