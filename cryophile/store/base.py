"""The storage interface every vault backend implements.

Keys are the archive layout relative to the vault root:
``PREFIX/ULID/chunk.N`` (``ULID/chunk.N`` without a prefix).

Backends are synchronous and thread-safe: callers in trio run them through
``trio.to_thread.run_sync`` with a capacity limiter.  Methods raise
``cryophile.errors.StoreError`` (``TransientStoreError`` for retryable
failures, ``NotRestoredError`` when an archived object must be thawed first,
``NotFoundError`` for a missing key, ``ConflictError`` when a put meets
another object under its key).

Objects are never replaced: a vault may hold archives written by other
hosts, and a backup named with ``-u ULID`` must not clobber one of them.
"""

from __future__ import annotations

import abc
import dataclasses
import datetime
import enum
import hashlib
from typing import BinaryIO, Iterable, Iterator

from cryophile.errors import ConflictError

HASH_BLOCK = 1 << 20


class State(enum.Enum):
    AVAILABLE = "available"      # readable now (STANDARD class, local, or restored)
    ARCHIVED = "archived"        # in an archived class, no restore requested
    RESTORING = "restoring"      # restore requested and still ongoing


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    state: State = State.AVAILABLE
    storage_class: str = "STANDARD"
    sha256: bytes | None = None      # when the store knows it (head only)
    modified: datetime.datetime | None = None    # when stored (list and head; else None)


class Store(abc.ABC):
    """A vault: a flat namespace of immutable objects."""

    url: str = ""

    @abc.abstractmethod
    def put(self, key: str, path: str, *, size: int, sha256: bytes | None = None,
            storage_class: str | None = None) -> None:
        """Store the file at ``path`` under ``key``, atomically: afterwards the
        object is whole or absent.  Never replaces an object: if ``key``
        exists with the same size and SHA-256 (an earlier put of these bytes
        whose answer was lost) the put succeeds; otherwise it raises
        ConflictError and leaves the object alone.  ``sha256`` is computed
        from the file when not given."""

    @abc.abstractmethod
    def get(self, key: str, out: BinaryIO, *, start: int = 0, end: int | None = None) -> int:
        """Copy bytes [start, end) of ``key`` into ``out``; return the count.
        Raises NotRestoredError for an archived object that is not restored."""

    @abc.abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Size, storage class and thaw state of ``key`` (NotFoundError if absent)."""

    @abc.abstractmethod
    def request_restore(self, key: str, *, tier: str, days: int) -> None:
        """Ask for an archived object to be made readable.  A restore already
        in progress, or an object that needs none, is not an error."""

    @abc.abstractmethod
    def list(self, prefix: str = "", *, expected: Iterable[str] = ()) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``; state as far as
        the listing tells (S3 sends the restore status of archived objects;
        listing does not call head).  ``expected``: keys the caller
        believes are there, a hint that may make the listing cheaper; the
        result never depends on it."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; removing an absent key is not an error."""

    def abort_uploads(self, prefix: str) -> int:
        """Abort unfinished multipart uploads under ``prefix`` (left by a killed
        freeze); return how many.  Stores without them have nothing to do."""
        return 0

    def close(self) -> None:
        """Release connections."""


def file_sha256(path: str) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            h.update(block)
    return h.digest()


def check_same(url: str, key: str, size: int, sha256: bytes, existing: ObjectInfo) -> None:
    """A put found ``existing`` under ``key``: fine if it holds the same
    bytes, else ConflictError (the object is not touched)."""
    if existing.size == size and existing.sha256 == sha256:
        return
    why = ("with different content" if existing.size != size or existing.sha256 is not None
           else "and its SHA-256 is unknown, so it cannot be compared")
    raise ConflictError(f"{key} already exists in {url} {why}: not overwritten "
                        "(the local copy stays in the spool)")
