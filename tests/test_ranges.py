"""restore --offset/--length: the fragments a byte range needs, and the
bytes read through only those, over many archive sizes, offsets and lengths.

Archives are written in-process (small fragments and frames, so that ranges
span several fragments) and read with ranges.copy, which refuses to open any
fragment outside the range's selection."""

from __future__ import annotations

import io
import random
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryophile import errors, ranges
from cryophile.pipeline import compress, writer
from tests.fsrig import fskeys  # noqa: F401
from tests.test_read_path import SIZES, Built, mixed, ring  # noqa: F401

MiB = 1 << 20


def copy(built: Built, start: int, end: int) -> tuple[bytes, list[int], set[int]]:
    wanted = ranges.fragments(built.clear, built.body, start, end)
    opened: set[int] = set()

    def path(n: int) -> str:
        opened.add(n)
        return built.path(n)
    out = io.BytesIO()
    written = ranges.copy(built.clear, built.body, built.secret.decrypt_session_key, path, out,
                          start, end, wanted)
    assert written == end - start
    return out.getvalue(), wanted, opened


@pytest.mark.timeout(600)
@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(size=st.one_of(st.sampled_from(SIZES), st.integers(1, 3 * MiB)),
       codec=st.sampled_from(compress.CODECS),
       fragment_size=st.sampled_from([65536 + 3, 100_000, 300_001]),
       frame_size=st.sampled_from([65536 + 13, 100_000]),
       every=st.sampled_from([1, 4, 1000]),
       seed=st.integers(0, 1 << 30))
def test_a_range_reads_only_its_fragments_and_gives_the_original_bytes(
        ring, monkeypatch, size, codec, fragment_size, frame_size, every, seed):
    recipients, secret = ring
    monkeypatch.setattr(compress, "FRAME_SIZE", frame_size)
    # a seek point every frame, every 4 frames, or only where a fragment starts
    monkeypatch.setattr(writer, "INDEX_INTERVAL", every * frame_size)
    rnd = random.Random(seed)
    data = rnd.randbytes(size) if seed % 2 else mixed(size, seed)
    with tempfile.TemporaryDirectory() as root:
        built = Built(root, recipients, secret, data, codec, fragment_size, pieces=1 + seed % 3)
        count = len(built.clear.fragments)
        for _ in range(4):
            offset = rnd.choice([0, rnd.randrange(size + 1), max(0, size - rnd.randrange(1, 9))])
            length = rnd.choice([None, 1, frame_size, frame_size + 1, rnd.randrange(1, 2 * MiB),
                                 size + 10])
            start, end = ranges.span(size, offset, length, "the archive")
            got, wanted, opened = copy(built, start, end)
            assert got == data[offset:None if length is None else offset + length]
            assert opened <= set(wanted)
            if end > start:
                assert wanted[0] == 1       # the session key packets
                if end < size and count > 6 and end - start < fragment_size:
                    assert len(wanted) < count, (start, end, wanted)


def test_an_offset_beyond_the_end_is_an_error():
    with pytest.raises(errors.UsageError, match="beyond the end of A .100 bytes"):
        ranges.span(100, 101, None, "A")
    assert ranges.span(100, 100, 5, "A") == (100, 100)
    assert ranges.span(100, 90, 50, "A") == (90, 100)        # like dd: to the end
    assert ranges.span(100, 10, None, "A") == (10, 100)


def test_a_range_in_the_middle_leaves_out_the_fragments_around_it(ring, tmp_path, monkeypatch):
    recipients, secret = ring
    monkeypatch.setattr(compress, "FRAME_SIZE", 65536)
    monkeypatch.setattr(writer, "INDEX_INTERVAL", 65536)
    data = random.Random(1).randbytes(2 * MiB)
    built = Built(str(tmp_path), recipients, secret, data, "none", 200_000)
    got, wanted, opened = copy(built, MiB, MiB + 1000)
    assert got == data[MiB:MiB + 1000]
    assert wanted == [1, 6] and opened == {1, 6}
    assert ranges.fragments(built.clear, built.body, MiB, MiB) == []
