"""Progress bars on stderr (tqdm): percentage, bytes, rate and time left.

Shown only when stderr is a terminal and -q was not given (``quiet``): a
pipe, a log file or the journal never get them.  Where the total is known
(restore: the plaintext size from the manifest; freeze of an archive: its
fragments in the spool) the bar shows the percentage and an ETA; thaw's
total grows as downloads start.

Bars are updated from worker threads: ``Bar`` serialises its updates.  A
log line written while bars are shown clears them and draws them again
below it (tqdm's external_write_mode), so neither garbles the other.
Transferred bytes reach the bar of the upload or download under way through
throttle's meters, where the stores account for every byte they move.
"""

from __future__ import annotations

import os
import sys
import threading

from . import throttle

quiet = False       # -q: no bars (set by the command line)
ACTIVE: set = set()     # bars on the screen: log lines clear them first (log.py)
INTERVAL = 0.5      # seconds between redraws


def showing(stream=None) -> bool:
    stream = stream or sys.stderr
    try:
        return not quiet and stream.isatty()
    except (AttributeError, ValueError):
        return False


def columns(stream) -> int:
    """The terminal's width (80 when it says 0, as a fresh pseudo-terminal may)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (OSError, ValueError, AttributeError):
        return 80


class Bar:
    """One bar; a no-op when progress is not shown."""

    def __init__(self, what: str, total: int | None = None, enabled: bool | None = None,
                 stream=None):
        stream = stream or sys.stderr
        self.lock = threading.Lock()
        self.tqdm = None
        if showing(stream) if enabled is None else enabled:
            from tqdm import tqdm
            tqdm.monitor_interval = 0       # no monitor thread of its own
            # "iB" with 1024: 3.00MiB, 2.50MiB/s
            ACTIVE.add(self)
            self.tqdm = tqdm(total=total, desc=what, unit="iB", unit_scale=True,
                             unit_divisor=1024, file=stream, mininterval=INTERVAL,
                             ncols=columns(stream), nrows=24, leave=True, disable=False)

    @property
    def shown(self) -> bool:
        return self.tqdm is not None

    def add(self, n: int) -> None:
        if self.tqdm is not None and n:
            with self.lock:
                self.tqdm.update(n)

    def grow(self, n: int) -> None:
        """More is to come than the total said (thaw: another download starts)."""
        if self.tqdm is not None and n:
            with self.lock:
                self.tqdm.total = (self.tqdm.total or 0) + n
                self.tqdm.refresh()

    def finish(self) -> None:
        if self.tqdm is not None:
            with self.lock:
                self.tqdm.close()
            self.tqdm = None
            ACTIVE.discard(self)


OFF = Bar("", enabled=False)


class Transfers(Bar):
    """A bar fed by the bytes the stores move in one direction ("upload" or
    "download"), while it is open."""

    def __init__(self, what: str, direction: str, total: int | None = None):
        super().__init__(what, total)
        self.meters = throttle.METERS[direction]
        if self.shown:
            self.meters.append(self.add)

    def add(self, n: int) -> None:
        """Bytes moved; the total is only a floor (chunk.0, a download
        repeated after a failed check: bytes nobody announced)."""
        if self.tqdm is not None and n:
            with self.lock:
                if self.tqdm.total is not None and self.tqdm.n + n > self.tqdm.total:
                    self.tqdm.total = self.tqdm.n + n
                self.tqdm.update(n)

    def finish(self) -> None:
        if self.add in self.meters:
            self.meters.remove(self.add)
        super().finish()


def freezing(path: str, what: str) -> Bar:
    """The bar of a sealed archive's freeze, fed as each fragment is stored:
    the bytes its freeze-queue directory ``path`` holds.  None for an archive
    still being written (a daemon looks at it every second: no bar each time)."""
    if not showing() or not os.path.exists(os.path.join(path, "chunk.0")):
        return OFF
    total = 0
    try:
        for name in os.listdir(path):
            if name.startswith("chunk."):
                try:
                    total += os.stat(os.path.join(path, name)).st_size
                except FileNotFoundError:
                    pass
    except FileNotFoundError:
        return OFF
    return Bar(what, total) if total else OFF
