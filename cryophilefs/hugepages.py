"""Transparent huge pages for the mount's heap (docs/MOUNT.md, Memory).

Every MiB a read returns is copied by the kernel out of a buffer in the
mount's heap, each of its 4 KiB pages pinned first; on 2 MiB pages the pins,
page-table walks and TLB misses of that copy (and of the decompression that
filled the buffer) mostly go.  glibc backs its heap with huge pages under
the tunable ``glibc.malloc.hugetlb=1``, which it reads only when a program
starts: the mount starts itself again with it, before its heavy imports.

Stdlib only, and nothing else imported here: this runs first.
"""

from __future__ import annotations

import os
import signal
import sys

TUNABLE = "glibc.malloc.hugetlb"
THP = "/sys/kernel/mm/transparent_hugepage/enabled"
GLIBC = (2, 35)             # the first glibc with the tunable


def wanted(tunables: str, thp: str, libc: str) -> bool:
    """Start again with the tunable?  Not when ``GLIBC_TUNABLES`` names it
    already (``=0``: the user turned it off; or this is the second start),
    nor unless transparent huge pages are ``madvise`` (``always`` gives them
    to the heap anyway, ``never`` to nothing), nor on another C library or an
    older glibc, which would ignore it."""
    if any(t.split("=", 1)[0] == TUNABLE for t in tunables.split(":")):
        return False
    if thp != "madvise":
        return False
    name, _, version = libc.partition(" ")
    try:
        return name == "glibc" and tuple(map(int, version.split(".")[:2])) >= GLIBC
    except ValueError:
        return False


def thp_mode() -> str:
    """The system's transparent huge page mode (the bracketed word), or ""."""
    try:
        with open(THP) as f:
            text = f.read()
    except OSError:
        return ""
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else ""


def libc_version() -> str:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        return ""


def start_again() -> None:
    """Replace this process (same pid, arguments and environment) by one that
    has glibc's huge-page tunable, if it is wanted; return if not, or if that
    cannot be done.

    A Ctrl-C is not lost in the exec: SIGINT is blocked across it (a signal
    Python's handler had noted but not yet acted on would go with the old
    image), stays pending, and is delivered when the new start unblocks it
    here (KeyboardInterrupt, as anywhere else in start-up)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if not sys.executable or not sys.orig_argv \
            or not wanted(tunables, thp_mode(), libc_version()):
        return
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}=1" if tunables else f"{TUNABLE}=1"
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        os.execve(sys.executable, sys.orig_argv, env)
    except OSError:
        return                  # (runs as it is: only slower)
    finally:                    # (not exec'd, or a noted Ctrl-C raised: let the next in)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
