"""Retry transient store failures with exponential backoff and full jitter.

Only ``TransientStoreError`` is retried: 5xx, SlowDown, resets, timeouts.
Everything else (denied, missing bucket, not restored, not found) is a fact
that waiting does not change.  Full jitter (sleep uniformly in
[0, min(cap, base * 2**n)]) keeps many clients from retrying in lockstep.
"""

from __future__ import annotations

import logging
import random
import time
from typing import BinaryIO, Callable, Iterable, Iterator, TypeVar

from cryophile.errors import TransientStoreError
from cryophile.store.base import ObjectInfo, Store

log = logging.getLogger("cryophile.store")
T = TypeVar("T")


class RetryingStore(Store):
    """Wrap ``inner`` so each operation is retried up to ``attempts`` times."""

    def __init__(self, inner: Store, *, attempts: int = 8, base: float = 0.2,
                 cap: float = 20.0, sleep: Callable[[float], None] = time.sleep):
        self.inner = inner
        self.url = inner.url
        self.attempts = max(attempts, 1)
        self.base, self.cap = base, cap
        self._sleep = sleep

    def put(self, key: str, path: str, *, size: int, sha256: bytes | None = None,
            storage_class: str | None = None) -> None:
        # An upload is atomic (whole or absent), so redoing it all is safe.
        self._retry(f"upload of {key}", lambda: self.inner.put(
            key, path, size=size, sha256=sha256, storage_class=storage_class))

    def get(self, key: str, out: BinaryIO, *, start: int = 0, end: int | None = None) -> int:
        counter = _CountingWriter(out)

        def attempt() -> int:
            # Resume after the bytes already written, so none is written twice.
            done = counter.count
            if end is not None and start + done >= end:
                return 0
            return self.inner.get(key, counter, start=start + done, end=end)

        self._retry(f"download of {key}", attempt)
        return counter.count

    def head(self, key: str) -> ObjectInfo:
        return self._retry(f"head of {key}", lambda: self.inner.head(key))

    def request_restore(self, key: str, *, tier: str, days: int) -> None:
        self._retry(f"restore of {key}", lambda: self.inner.request_restore(
            key, tier=tier, days=days))

    def list(self, prefix: str = "", *, expected: Iterable[str] = ()) -> Iterator[ObjectInfo]:
        # Collected first: retrying a half-consumed listing would repeat items.
        expected = tuple(expected)
        return iter(self._retry(f"listing of {prefix!r}",
                                lambda: list(self.inner.list(prefix, expected=expected))))

    def delete(self, key: str) -> None:
        self._retry(f"delete of {key}", lambda: self.inner.delete(key))

    def abort_uploads(self, prefix: str) -> int:
        return self._retry(f"abort of unfinished uploads under {prefix!r}",
                           lambda: self.inner.abort_uploads(prefix))

    def close(self) -> None:
        self.inner.close()

    def _retry(self, what: str, operation: Callable[[], T]) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                return operation()
            except TransientStoreError as exc:
                if attempt == self.attempts:
                    raise type(exc)(f"{exc.message} (gave up after {attempt} attempts)") from exc
                delay = random.uniform(0, min(self.cap, self.base * 2 ** (attempt - 1)))
                log.info("%s: %s; retry %d/%d in %.1f s",
                         what, exc.message, attempt + 1, self.attempts, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")


class _CountingWriter:
    """Passes writes to ``out`` and counts them (``out`` may be a pipe)."""

    def __init__(self, out: BinaryIO):
        self.out = out
        self.count = 0

    def write(self, data: bytes) -> int:
        written = self.out.write(data)
        self.count += len(data) if written is None else written
        return written

    def __getattr__(self, name: str):
        return getattr(self.out, name)
