"""Names and values from the command line: prefixes within the S3 key limit,
timestamps over the whole range a ULID and an archive can hold, sizes."""

from __future__ import annotations

import datetime

import hypothesis.strategies as st
import pytest
from hypothesis import given

from cryophile import ids
from cryophile.errors import UsageError

ULID_0 = "0" * 26


# --- prefixes ----------------------------------------------------------------------

def test_limit_follows_the_key_layout():
    # PREFIX "/" ULID(26) "/chunk." N(6 digits): 1 + 26 + 7 + 6 = 40 bytes besides the prefix
    assert ids.prefix_limit() == 1024 - 40 == 984
    assert ids.prefix_limit(9) == 1024 - 35
    assert ids.prefix_limit(base="backups/host1") == 984 - len("backups/host1/")


def _prefix(length: int) -> str:
    parts, left = [], length
    while left > 0:
        take = min(200, left)
        parts.append("p" * take)
        left -= take + 1
    text = "/".join(parts)
    return text[:length] if len(text) >= length else text + "q" * (length - len(text))


@given(st.integers(1, 1100), st.sampled_from(["", "a", "backups/host1"]))
def test_accepted_prefixes_make_keys_within_1024_bytes(length, base):
    prefix = _prefix(length).rstrip("/")
    try:
        parsed = ids.parse_prefix(prefix, base=base)
    except UsageError as exc:
        assert len(prefix.encode()) > ids.prefix_limit(base=base)
        assert str(ids.prefix_limit(base=base)) in str(exc)
        return
    bid = ids.BackupId("v", parsed, "7" + "Z" * 25)
    key = bid.fragment_key(10 ** ids.FRAGMENT_DIGITS - 1)
    assert len(((base + "/") if base else "") + key) <= ids.MAX_KEY


def test_the_old_996_byte_prefix_is_refused():
    prefix = _prefix(996)
    assert len(prefix) == 996
    with pytest.raises(UsageError, match="at most 984"):
        ids.parse_prefix(prefix)


def test_fragment_key_past_1024_bytes_is_refused():
    bid = ids.BackupId("v", _prefix(984), ULID_0)
    assert len(bid.fragment_key(999999)) == 1024
    with pytest.raises(UsageError, match="too many fragments"):
        bid.fragment_key(1000000)


# --- timestamps and ULIDs -----------------------------------------------------------

def test_timestamp_zero_works_and_never_collides():
    first = ids.new_ulid(ids.parse_timestamp("0"))
    second = ids.new_ulid(ids.parse_timestamp("0"))
    assert first != second and first[:10] == second[:10] == "0" * 10
    assert first[10:] != "0" * 15 + "1"       # fresh randomness, not a counter from zero
    assert ids.ulid_time(first) == ids.EPOCH


@given(st.integers(0, ids.LAST_ARCHIVE_MS))
def test_ulid_round_trips_every_millisecond_an_archive_can_have(ms):
    when = ids.EPOCH + datetime.timedelta(milliseconds=ms)
    ulid = ids.new_ulid(when)
    assert ids.parse_ulid(ulid) == ulid
    assert ids.ulid_ms(ulid) == ms and ids.ulid_time(ulid) == when


@given(st.integers(0, ids.LAST_ARCHIVE_MS), st.integers(0, ids.LAST_ARCHIVE_MS))
def test_ulids_sort_by_time(a, b):
    ua = ids.new_ulid(ids.EPOCH + datetime.timedelta(milliseconds=a))
    ub = ids.new_ulid(ids.EPOCH + datetime.timedelta(milliseconds=b))
    if a < b:
        assert ua < ub


@given(st.integers(-10 ** 20, 10 ** 20) | st.decimals(-10 ** 13, 10 ** 13, places=3))
def test_any_number_of_seconds_works_or_says_why(seconds):
    text = str(seconds)
    try:
        ulid = ids.new_ulid(ids.parse_timestamp(text))
    except UsageError as exc:
        assert any(w in str(exc) for w in ("before 1970", "after 2106", "out of range")), exc
        assert seconds < 0 or seconds * 1000 > ids.LAST_ARCHIVE_MS
        return
    assert 0 <= seconds and ids.ulid_ms(ulid) == int(seconds * 1000 // 1)


@given(st.text(max_size=40))
def test_any_text_is_a_timestamp_or_a_usage_error(text):
    try:
        ids.new_ulid(ids.parse_timestamp(text))
    except UsageError:
        pass


@pytest.mark.parametrize("text, needle", [
    ("4294967296", "after 2106-02-07T06:28:15.999Z"),
    ("2106-02-07T06:28:16Z", "32 bits"),
    ("-1", "before 1970"),
    ("1969-12-31T23:59:59Z", "before 1970"),
    ("253402300800", "years 1 to 9999"),
    ("10000-01-01", "years 1 to 9999"),
    ("9999-12-31T23:59:59-05:00", "after 2106"),
])
def test_out_of_range_timestamps_say_so(text, needle):
    with pytest.raises(UsageError, match=needle.replace(".", r"\.")):
        ids.new_ulid(ids.parse_timestamp(text))


def test_last_second_works():
    ulid = ids.new_ulid(ids.parse_timestamp("4294967295.999"))
    assert ids.ulid_ms(ulid) == ids.LAST_ARCHIVE_MS


@pytest.mark.parametrize("ulid", ["7ZZZZZZZZZZZZZZZZZZZZZZZZZ", "03X00000000000000000000000"])
def test_ulids_past_2106_are_refused(ulid):
    with pytest.raises(UsageError, match="no archive can carry"):
        ids.parse_ulid(ulid)


def test_stray_names_past_9999_still_have_a_time():
    assert ids.ulid_time("ZZZZZZZZZZZZZZZZZZZZZZZZZZ").year == 9999


# --- sizes ------------------------------------------------------------------------------

@given(st.integers(1, 10 ** 6), st.sampled_from("KMGTP"))
def test_sizes_binary_and_decimal(n, unit):
    power = "KMGTP".index(unit) + 1
    assert ids.parse_size(f"{n}{unit}") == n * 1024 ** power
    assert ids.parse_size(f"{n}{unit}iB") == n * 1024 ** power
    assert ids.parse_size(f"{n}{unit}B") == n * 1000 ** power
    assert ids.parse_size(f"{n} {unit.lower()}b") == n * 1000 ** power


@pytest.mark.parametrize("bad", [True, 1.5, "1iB", "20 GiBs", "", [1]])
def test_sizes_refused(bad):
    with pytest.raises(UsageError):
        ids.parse_size(bad)
