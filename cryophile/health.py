"""What `cryophile status` reports: queue sizes, ages, daemons, failures.

Everything is read from the spool, without the vaults or a key, so that a
monitoring job can run it as often as it likes.  Two records exist only for
it: ``SPOOL/frozen/VAULT`` (the last archive a freeze completed into
that vault, written when chunk.0 is stored) and the JSON line a thaw-lock
holder writes into ``SPOOL/thaw/.daemon`` (its pid and command).

Blocking file I/O: call from threads.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time

from . import errors, restorequeue
from .catalog import unsealed_state
from .fsutil import replace_file
from .ids import BackupId
from .spool import QUEUES, FreezeDaemonLock, Spool, flock_held, makedirs

log = logging.getLogger("cryophile.health")

FROZEN = "frozen"           # in SPOOL: one file per vault


# --- the last freeze per vault --------------------------------------------------

def frozen_dir(spool: Spool) -> str:
    return os.path.join(spool.root, FROZEN)


def record_frozen(spool: Spool, bid: BackupId, when: float | None = None) -> None:
    """Remember that ``bid`` is now complete in its vault (atomically: a
    reader sees the old record or the new one)."""
    directory = frozen_dir(spool)
    makedirs(directory)
    record = {"time": time.time() if when is None else when, "archive": str(bid)}
    replace_file(os.path.join(directory, bid.vault), (json.dumps(record) + "\n").encode())


def note_frozen(spool: Spool, bid: BackupId) -> None:
    """record_frozen for a freeze that succeeded: a spool that cannot take the
    record is warned about, the freeze stays a success."""
    try:
        record_frozen(spool, bid)
    except OSError as exc:
        log.warning("cannot record the freeze of %s in %s: %s", bid, frozen_dir(spool),
                    exc.strerror or exc)


def last_frozen(spool: Spool) -> dict[str, dict]:
    """vault uuid -> {"time": unix seconds, "archive": "VAULT/PREFIX/ULID"}."""
    found = {}
    directory = frozen_dir(spool)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return found
    except OSError as exc:
        raise errors.from_oserror(exc, f"cannot read {directory}") from None
    for name in sorted(names):
        if name.startswith("."):
            continue
        try:
            with open(os.path.join(directory, name)) as f:
                record = json.load(f)
            found[name] = {"time": float(record["time"]), "archive": str(record["archive"])}
        except (OSError, ValueError, KeyError, TypeError):
            continue        # unreadable: as if never recorded
    return found


# --- who holds a lock -----------------------------------------------------------

def describe_self() -> str:
    """What a lock holder writes into the lock file: one JSON line."""
    return json.dumps({"pid": os.getpid(), "command": " ".join(sys.argv) or "python",
                       "since": time.time()}) + "\n"


def record_holder(fd: int) -> None:
    """Write ``describe_self()`` into a lock file we hold (best effort: the
    lock works without it)."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, describe_self().encode(), 0)
    except OSError:
        pass


def read_holder(path: str) -> dict:
    """The pid and command recorded in a lock file ({} if none)."""
    try:
        with open(path) as f:
            record = json.loads(f.readline() or "{}")
        return {"pid": int(record["pid"]), "command": str(record["command"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def lock_pids(path: str, locks: str = "/proc/locks", proc: str = "/proc") -> list[int]:
    """The pids holding a flock on ``path``, from /proc/locks (Linux; [] when
    it cannot be read).  Shared locks have several holders.

    /proc/locks names a file by its superblock's device (``MAJ:MIN`` in hex)
    and inode number.  That device is not always ``st_dev``: btrfs gives each
    subvolume its own st_dev while its locks show the filesystem's device,
    and inode numbers repeat across subvolumes.  So the device comes from
    the mount table, and a pid is named once its own open files show the
    flock on this very file (not a locker that died, leaving the lock to a
    child).  A pid whose files cannot be read (another user's) is named
    only where st_dev is that device (one inode numbering), else left out
    rather than guessed."""
    try:
        fd = os.open(path, os.O_PATH)       # O_PATH: no read permission needed
    except OSError:
        return []
    try:
        st = os.fstat(fd)
        key = lock_key(fd, st, proc)
        with open(locks) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    finally:
        os.close(fd)
    candidates = set()
    for line in lines:
        fields = line.split()
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
            continue        # "->": a waiter, not a holder
        if fields[5] == key:
            try:
                candidates.add(int(fields[4]))
            except ValueError:
                continue
    device, ino = key.rsplit(":", 1)
    unique = device == lock_device(st.st_dev)
    return sorted(pid for pid in candidates if holds_flock(pid, st, int(ino), proc, unique))


def lock_device(dev: int) -> str:
    """A device as /proc/locks prints it."""
    return f"{os.major(dev):02x}:{os.minor(dev):02x}"


def lock_key(fd: int, st: os.stat_result, proc: str = "/proc") -> str:
    """``MAJ:MIN:INO`` as /proc/locks names the file open on ``fd``: the
    device of its mount's superblock (/proc/self/mountinfo, found by the
    descriptor's mnt_id) and the inode number the kernel holds (fdinfo's
    ino; st_ino where the kernel is too old to say)."""
    dev, ino = st.st_dev, st.st_ino
    try:
        with open(f"{proc}/self/fdinfo/{fd}") as f:
            info = dict(line.split(":", 1) for line in f if ":" in line)
        mnt_id = info["mnt_id"].strip()
        ino = int(info.get("ino", ino))
        with open(f"{proc}/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[0] == mnt_id:
                    major, minor = fields[2].split(":")
                    dev = os.makedev(int(major), int(minor))
                    break
    except (OSError, KeyError, ValueError):
        pass                # no procfs details: st_dev is the best guess
    return f"{lock_device(dev)}:{ino}"


def holds_flock(pid: int, st: os.stat_result, ino: int, proc: str = "/proc",
                unchecked: bool = True) -> bool:
    """Does ``pid`` have a descriptor open on the file ``st`` (inode number
    ``ino`` to the kernel) with a flock on it?  fdinfo lists the locks a
    descriptor holds, and its inode number: only such a descriptor is
    stat'ed (not the others, which may be on a filesystem that hangs).
    ``unchecked`` is the answer when its descriptors cannot be read
    (another user's process); a process that is gone holds nothing."""
    fds = f"{proc}/{pid}/fd"
    try:
        names = os.listdir(fds)
    except PermissionError:
        return unchecked
    except OSError:
        return False
    for name in names:
        try:
            with open(f"{proc}/{pid}/fdinfo/{name}") as f:
                lines = f.read().splitlines()
            if f"ino:\t{ino}" not in lines and any(line.startswith("ino:") for line in lines):
                continue
            if not any(line.startswith("lock:") and " FLOCK " in line and "->" not in line
                       for line in lines):
                continue
            other = os.stat(os.path.join(fds, name))
            if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                return True
        except PermissionError:
            return unchecked
        except OSError:
            continue        # closed meanwhile
    return False


def daemons(spool: Spool) -> dict:
    """Is a thaw daemon (or a mount, or a restore fetching for itself) holding
    the thaw lock, and which process; is any freeze daemon or mount serving."""
    thaw = thaw_daemon(spool)
    freeze_lock = FreezeDaemonLock(spool).path
    running = flock_held(freeze_lock)
    freeze = {"running": running, "pids": lock_pids(freeze_lock) if running else []}
    return {"thaw": thaw, "freeze": freeze}


def thaw_daemon(spool: Spool) -> dict:
    """Is the thaw lock held, by which pid and command (None where unknown)."""
    thaw_lock = os.path.join(spool.queue("thaw"), ".daemon")
    thaw = {"running": flock_held(thaw_lock), "pid": None, "command": None}
    if thaw["running"]:
        holder = read_holder(thaw_lock)
        pids = lock_pids(thaw_lock)
        if pids and holder.get("pid") not in pids:
            holder = {}             # a record left by an earlier holder
        thaw["pid"] = holder.get("pid") or (pids[0] if pids else None)
        thaw["command"] = holder.get("command")
    return thaw


def thaw_holder(spool: Spool) -> str:
    """Who holds the thaw lock, for people: 'pid 12 (cryophile -S /srv thaw)'."""
    thaw = thaw_daemon(spool)
    if thaw["pid"] is None:
        return "another process"
    if not thaw["command"]:
        return f"pid {thaw['pid']}"
    program, _, rest = thaw["command"].partition(" ")
    name = os.path.basename(program)
    if name == "__main__.py":           # python -m PACKAGE
        name = os.path.basename(os.path.dirname(program))
    return f"pid {thaw['pid']} ({' '.join(filter(None, (name, rest)))})"


# --- the whole picture ------------------------------------------------------------

@dataclasses.dataclass
class Queue:
    archives: int = 0
    fragments: int = 0
    bytes: int = 0


def collect(spool: Spool, now: float | None = None) -> dict:
    """Everything `status` shows, as plain JSON-able data (keys in docs)."""
    now = time.time() if now is None else now
    queues, archives, oldest = {}, [], None
    for queue in QUEUES:
        q = Queue()
        for bid in spool.archives(queue):
            q.archives += 1
            numbers = [n for n in spool.fragments(queue, bid) if n]
            q.fragments += len(numbers)
            for n in numbers:
                try:
                    st = os.stat(spool.path(queue, bid, n))
                except FileNotFoundError:
                    continue
                q.bytes += st.st_size
                if queue in ("backup", "freeze"):
                    oldest = st.st_mtime if oldest is None else min(oldest, st.st_mtime)
            state = archive_state(spool, queue, bid)
            if numbers or state in ("dead", "abandoned"):
                archives.append({"queue": queue, "archive": str(bid),
                                 "fragments": len(numbers), "state": state})
        queues[queue] = dataclasses.asdict(q)
    queues["thaw"]["bytes"] = None      # requests are empty files: their size is unknown
    return {
        "spool": spool.root,
        "time": now,
        "queues": queues,
        "oldest_unfrozen_age": None if oldest is None else max(0.0, now - oldest),
        "last_freeze": last_frozen(spool),
        "thaw_requests": thaw_requests(spool),
        "thaw_failures": thaw_failures(spool),
        "daemons": daemons(spool),
        "archives": archives,
    }


def archive_state(spool: Spool, queue: str, bid: BackupId) -> str | None:
    """sealed, or (no chunk.0 yet) writing / dead / abandoned."""
    if queue not in ("backup", "freeze"):
        return None
    if os.path.exists(spool.path("freeze", bid, 0)):
        return "sealed"
    return unsealed_state(spool, bid)


def thaw_requests(spool: Spool) -> int:
    """Fragments asked for and not yet in the restore queue (downloads and
    warm-ups): the thaws in flight."""
    return sum(len(restorequeue.requests(spool, bid))
               + len(restorequeue.requests(spool, bid, warm=True))
               for bid in spool.archives("thaw"))


def thaw_failures(spool: Spool) -> list[dict]:
    """The permanent thaw failures recorded (SPOOL/thaw/…/chunk.N.failed)."""
    found = []
    for bid in spool.archives("thaw"):
        for n, exc in sorted(restorequeue.failures(spool, bid).items()):
            found.append({"archive": str(bid), "fragment": n, "error": exc.message})
    return found
