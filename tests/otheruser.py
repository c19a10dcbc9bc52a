"""Running cryophile as another user (nobody) from a test.

The interpreter, its virtualenv and the source tree must be reachable by
that user.  A Python built under root's home (0700), as pyenv installs one,
or a checkout there, is not: such a test is skipped with that reason, and
runs wherever they are (Debian's own Python, a checkout under /tmp)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys

import cryophile

NOBODY = 65534
SOURCE = os.path.dirname(os.path.dirname(cryophile.__file__))


def as_nobody(*command: str) -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]


@functools.lru_cache(maxsize=None)
def unreachable() -> str:
    """Why nobody cannot run cryophile here ('' when it can)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return "needs root and setpriv to run as another user"
    try:
        proc = subprocess.run(as_nobody(sys.executable, "-c", "import cryophile, trio"),
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": SOURCE})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {sys.executable} as user nobody: {exc}"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return (f"user nobody cannot run {sys.executable} with cryophile from {SOURCE} "
                f"(installed or checked out where only root can reach): {last}")
    return ""
