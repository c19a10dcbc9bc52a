"""zfs send streams: a sequence of 312-byte dmu_replay_record headers, each
followed by a payload whose length depends on the record type.

A plain stream is ``BEGIN … END``.  A package (``zfs send -R`` or ``-I``)
is a compound ``BEGIN`` (with an nvlist payload describing the datasets),
its ``END``, then one ``BEGIN … END`` substream per snapshot sent, and a
final ``END``.  The stream is complete once that last ``END`` is seen.  The
byte order is the sender's: the BEGIN record's magic tells which.
"""

from __future__ import annotations

import struct

from .records import Walker

MAGIC = 0x2F5BACBAC
RECORD = 312
BEGIN, OBJECT, FREEOBJECTS, WRITE, FREE, END, WRITE_BYREF, SPILL, WRITE_EMBEDDED = range(9)
SUBSTREAM, COMPOUNDSTREAM = 1, 2


def byte_order(head: bytes) -> str | None:
    """'<' or '>' if ``head`` (16 bytes at least) starts a zfs send stream."""
    if len(head) < 16 or head[:4] != b"\0\0\0\0":
        return None
    for order in "<>":
        if struct.unpack_from(order + "Q", head, 8)[0] == MAGIC:
            return order
    return None


def nvlist_strings(data: bytes) -> dict[str, str]:
    """The top-level string pairs of an XDR-encoded nvlist (a package's
    header: ``fromsnap``, ``tosnap``); other pairs are skipped by their
    encoded size.  Whatever does not parse is left out."""
    found: dict[str, str] = {}
    if data[:1] != b"\1":                      # NV_ENCODE_XDR
        return found
    pos = 12                                    # encoding header, version, flags
    try:
        while True:
            size, decoded = struct.unpack_from(">ii", data, pos)
            if size <= 0 or decoded == 0:
                return found
            name, at = _xdr_string(data, pos + 8)
            kind, count = struct.unpack_from(">ii", data, at)
            if kind == 9 and count == 1:         # DATA_TYPE_STRING
                found[name] = _xdr_string(data, at + 8)[0]
            pos += size
    except (struct.error, UnicodeDecodeError, ValueError):
        return found


def _xdr_string(data: bytes, pos: int) -> tuple[str, int]:
    (length,) = struct.unpack_from(">I", data, pos)
    if pos + 4 + length > len(data):
        raise ValueError("string beyond the nvlist")
    text = data[pos + 4:pos + 4 + length].decode()
    return text, pos + 4 + (length + 3) // 4 * 4


def _round8(n: int) -> int:
    return (n + 7) & ~7


class ZfsStream(Walker):
    header_size = RECORD

    def __init__(self, order: str):
        super().__init__()
        self.u32 = struct.Struct(order + "I")
        self.u64 = struct.Struct(order + "Q")
        self.type_len = struct.Struct(order + "II")
        self.begin = struct.Struct(order + "QQQIIQQ")
        self.state = "start"        # start | header | between | sub | done
        self.package = False
        self.top: str | None = None         # a package's top-level snapshot name
        self.subs: list[dict] = []          # every substream's BEGIN, in order
        self.header_names: dict[str, str] = {}  # a package's fromsnap, tosnap

    def header(self, h: memoryview) -> int:
        rtype, payload = self.type_len.unpack_from(h)
        if rtype == BEGIN:
            return self._begin(h, payload)
        if self.state in ("start", "done"):
            self.fail(f"a zfs record of type {rtype} outside any stream")
            return 0
        if rtype == END:
            self.state = {"header": "between", "between": "done",
                          "sub": "between" if self.package else "done"}[self.state]
            self.ended = self.state == "done"
            return 0
        if self.state != "sub":
            self.fail(f"a zfs record of type {rtype} outside a substream")
            return 0
        return self._payload(rtype, h, payload)

    def _payload(self, rtype: int, h: memoryview, payload: int) -> int:
        u32, u64 = self.u32.unpack_from, self.u64.unpack_from
        if rtype == WRITE:                  # compressed size if compressed, else logical
            return u64(h, 96)[0] if h[50] else u64(h, 32)[0]
        if rtype == OBJECT:                 # raw bonus length, else bonus length rounded up
            return u32(h, 36)[0] or _round8(u32(h, 28)[0])
        if rtype == SPILL:
            return u64(h, 40)[0] or u64(h, 16)[0]
        if rtype == WRITE_EMBEDDED:
            return _round8(u32(h, 52)[0])
        if rtype in (FREEOBJECTS, FREE, WRITE_BYREF):
            return 0
        return payload        # newer record types: senders that have them fill this in

    def _begin(self, h: memoryview, payload: int) -> int:
        magic, versioninfo, creation, objtype, flags, toguid, fromguid = \
            self.begin.unpack_from(h, 8)
        if magic != MAGIC:
            self.fail("a zfs BEGIN record without the stream magic")
            return 0
        if self.state in ("header", "sub"):
            self.fail("a zfs BEGIN record inside a stream")
            return 0
        toname = bytes(h[56:RECORD]).split(b"\0", 1)[0].decode("utf-8", "replace")
        if versioninfo & 3 == COMPOUNDSTREAM:
            if self.state == "between":
                self.fail("a zfs package inside a package")
                return 0
            self.state, self.package, self.top = "header", True, toname
            if payload and not self.header_names:
                self.keep(payload)
        else:
            self.state = "sub"
            self.subs.append({"toguid": toguid, "fromguid": fromguid, "toname": toname,
                              "creation": creation, "type": objtype, "flags": flags,
                              "features": versioninfo >> 2})
        self.ended = False
        return payload

    def body(self, data: bytes) -> None:
        self.header_names = nvlist_strings(data)

    def identity(self) -> tuple[dict, dict]:
        """(random ids, names) of the snapshot this stream brings.  For a
        package: its top-level dataset, from the first snapshot sent to the
        last (the one the package is named after)."""
        if not self.subs:
            return {}, {}
        first = last = self.subs[0]
        if self.package:
            dataset = (self.top or "").split("@", 1)[0]
            mine = [s for s in self.subs if s["toname"].split("@", 1)[0] == dataset] or self.subs
            first = mine[0]
            last = next((s for s in mine if s["toname"] == self.top), mine[-1])
        ids = {"toguid": str(last["toguid"]),
               "fromguid": str(first["fromguid"]) if first["fromguid"] else None,
               "package": self.package}
        names = {"toname": last["toname"], "creation": last["creation"],
                 "flags": last["flags"], "features": last["features"]}
        if self.package:
            names["package"] = self.top
            for key in ("fromsnap", "tosnap"):
                if key in self.header_names:
                    names[key] = self.header_names[key]
        return ids, names
