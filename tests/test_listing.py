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
