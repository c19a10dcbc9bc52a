"""Chains of incremental backups, resolved without the secret key.

An archive's parent is the archive its stream must be received on top of:

- ``parent`` in chunk.0's clear JSON (``backup --parent ULID``) names it;
- else a zfs incremental (``stream.fromguid``) follows the archive whose
  ``stream.toguid`` is that guid;
- else a btrfs incremental (``stream.clone_uuid``/``clone_ctransid``)
  follows the archive whose ``stream.uuid``/``ctransid`` are those;
- else the archive is a full backup (no parent).

When several archives hold the parent snapshot (the same snapshot backed up
twice), the latest one made before the child is taken (any would do: the
stream is the same), else the latest one; archives sealed incomplete are
never parents.

These are pure functions over entries of one vault that have ``bid`` (with
``.ulid``, ``.prefix`` and ``.key``), ``stream`` (the clear ``stream`` dict
or None) and ``parent`` (a ULID or None), such as ``catalog.Entry``.  An
archive is known by its key, PREFIX/ULID (``bid.key``), not by its ULID
alone: ``backup --ulid`` can give two archives under two prefixes the same
ULID, and they must not be taken for one another.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

from .errors import BrokenChainError


@dataclasses.dataclass(frozen=True)
class Missing:
    """The parent an incremental needs, not found among the entries."""

    what: str                 # e.g. "the zfs snapshot with guid 123"


@dataclasses.dataclass(frozen=True)
class Link:
    """An entry made from a chunk.0's clear metadata alone."""

    bid: object
    stream: dict | None
    parent: str | None

    @classmethod
    def of(cls, bid, clear) -> "Link":
        return cls(bid, getattr(clear, "stream", None), getattr(clear, "parent", None))


def _stream(entry) -> dict:
    s = getattr(entry, "stream", None)
    return s if isinstance(s, dict) else {}


def _usable(entry) -> bool:
    return _stream(entry).get("complete") is not False


def _wanted(entry) -> tuple[str, object] | None:
    """What the entry's parent must be: ("ulid", U), ("zfs", guid),
    ("btrfs", (uuid, ctransid)), or None for a full backup."""
    if getattr(entry, "parent", None):
        return "ulid", entry.parent
    s = _stream(entry)
    if s.get("kind") == "zfs" and s.get("fromguid"):
        return "zfs", str(s["fromguid"])
    if s.get("kind") == "btrfs" and s.get("clone_uuid"):
        return "btrfs", (s["clone_uuid"], s.get("clone_ctransid"))
    return None


def _provides(entry) -> list[tuple[str, object]]:
    s = _stream(entry)
    keys: list[tuple[str, object]] = [("ulid", entry.bid.ulid)]
    if s.get("kind") == "zfs" and s.get("toguid"):
        keys.append(("zfs", str(s["toguid"])))
    if s.get("kind") == "btrfs" and s.get("uuid"):
        keys.append(("btrfs", (s["uuid"], s.get("ctransid"))))
    return keys


def _describe(want: tuple[str, object]) -> str:
    kind, value = want
    if kind == "ulid":
        return f"archive {value} (its --parent)"
    if kind == "zfs":
        return f"the zfs snapshot with guid {value} (its incremental source)"
    uuid, transid = value                     # type: ignore[misc]
    return f"the btrfs subvolume {uuid} at ctransid {transid} (its send -p parent)"


def parents(entries: Iterable) -> dict[str, str | Missing | None]:
    """Each entry's key (PREFIX/ULID) → its parent's key, None for a full
    backup, or a ``Missing`` saying what it needs when no entry provides it."""
    return {key: (found[0] if isinstance(found, list) else found)
            for key, found in _candidates(entries).items()}


def bases(entries: Iterable) -> dict[str, list[str]]:
    """Each entry's key → the keys of every archive that may be its parent,
    the one ``parents`` takes first: for retention, which errs on keeping.
    A ``--parent ULID`` that several prefixes hold, none of them the
    child's own, may mean any of them."""
    return {key: found for key, found in _candidates(entries).items()
            if isinstance(found, list)}


def _candidates(entries: Iterable) -> dict[str, list[str] | Missing | None]:
    entries = list(entries)
    providers: dict[tuple, list] = {}
    for e in entries:
        for key in _provides(e):
            providers.setdefault(_hashable(key), []).append(e)
    result: dict[str, list[str] | Missing | None] = {}
    for e in entries:
        want = _wanted(e)
        if want is None:
            result[e.bid.key] = None
            continue
        found = [p for p in providers.get(_hashable(want), ())
                 if p.bid.key != e.bid.key and (want[0] == "ulid" or _usable(p))]
        if not found:
            result[e.bid.key] = Missing(_describe(want))
            continue
        same = [p for p in found if p.bid.prefix == e.bid.prefix] or found
        before = [p for p in same if p.bid.ulid < e.bid.ulid] or same
        first = max(before, key=lambda p: (p.bid.ulid, p.bid.prefix))
        others = [p for p in same if p is not first] if want[0] == "ulid" else []
        result[e.bid.key] = [first.bid.key] + sorted(p.bid.key for p in others)
    return result


def _hashable(key: tuple[str, object]) -> tuple:
    kind, value = key
    return (kind, tuple(value) if isinstance(value, (list, tuple)) else value)


def chain(entries: Iterable, key: str) -> list:
    """The entries to receive, in order, full backup first, ending with the
    archive ``key`` (PREFIX/ULID).  Raises BrokenChainError naming the
    missing link, or a loop."""
    entries = list(entries)
    by_key = {e.bid.key: e for e in entries}
    if key not in by_key:
        raise BrokenChainError(f"archive {key} is not in the vault")
    links = parents(entries)
    order = [by_key[key]]
    seen = {key}
    while True:
        here = order[-1]
        if not _usable(here):
            raise BrokenChainError(f"archive {_id(here)} was sealed incomplete: "
                                   f"the chain of {key} cannot be received")
        up = links[here.bid.key]
        if up is None:
            break
        if isinstance(up, Missing):
            raise BrokenChainError(f"the chain of {key} is broken: {_id(here)} needs "
                                   f"{up.what}, which no complete archive in the vault holds")
        if up in seen:
            raise BrokenChainError(f"the chain of {key} loops back to archive {up}")
        seen.add(up)
        order.append(by_key[up])
    return order[::-1]


def dependents(entries: Iterable, key: str) -> set[str]:
    """Keys (PREFIX/ULID) of every archive whose chain may pass through the
    archive ``key`` (its children, their children, …), not ``key`` itself;
    a child whose ``--parent`` may mean it or another (``bases``) counts."""
    children: dict[str, list[str]] = {}
    for child, ups in bases(entries).items():
        for up in ups:
            children.setdefault(up, []).append(child)
    found: set[str] = set()
    todo = [key]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found and child != key:
                found.add(child)
                todo.append(child)
    return found


def ulid_of(key: str) -> str:
    """The ULID of an archive key (PREFIX/ULID)."""
    return key.rpartition("/")[2]


def _id(entry) -> str:
    return str(entry.bid)
