"""Synthetic zfs send, btrfs send and tar streams, for property tests of the
stream parsers (the real producers are exercised in test_producers.py).

Each builder returns (stream bytes, length up to and including its end
mark): bytes after that are padding a cut may take away harmlessly.
"""

from __future__ import annotations

import io
import struct
import tarfile

from hypothesis import strategies as st

from cryophile.streams import zfs as z

# --- zfs --------------------------------------------------------------------


def zfs_record(order: str, rtype: int, fields: dict[int, tuple[str, int]],
               payloadlen: int = 0) -> bytearray:
    rec = bytearray(z.RECORD)
    struct.pack_into(order + "II", rec, 0, rtype, payloadlen)
    for offset, (fmt, value) in fields.items():
        struct.pack_into(order + fmt, rec, offset, value)
    return rec


def zfs_begin(order: str, toguid: int, fromguid: int, toname: str, compound=False,
              payload: bytes = b"") -> bytes:
    rec = zfs_record(order, z.BEGIN, {8: ("Q", z.MAGIC), 16: ("Q", 2 if compound else 1),
                                      24: ("Q", 1700000000), 32: ("I", 2), 36: ("I", 4),
                                      40: ("Q", toguid), 48: ("Q", fromguid)}, len(payload))
    name = toname.encode()
    rec[56:56 + len(name)] = name
    return bytes(rec) + payload


def zfs_end(order: str, toguid: int = 0) -> bytes:
    return bytes(zfs_record(order, z.END, {40: ("Q", toguid)}))


# (type, fields of the header, payload length) for data records
zfs_body_record = st.one_of(
    st.integers(0, 600).map(lambda n: (z.OBJECT, {28: ("I", n)}, (n + 7) // 8 * 8)),
    st.integers(1, 300).map(lambda n: (z.OBJECT, {28: ("I", 1), 36: ("I", n)}, n)),
    st.integers(0, 5000).map(lambda n: (z.WRITE, {32: ("Q", n)}, n)),
    st.tuples(st.integers(0, 5000), st.integers(0, 3000)).map(
        lambda t: (z.WRITE, {32: ("Q", t[0]), 50: ("B", 3), 96: ("Q", t[1])}, t[1])),
    st.just((z.FREE, {24: ("Q", 1 << 40)}, 0)),
    st.just((z.FREEOBJECTS, {16: ("Q", 99)}, 0)),
    st.just((z.WRITE_BYREF, {24: ("Q", 4096)}, 0)),
    st.integers(1, 700).map(lambda n: (z.SPILL, {16: ("Q", n)}, n)),
    st.integers(1, 112).map(lambda n: (z.WRITE_EMBEDDED, {52: ("I", n)}, (n + 7) // 8 * 8)),
)


def zfs_substream(order: str, toguid: int, fromguid: int, toname: str, records) -> bytes:
    out = bytearray(zfs_begin(order, toguid, fromguid, toname))
    for rtype, fields, length in records:
        out += zfs_record(order, rtype, fields) + bytes([rtype]) * length
    out += zfs_end(order, toguid)
    return bytes(out)


@st.composite
def zfs_streams(draw, package: bool | None = None):
    """(stream, end, toguid, fromguid, package) of a plain or compound stream."""
    order = draw(st.sampled_from("<>"))
    guids = st.integers(1, (1 << 64) - 1)
    package = draw(st.booleans()) if package is None else package
    n = draw(st.integers(1, 3)) if package else 1
    snaps = [draw(guids) for _ in range(n + 1)]
    fromguid = draw(st.sampled_from([0, snaps[0]]))
    chain = [fromguid] + snaps[1:]
    out = bytearray()
    if package:
        out += zfs_begin(order, 0, 0, f"tank/fs@s{n}", True, draw(st.binary(max_size=300)))
        out += zfs_end(order)
    for i in range(n):
        out += zfs_substream(order, chain[i + 1], chain[i], f"tank/fs@s{i + 1}",
                             draw(st.lists(zfs_body_record, max_size=12)))
    if package:
        out += zfs_end(order)
    return bytes(out), len(out), chain[-1], fromguid, package


# --- btrfs ------------------------------------------------------------------


def btrfs_command(cmd: int, attrs: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(struct.pack("<HH", t, len(v)) + v for t, v in attrs)
    return struct.pack("<IHI", len(body), cmd, 0) + body


@st.composite
def btrfs_streams(draw):
    """(stream, end, uuid bytes, ctransid, clone uuid bytes or None)."""
    uid = draw(st.binary(min_size=16, max_size=16))
    ctransid = draw(st.integers(1, 1 << 40))
    clone = draw(st.none() | st.binary(min_size=16, max_size=16))
    attrs = [(15, b"snap"), (1, uid), (2, struct.pack("<Q", ctransid))]
    if clone is not None:
        attrs += [(20, clone), (21, struct.pack("<Q", 5))]
    out = bytearray(b"btrfs-stream\0" + struct.pack("<I", 1))
    out += btrfs_command(2 if clone else 1, attrs)
    for cmd, data in draw(st.lists(st.tuples(st.integers(3, 20), st.binary(max_size=3000)),
                                   max_size=10)):
        out += btrfs_command(cmd, [(18, data)])
    out += btrfs_command(21, [])
    return bytes(out), len(out), uid, ctransid, clone


# --- tar --------------------------------------------------------------------

tar_member = st.tuples(
    st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                     tarfile.FIFOTYPE]),
    st.integers(0, 3000),
    st.integers(1, 150),          # name length: long names make GNU L / pax x headers
)


@st.composite
def tar_streams(draw):
    """(stream, end) written by Python's tarfile in GNU or pax format."""
    fmt = draw(st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        letter = draw(st.sampled_from("né"))      # é: bytes above 127 in GNU headers
        for i, (kind, size, namelen) in enumerate(draw(st.lists(tar_member, min_size=1,
                                                                 max_size=8))):
            info = tarfile.TarInfo(f"{i}-" + letter * namelen)
            info.type = kind
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = "target"
            if kind == tarfile.REGTYPE:
                info.size = size
                fill = b"\0" if i % 2 else bytes([i % 251 + 1])   # zero data is no end mark
                tf.addfile(info, io.BytesIO(fill * size))
            else:
                tf.addfile(info)
    end = tf.offset
    return buf.getvalue(), end


def xdr_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">I", len(raw)) + raw + bytes(-len(raw) % 4)


def xdr_nvlist(strings: dict[str, str], others: dict[str, int]) -> bytes:
    """An XDR nvlist of string pairs and uint64 pairs, as libnvpair packs it."""
    out = bytearray(b"\1\1\0\0" + struct.pack(">ii", 0, 1))
    pairs = [(k, 9, xdr_string(v)) for k, v in strings.items()]
    pairs += [(k, 8, struct.pack(">Q", v)) for k, v in others.items()]
    for name, kind, value in pairs:
        body = xdr_string(name) + struct.pack(">ii", kind, 1) + value
        out += struct.pack(">ii", 8 + len(body), 8 + len(body)) + body
    return bytes(out + bytes(8))
