"""The mount starts itself again with glibc's huge-page tunable for its heap
(cryophilefs/hugepages.py), unless the user's GLIBC_TUNABLES names it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cryophilefs import hugepages
from tests.fsrig import FsRig, fskeys, needs_fuse  # noqa: F401

TUNABLE = "glibc.malloc.hugetlb"


@pytest.mark.parametrize("tunables, thp, libc, want", [
    ("", "madvise", "glibc 2.36", True),
    ("", "madvise", "glibc 2.35", True),
    ("glibc.malloc.arena_max=1", "madvise", "glibc 2.40", True),
    ("", "madvise", "glibc 2.34", False),          # older: the tunable is unknown there
    ("", "always", "glibc 2.36", False),           # the heap has huge pages anyway
    ("", "never", "glibc 2.36", False),
    ("", "", "glibc 2.36", False),                 # no transparent huge pages at all
    ("", "madvise", "", False),                    # another C library
    ("", "madvise", "musl 1.2", False),
    ("", "madvise", "glibc x.y", False),
    (f"{TUNABLE}=0", "madvise", "glibc 2.36", False),        # turned off by the user
    (f"{TUNABLE}=1", "madvise", "glibc 2.36", False),        # the second start
    (f"glibc.malloc.arena_max=1:{TUNABLE}=2", "madvise", "glibc 2.36", False),
    (f"{TUNABLE}x=1", "madvise", "glibc 2.36", True),        # another name
])
def test_when_the_mount_starts_again(tunables, thp, libc, want):
    assert hugepages.wanted(tunables, thp, libc) is want


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(e.decode().split("=", 1) for e in raw if b"=" in e)


@needs_fuse
@pytest.mark.timeout(120)
@pytest.mark.parametrize("given", [None, f"{TUNABLE}=0"])
def test_a_real_mount_runs_with_huge_pages_unless_told_not_to(tmp_path, fskeys, given):
    """The same process (pid, arguments) runs on with the tunable added, or
    with the user's own setting untouched; it mounts and unmounts cleanly."""
    fs = FsRig(tmp_path, fskeys[0])
    env = {"GLIBC_TUNABLES": given} if given else {}
    with fs.mounted("-k", str(fskeys[1]), env=env):
        seen = environ(fs.proc.pid).get("GLIBC_TUNABLES")
        argv = Path(f"/proc/{fs.proc.pid}/cmdline").read_bytes().split(b"\0")[:-1]
        assert [a.decode() for a in argv[1:]] == fs.command("-k", str(fskeys[1]))[1:]
        assert (fs.mnt / "incoming").is_dir()
    if given:
        assert seen == given
    elif hugepages.wanted(os.environ.get("GLIBC_TUNABLES", ""), hugepages.thp_mode(),
                          hugepages.libc_version()):
        assert seen == f"{TUNABLE}=1"
    else:
        assert seen == os.environ.get("GLIBC_TUNABLES")
