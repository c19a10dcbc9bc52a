"""The stream parsers: whole streams are complete, every cut is not, in one
pass over buffers cut anywhere."""

from __future__ import annotations

import io
import tarfile
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryophile.streams import Stream, Watcher, recognise, tar
from cryophile.streams.records import Walker
from cryophile.streams.zfs import nvlist_strings
from tests.streamgen import (btrfs_streams, tar_streams, xdr_nvlist, zfs_begin, zfs_end,
                             zfs_streams, zfs_substream)

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
cuts = st.lists(st.integers(1, 1 << 14), max_size=30)


def feed_in(w, data: bytes, sizes=()):
    """Feed ``data`` to ``w`` in buffers of the given sizes (then the rest), as
    memoryviews; ``w`` back."""
    view, pos = memoryview(data), 0
    for n in sizes:
        w.feed(view[pos:pos + n])
        pos += n
    w.feed(view[pos:])
    return w


def watch(data: bytes, sizes=()) -> Stream:
    return feed_in(Watcher(), data, sizes).finish()


@SETTINGS
@given(zfs_streams(), cuts, st.data())
def test_zfs_whole_and_cut(stream, sizes, data):
    raw, end, toguid, fromguid, package = stream
    got = watch(raw, sizes)
    assert (got.kind, got.complete, got.reason) == ("zfs", True, None)
    assert got.ids == {"toguid": str(toguid), "fromguid": str(fromguid) if fromguid else None,
                       "package": package}
    assert got.names["toname"].startswith("tank/fs@s")
    for n in data.draw(st.lists(st.integers(0, end - 1), min_size=1, max_size=10)):
        cut = watch(raw[:n], sizes)
        assert cut.complete is not True, n
        assert cut.kind == ("zfs" if n >= 16 else "unknown"), n


@SETTINGS
@given(btrfs_streams(), cuts, st.data())
def test_btrfs_whole_and_cut(stream, sizes, data):
    raw, end, uid, ctransid, clone = stream
    got = watch(raw, sizes)
    assert (got.kind, got.complete, got.reason) == ("btrfs", True, None)
    assert got.ids["uuid"] == str(uuid.UUID(bytes=uid)) and got.ids["ctransid"] == ctransid
    assert got.ids["clone_uuid"] == (str(uuid.UUID(bytes=clone)) if clone else None)
    assert got.names["path"] == "snap"
    for n in data.draw(st.lists(st.integers(13, end - 1), min_size=1, max_size=10)):
        cut = watch(raw[:n], sizes)
        assert (cut.kind, cut.complete) == ("btrfs", False), n


@SETTINGS
@given(tar_streams(), cuts, st.data())
def test_tar_whole_and_cut(stream, sizes, data):
    raw, end = stream
    got = watch(raw, sizes)
    assert (got.kind, got.complete, got.reason) == ("tar", True, None)
    assert watch(raw[:end], sizes).complete          # the padding after the end is optional
    for n in data.draw(st.lists(st.integers(263, end - 1), min_size=1, max_size=10)):
        cut = watch(raw[:n], sizes)
        assert (cut.kind, cut.complete) == ("tar", False), n


def posix_checksum_ok(h: bytes) -> bool:
    """A tar header's checksum as POSIX defines it, byte by byte, or signed as
    old tars wrote it."""
    try:
        want = int(h[148:156].replace(b"\0", b" ").strip(), 8)
    except ValueError:
        return False
    blank = h[:148] + b" " * 8 + h[156:]
    return want in (sum(blank), sum(b - 256 if b >= 128 else b for b in blank))


@SETTINGS
@given(st.binary(min_size=512, max_size=512), st.booleans(),
       st.sampled_from(["unsigned", "signed", "off"]), st.integers(-300, 300),
       st.sampled_from(["%06o\0 ", "%07o\0", "%o", " %6o ", "%08o"]))
def test_tar_checksum_is_posix_s(block, ascii_only, which, off, form):
    h = bytearray(b & 0x7F for b in block) if ascii_only else bytearray(block)
    blank = h[:148] + b" " * 8 + h[156:]
    value = {"unsigned": sum(blank), "signed": sum(b - 256 if b >= 128 else b for b in blank),
             "off": sum(blank) + off}[which]
    h[148:156] = (form % value).encode()[:8].ljust(8, b"\0")
    assert tar.checksum_ok(bytes(h)) == posix_checksum_ok(bytes(h))
    assert tar.checksum_ok(bytes(h) + block[:7]) == posix_checksum_ok(bytes(h))  # 512 only
    if which != "off" and len(form % value) <= 8:       # the field holds it whole
        assert tar.checksum_ok(bytes(h))


@SETTINGS
@given(tar_streams(), cuts, st.data())
def test_a_changed_byte_in_a_tar_header_is_never_whole(stream, sizes, data):
    raw, end = stream
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        headers = [m.offset for m in tf.getmembers()] + [m.offset_data - 512 for m in tf]
    at = data.draw(st.sampled_from(headers)) + data.draw(
        st.integers(0, 511).filter(lambda i: not 148 <= i < 156))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != raw[at]))
    got = watch(raw[:at] + bytes([byte]) + raw[at + 1:], sizes)
    assert got.complete is not True
    assert got.kind == "unknown" or "checksum" in got.reason


@SETTINGS
@given(st.one_of(zfs_streams().map(lambda s: s[0]), btrfs_streams().map(lambda s: s[0]),
                 tar_streams().map(lambda s: s[0])),
       st.binary(min_size=1, max_size=600).filter(lambda b: any(b)), cuts)
def test_data_after_the_end_is_not_a_whole_stream(raw, junk, sizes):
    got = watch(raw + junk, sizes)
    assert got.complete is False and "after" in got.reason


@SETTINGS
@given(st.one_of(zfs_streams().map(lambda s: s[0]), btrfs_streams().map(lambda s: s[0]),
                 tar_streams().map(lambda s: s[0])), cuts)
def test_two_whole_streams_one_after_the_other_are_whole(raw, sizes):
    """btrfs receive and zfs receive take them so; tar -i too."""
    assert watch(raw + raw, sizes).complete is True


@SETTINGS
@given(st.binary(max_size=3000), cuts)
def test_any_bytes_are_judged_without_error(raw, sizes):
    got = watch(raw, sizes)
    assert got.kind in ("zfs", "btrfs", "tar", "unknown")
    assert got.complete is None or got.kind != "unknown"


@SETTINGS
@given(st.sampled_from([zfs_begin("<", 1, 0, "a@b"), zfs_begin(">", 1, 0, "a@b"),
                        b"btrfs-stream\0\1\0\0\0"]), st.binary(max_size=3000), cuts)
def test_garbage_after_a_stream_header_is_never_whole(head, raw, sizes):
    got = watch(head + raw, sizes)
    assert got.kind in ("zfs", "btrfs") and got.complete is False and got.reason


def test_recognition_needs_only_the_first_bytes():
    assert recognise(zfs_begin(">", 1, 0, "a@b")[:16]) == "zfs"
    assert recognise(b"btrfs-stream\0") == "btrfs"
    assert recognise(b"hello") is None
    assert recognise(b"hello", final=True) == "unknown"
    assert recognise(bytes(512)) == "unknown"
    assert watch(b"").kind == "unknown" and watch(b"").complete is None


def test_unknown_input_is_not_checked():
    got = watch(b"just some text\n" * 1000)
    assert (got.kind, got.complete, got.ids, got.names) == ("unknown", None, {}, {})


names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40)


@SETTINGS
@given(st.dictionaries(names, names, max_size=5),
       st.dictionaries(names, st.integers(0, (1 << 64) - 1), max_size=5))
def test_a_package_header_gives_its_string_pairs(strings, others):
    others = {k: v for k, v in others.items() if k not in strings}
    assert nvlist_strings(xdr_nvlist(strings, others)) == strings


@SETTINGS
@given(st.binary(max_size=400))
def test_a_garbled_package_header_gives_what_parses(raw):
    assert isinstance(nvlist_strings(b"\1\1\0\0" + raw), dict)


def test_a_package_names_its_snapshots_in_the_manifest_only():
    header = xdr_nvlist({"fromsnap": "s1", "tosnap": "s3"}, {"guid": 5})
    raw = (zfs_begin("<", 0, 0, "tank/fs@s3", True, header) + zfs_end("<")
           + zfs_substream("<", 3, 1, "tank/fs@s3", []) + zfs_end("<"))
    got = watch(raw)
    assert got.complete and got.ids == {"toguid": "3", "fromguid": "1", "package": True}
    assert (got.names["fromsnap"], got.names["tosnap"], got.names["package"]) == \
        ("s1", "s3", "tank/fs@s3")
    assert "tank" not in str(got.clear()) and "s1" not in str(got.clear())


def test_snapshot_name_from_a_manifest():
    from cryophile.streams import snapshot_name
    assert snapshot_name({"kind": "zfs", "toname": "tank/fs@s3"}) == "tank/fs@s3"
    assert snapshot_name({"kind": "btrfs", "path": "snap"}) == "snap"
    assert snapshot_name({"kind": "tar"}) is None and snapshot_name(None) is None


def rewrite_header(raw: bytes, at: int, field: slice, value: bytes) -> bytes:
    """``raw`` with the tar header at ``at`` given ``value`` in ``field`` and a
    checksum that matches: a header tar itself could have written."""
    h = bytearray(raw[at:at + 512])
    h[field] = value
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return raw[:at] + bytes(h) + raw[at + 512:]


def headers_of(raw: bytes) -> list[int]:
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        return [m.offset for m in tf.getmembers()] + [m.offset_data - 512 for m in tf]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("size", [b"-0001130\0\0\0\0", b"-1\0\0\0\0\0\0\0\0\0\0",
                                  b"  -777     ", b"-00000001274"])
def test_a_tar_size_with_a_sign_is_a_bad_header_not_a_hang(size):
    """int() takes a sign: a negative size once walked the stream backwards to
    the same header, for ever (a hung backup, or a hung write to the mount)."""
    raw, _ = _two_files()
    bad = rewrite_header(raw, headers_of(raw)[-1], slice(124, 124 + len(size)), size)
    for sizes in ((), (1024, 512), (1100,)):
        got = watch(bad, sizes)
        assert (got.kind, got.complete) == ("tar", False)
        assert "bad size field" in got.reason


def _two_files() -> tuple[bytes, int]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in (("a", b"abc"), ("b", b"x" * 700)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue(), tf.offset


class GenericTar(tar.TarStream):
    """Every header through ``TarStream.header`` (no inline reading)."""

    feed = Walker.feed


def walk(cls, data: bytes, sizes) -> tuple:
    w = feed_in(cls(), data, sizes)
    return w.verdict(), w.offset, w.skip, bytes(w.partial), w.ended, w.zeros, w.pax_size


@SETTINGS
@pytest.mark.timeout(300)
@given(tar_streams(), cuts, st.data())
def test_tar_headers_read_inline_are_judged_as_header_judges_them(stream, sizes, data):
    """The inline reading of usual headers changes nothing: the same verdict,
    reason and position as ``header`` alone, for whole streams, cuts, any
    changed byte, and fields rewritten with a good checksum (signs, blanks,
    kinds, sizes, bytes above 127)."""
    raw, end = stream
    at = data.draw(st.sampled_from(headers_of(raw)))
    change = data.draw(st.sampled_from(["none", "cut", "byte", "field"]))
    if change == "cut":
        raw = raw[:data.draw(st.integers(0, len(raw)))]
    elif change == "byte":
        i = at + data.draw(st.integers(0, 511))
        raw = raw[:i] + bytes([data.draw(st.integers(0, 255))]) + raw[i + 1:]
    elif change == "field":
        field = data.draw(st.sampled_from([slice(124, 136), slice(156, 157), slice(0, 8),
                                           slice(482, 483), slice(257, 265)]))
        width = field.stop - field.start
        value = data.draw(st.one_of(
            st.binary(min_size=width, max_size=width),
            st.sampled_from([b"-", b"+", b" ", b"\0", b"7", b"0", b"x", b"g", b"S", b"5",
                             b"\x80", b"\xff"]).map(lambda b: (b * width)[:width]),
            st.integers(-8 ** max(width - 2, 0), 8 ** (width - 1) - 1).map(
                lambda v: (b"%0*o" % (width - 1, v))[:width - 1] + b"\0")))
        raw = rewrite_header(raw, at, field, value)
    assert walk(tar.TarStream, raw, sizes) == walk(GenericTar, raw, sizes)


def _long_names() -> bytes:
    """GNU long names (L headers) and pax (x headers, with a size), bodies of 0–700 bytes."""
    out = b""
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
            for i, size in enumerate((0, 5, 700)):
                info = tarfile.TarInfo(f"{i}-" + "n" * 120)
                info.size = size
                if fmt == tarfile.PAX_FORMAT:
                    info.pax_headers = {"size": str(size)}    # pax's size is the one read
                tf.addfile(info, io.BytesIO(b"d" * size))
        out += buf.getvalue()
    return out


FIELD_VALUES = [
    (slice(124, 136), v) for v in (b"-0000001130\0", b"-1\0" + bytes(9), b" " * 12, bytes(12),
                                   b"00000000000\0", b"77777777777\0", b"\x80" + bytes(10) + b"\1",
                                   b"0000000001x\0", b"+0000001130\0")
] + [(slice(156, 157), bytes([k])) for k in b"0125xgSLK7\0\x80"] + [
    (slice(0, 8), b"\xc3\xa9\xc3\xa9abcd")]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("field,value", FIELD_VALUES)
def test_every_header_of_known_streams_is_judged_inline_as_header_judges_it(field, value):
    raw = _two_files()[0] + _long_names()
    for at in range(0, len(raw), 512):
        for extended in (b"\0", b"\1"):        # old GNU sparse: extension headers follow
            changed = rewrite_header(rewrite_header(raw, at, slice(482, 483), extended),
                                     at, field, value)
            for sizes in ((), (700,), (512, 1), (4096, 1000)):
                assert walk(tar.TarStream, changed, sizes) == walk(GenericTar, changed, sizes)
