"""Where the stores account for the bytes they move: bandwidth limits
(--limit-upload/--limit-download, limit_upload/limit_download in the
configuration) and meters (progress bars).

One token bucket per direction, shared by every thread of the process (the
parallel uploads and parts of a freeze, the downloads of a thaw).  A thread
takes tokens for the bytes it is about to move and sleeps off any debt
outside the lock, so the threads together keep to the rate; the bucket holds
at most a quarter of a second's worth, the only burst allowed.

Where bytes are counted: each byte of an upload's body is charged once, as
the store reads it (over plain HTTP botocore reads a body once more to sign
it; that read does not pay again); each downloaded byte as it arrives,
before it is written out.  Local-directory vaults are limited too, when
their bytes are copied.  Limits are in bytes per second.
"""

from __future__ import annotations

import re
import threading
import time

from . import ids
from .errors import UsageError

BURST = 0.25        # seconds of rate the bucket holds
PACED_BLOCK = 64 << 10      # download unit while limited: pacing stays smooth


class TokenBucket:
    """``take(n)`` returns once n bytes may pass at ``rate`` bytes/s."""

    def __init__(self, rate: float, burst: float = BURST, clock=time.monotonic,
                 sleep=time.sleep):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.capacity = self.rate * burst
        self.clock, self.sleep = clock, sleep
        self.tokens = self.capacity
        self.stamp = clock()
        self.lock = threading.Lock()

    def reserve(self, n: int) -> float:
        """Take n tokens (going into debt if need be); the seconds to wait."""
        with self.lock:
            now = self.clock()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= n
            return -self.tokens / self.rate if self.tokens < 0 else 0.0

    def take(self, n: int) -> None:
        wait = self.reserve(n)
        if wait > 0:
            self.sleep(wait)


UPLOAD: TokenBucket | None = None
DOWNLOAD: TokenBucket | None = None
# callables told of every n bytes moved (progress bars), by direction
METERS: dict[str, list] = {"upload": [], "download": []}


def configure(upload: int | None, download: int | None) -> None:
    """The process's limits, in bytes/s (None: unlimited)."""
    global UPLOAD, DOWNLOAD
    UPLOAD = TokenBucket(upload) if upload else None
    DOWNLOAD = TokenBucket(download) if download else None


def downloaded(n: int) -> None:
    """n bytes just arrived: wait as the download limit says."""
    if DOWNLOAD is not None:
        DOWNLOAD.take(n)
    for meter in list(METERS["download"]):
        meter(n)


def download_block(block: int) -> int:
    """The unit to download in: smaller while limited, so pacing is smooth."""
    return min(block, PACED_BLOCK) if DOWNLOAD is not None else block


def paced_upload(f):
    """``f`` (a file object a store reads an upload's body from), read no
    faster than the upload limit; ``f`` itself when unlimited and unmetered."""
    return f if UPLOAD is None and not METERS["upload"] else Paced(f, UPLOAD)


def paced_bytes(data: bytes):
    """An upload body held in memory (a multipart part), paced the same way."""
    import io
    if UPLOAD is None and not METERS["upload"]:
        return data
    return Paced(io.BytesIO(data), UPLOAD)


class Paced:
    """A readable file whose bytes pay the bucket (if any) and are metered
    once each: a byte read a second time (after a seek back: signing, a
    retry) passes freely."""

    def __init__(self, f, bucket: TokenBucket | None):
        self.f, self.bucket = f, bucket
        self.paid = f.tell()        # bytes before here: not ours to charge

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        end = self.f.tell()
        if end > self.paid:
            if self.bucket is not None:
                self.bucket.take(end - self.paid)
            for meter in list(METERS["upload"]):
                meter(end - self.paid)
            self.paid = end
        return data

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __iter__(self):
        return iter(lambda: self.read(PACED_BLOCK), b"")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


RATE_RE = re.compile(r"^\s*(.*?)\s*(?:/s)?\s*$")


def parse_rate(text: str | int | None, what: str = "rate") -> int | None:
    """Bytes per second from "10M" (10 MiB/s), "512k", "20MB" (decimal),
    "10MiB/s" or a number; 0 or "0" means unlimited (None)."""
    if text is None or text in (0, "0"):
        return None
    if isinstance(text, str):
        text = RATE_RE.match(text).group(1)
        if text.isdigit():
            text = int(text)
            if text == 0:
                return None
    try:
        return ids.parse_size(text, what)
    except UsageError as exc:
        raise UsageError(f"{exc} (a rate in bytes per second, e.g. 10M or 512k)") from None
