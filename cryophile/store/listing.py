"""Listing a big key space with several requests in flight.

S3 answers a listing 1,000 keys a page, each page asked with the last key
of the one before: 30,000 objects are 30 requests in a row.  Here the key
space is cut into ranges that are listed at once, each with ``StartAfter``:
a range is ``(after, upto]`` (keys greater than ``after`` and at most
``upto``; ``upto`` None is unbounded), so ranges never overlap and always
cover everything, whatever the boundaries.  The boundaries are only a
guess at balance: when a range's page comes back full, the rest of that
range is cut again at the next character after the page's common prefix
(where its keys start to differ: a ULID's time digits in this layout), and
the pieces are listed at once.  A vault that fits in one page costs one
request, as before; a bigger one costs a few more requests than pages
(ranges that turn out empty), in much less wall time.

When the caller knows what keys to expect (a warm cache of chunk.0s
names the archives and their fragments), ``bounds`` places the ranges
from the start so that each holds exactly one page of the expected keys
and the last, unbounded one the rest: an unchanged key space costs one
request per page and not one more; archives added since (new ULIDs come
last) only grow the last range.

Pure: ``page(after, upto)`` does the I/O.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import os
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")

# Characters of the keys this layout makes (prefix characters, ULIDs,
# chunk.N), in byte order: where ranges are cut.
ALPHABET = "".join(sorted(set("!'()*-./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_"
                              "abcdefghijklmnopqrstuvwxyz")))    # (for tests)

# A page: (items, their keys in order, full: whether more may follow in the range)
Page = tuple[list[T], list[str], bool]


CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"     # a ULID's digits
DIGITS = 6                     # places after the common prefix that count


def _alphabets(last: str, at: int) -> list[str]:
    """Per place: Crockford base32 where ``last`` has a ULID digit (then
    keys read as numbers grow with time), else every key character."""
    return [CROCKFORD if i < len(last) and last[i] in CROCKFORD else ALPHABET
            for i in range(at, at + DIGITS)]


def _value(key: str, at: int, alphabets: list[str]) -> int:
    v = 0
    for i, alphabet in enumerate(alphabets, at):
        c = bisect.bisect_left(alphabet, key[i]) if i < len(key) else 0
        v = v * len(alphabet) + min(c, len(alphabet) - 1)
    return v


def _key(stem: str, value: int, alphabets: list[str]) -> str:
    chars = []
    for alphabet in reversed(alphabets):
        value, c = divmod(value, len(alphabet))
        chars.append(alphabet[c])
    return stem + "".join(reversed(chars))


def split(first: str, last: str, upto: str | None, pieces: int) -> list[tuple[str, str | None]]:
    """Cut the range (last, upto] into at most ``pieces`` ranges of about
    one page each, judged by how far apart a full page's ``first`` and
    ``last`` keys are (keys read as numbers after their common prefix:
    ULIDs grow with time); the last range takes whatever lies beyond."""
    at = len(os.path.commonprefix([first, last]))
    if at >= len(last):
        return [(last, upto)]
    stem, alphabets = last[:at], _alphabets(last, at)
    low = _value(last, at, alphabets)
    width = max(low - _value(first, at, alphabets), 1)
    if upto is not None and upto.startswith(stem) and len(upto) > at:
        top = _value(upto, at, alphabets)
        count = max(1, min(pieces, -(-(top - low) // width)))
        step = max((top - low) // count, 1)
    else:                       # unbounded: a page's width each, the rest beyond
        count, step = pieces, width
    bounds = sorted({_key(stem, low + step * k, alphabets) for k in range(1, count)})
    bounds = [b for b in bounds if b > last and (upto is None or b < upto)]
    edges = [last, *bounds, upto]
    return list(zip(edges, edges[1:]))


def bounds(expected: list[str], per_page: int) -> list[str]:
    """Range boundaries for the sorted ``expected`` keys: every
    ``per_page``-th key, so that each range ``(b[i-1], b[i]]`` holds one
    full page of them; the last range, beyond the last boundary, holds the
    remaining 1 to ``per_page`` keys and whatever is added after them."""
    return [expected[i] for i in range(per_page - 1, len(expected) - 1, per_page)]


def parallel(page: Callable[[str, str | None], Page], workers: int,
             pieces: int | None = None, bounds: list[str] | None = None) -> Iterator[T]:
    """Every item of the key space, in key order, listed ``workers`` pages
    at a time.  ``page(after, upto)`` lists one page of the range (after,
    upto] (``after`` "" for the start).  ``bounds`` (sorted, from
    ``bounds``) are the first cuts, and what lies beyond the expected keys
    (new archives) is then listed page after page; without them there is
    one range, cut as its pages come back full.  The first failure is
    raised (and no new request is started after it)."""
    pieces = pieces or workers
    found: list[tuple[str, T]] = []

    def one(after: str, upto: str | None):
        items, keys, full = page(after, upto)
        if keys and keys[-1] == upto:
            full = False                # the range ends at its last key: nothing left
        cuts = 1 if bounds is not None and upto is None else pieces
        rest = split(keys[0], keys[-1], upto, cuts) if full and keys else []
        return list(zip(keys, items)), rest

    edges = ["", *(bounds or ()), None]
    with concurrent.futures.ThreadPoolExecutor(workers, "cryophile-list") as pool:
        todo = {pool.submit(one, a, b) for a, b in zip(edges, edges[1:])}
        try:
            while todo:
                done, todo = concurrent.futures.wait(
                    todo, return_when=concurrent.futures.FIRST_COMPLETED)
                for f in done:
                    got, rest = f.result()
                    found += got
                    todo |= {pool.submit(one, a, b) for a, b in rest}
        except BaseException:
            for f in todo:
                f.cancel()
            raise
    found.sort(key=lambda kv: kv[0])
    return (item for _, item in found)
