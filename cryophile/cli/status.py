"""cryophile status: what the spool's queues hold, while work goes on."""

from __future__ import annotations

import os
import sys

from ..catalog import unsealed_state
from ..spool import QUEUES, FreezeDaemonLock
from ..thaw import DaemonLock
from .common import Context, human

WHAT = {"backup": "being written", "freeze": "waiting to be frozen",
        "thaw": "fragments asked from cold storage", "restore": "thawed, waiting for restore"}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "status", help="show the spool's queues",
        description="Show what the spool's queues hold: archives being written, fragments "
                    "waiting to be frozen, thaws asked for and fragments thawed, and whether "
                    "a `cryophile thaw` and a `cryophile freeze` (or a mount) serve the "
                    "spool.  Works while backups, freezes, thaws or a cryophilefs mount run.")
    p.set_defaults(run=run)


def run(args) -> int:
    ctx = Context(args)
    out = sys.stdout
    out.write(f"spool {ctx.spool.root}\n")
    out.write(f"{'QUEUE':<8} {'ARCHIVES':>8} {'FRAGMENTS':>9} {'BYTES':>11}\n")
    details = []
    for queue in QUEUES:
        archives = list(ctx.spool.archives(queue))
        fragments = size = 0
        for bid in archives:
            numbers = [n for n in ctx.spool.fragments(queue, bid) if n]
            fragments += len(numbers)
            size += sum(_size(ctx.spool.path(queue, bid, n)) for n in numbers)
            state = _state(ctx.spool, queue, bid)
            if numbers or state in ("dead", "abandoned"):
                details.append(f"  {queue:<8} {bid}: {len(numbers)} fragment(s)"
                               f"{', ' + state if state else ''}")
        shown = "-" if queue == "thaw" else human(size)
        out.write(f"{queue:<8} {len(archives):>8} {fragments:>9} {shown:>11}  "
                  f"{WHAT[queue]}\n")
    lock = DaemonLock(ctx.spool)
    serving = os.path.exists(lock.path) and not lock.acquire(create=False)
    lock.release()
    out.write(f"thaw daemon: {'running' if serving else 'not running'}\n")
    freezing = FreezeDaemonLock(ctx.spool)
    freezing = os.path.exists(freezing.path) and freezing.anyone_freezing()
    out.write(f"freeze daemon: {'running' if freezing else 'not running'}\n")
    if details:
        out.write("\n".join(details) + "\n")
    return 0


def _state(spool, queue: str, bid) -> str | None:
    """sealed, or (no chunk.0 yet) writing / dead / abandoned."""
    if queue not in ("backup", "freeze"):
        return None
    if os.path.exists(spool.path("freeze", bid, 0)):
        return "sealed"
    return unsealed_state(spool, bid)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0
