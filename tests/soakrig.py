"""The crash/fault soak: random kill -9 points, damaged vault objects and failing
producers against real cryophile processes, with invariants checked after each trial.

Two sites, each a spool with its own vault: one ``file://`` directory, one S3
bucket on the moto server reached through the fault proxy (GLACIER, 5 MiB
parts, small fragments, so multipart uploads and many fragments happen with
little data).  Each trial picks an action and a fault from a seeded RNG:

- backup killed (after a delay, or once its producer stalled at a byte count),
  a producer that fails, an empty input, a backup reusing an existing ULID;
- freeze --once killed, S3 faults during freeze, two freeze daemons at once,
  a backup and a freeze daemon killed together;
- restore killed, two restores of one archive at once, a thaw daemon killed
  while a restore waits for it;
- a vault object damaged (a byte flipped, truncated, deleted): its restore must
  fail with exit 8 or 9 (7 when chunk.0 is gone), never exit 0 with wrong bytes;
- a cryophilefs mount killed while a file is written (also right after its
  close returned) or read at random offsets.

The model is what the test believes: a backup that exited 0 is sealed, and so
is a file in the mount whose close() returned 0.  After each trial, on the
sites it touched: a freeze finishes (most of the time) and leaves no multipart
upload; every archive `cryophile ls` shows as complete is one the model knows,
and restores byte for byte (unless the test damaged it; an archive whose ls
state, vault objects and spool files did not change since it last restored is
not restored again, except in the final sweep); no sealed archive is missing;
every command ended within its bound and printed no traceback.

Knobs (environment): CRYOPHILE_SOAK_SEED, CRYOPHILE_SOAK_TRIALS,
CRYOPHILE_SOAK_SECONDS (default 120 s of trials), CRYOPHILE_SOAK_KINDS (only
these trial kinds, comma separated), CRYOPHILE_SOAK_HELD_BACK=1 (also the kinds
test_soak.HELD_BACK leaves out while a known bug is being fixed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from tests.s3rig import remove_bucket


KiB, MiB = 1 << 10, 1 << 20
DEFAULT_SEED = 20261126
DEFAULT_SECONDS = 120.0

# Bounds: generous for a loaded 2-core machine; past one, a command hangs.
BACKUP_BOUND = 90.0
FREEZE_BOUND = 120.0
RESTORE_BOUND = 90.0
LS_BOUND = 60.0
MOUNT_BOUND = 60.0          # mount up, unmount, reader and writer each
DAEMON_BOUND = 240.0        # a daemon's whole life in a trial

# ls states of archives that are not (yet) complete
NOT_COMPLETE = {"writing", "dead", "incomplete", "damaged", "abandoned", "failed"}
ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


# --- budget ------------------------------------------------------------------------

@dataclasses.dataclass
class Budget:
    seed: int
    trials: int | None
    seconds: float | None
    kinds: tuple[str, ...] = ()

    @classmethod
    def from_env(cls) -> "Budget":
        env = os.environ
        trials = int(env["CRYOPHILE_SOAK_TRIALS"]) if env.get("CRYOPHILE_SOAK_TRIALS") else None
        seconds = float(env["CRYOPHILE_SOAK_SECONDS"]) if env.get("CRYOPHILE_SOAK_SECONDS") \
            else (None if trials else DEFAULT_SECONDS)
        kinds = tuple(k for k in env.get("CRYOPHILE_SOAK_KINDS", "").split(",") if k)
        return cls(int(env.get("CRYOPHILE_SOAK_SEED") or DEFAULT_SEED), trials, seconds, kinds)

    def more(self, done: int, elapsed: float) -> bool:
        if self.trials is not None and done >= self.trials:
            return False
        return self.seconds is None or elapsed < self.seconds

    def timeout(self) -> int:
        """For pytest-timeout: the trials, one hung command per trial at worst, the sweep."""
        trials = self.seconds or 0
        if self.trials is not None:
            trials = min(trials or 1e9, self.trials * 60)
        return int(trials + 1200)


# --- processes ---------------------------------------------------------------------

@dataclasses.dataclass
class Run:
    """A finished command."""
    what: str
    rc: int | None
    stdout: bytes
    stderr: bytes
    killed: bool = False        # by the test, on purpose
    overran: bool = False       # past its bound: the test killed it
    bound: float = 0.0
    fed: int = 0                # input bytes the producer delivered
    input_closed: bool = False  # the producer delivered all and closed the pipe

    def last_line(self) -> str:
        lines = self.stderr.decode(errors="replace").strip().splitlines()
        return lines[-1][:300] if lines else ""


class Proc:
    """A subprocess in its own session, with stdout/stderr drained by threads and
    an optional producer on stdin that can stall at a byte count."""

    def __init__(self, what: str, argv: list[str], bound: float, env: dict | None = None,
                 data: bytes | None = None, stall_at: int | None = None,
                 feed_block: int = 64 * KiB):
        self.what, self.bound = what, bound
        self.start = time.monotonic()
        self.killed = False
        self.fed = 0
        self.input_closed = False
        self.stalled = threading.Event()
        self.ended = threading.Event()
        self._out, self._err = bytearray(), bytearray()
        self.p = subprocess.Popen(
            argv, stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            env={**os.environ, "CRYOPHILE_LOG_STYLE": "never", **(env or {})})
        self._threads = [threading.Thread(target=self._drain, args=(self.p.stdout, self._out),
                                          daemon=True),
                         threading.Thread(target=self._drain, args=(self.p.stderr, self._err),
                                          daemon=True)]
        if data is not None:
            self._threads.append(threading.Thread(
                target=self._feed, args=(data, stall_at, feed_block), daemon=True))
        for t in self._threads:
            t.start()

    @staticmethod
    def _drain(pipe, buf: bytearray) -> None:
        for block in iter(lambda: pipe.read1(1 << 16), b""):
            buf += block
        pipe.close()

    def _feed(self, data: bytes, stall_at: int | None, block: int) -> None:
        end = len(data) if stall_at is None else min(stall_at, len(data))
        stdin = self.p.stdin
        try:
            while self.fed < end:
                n = stdin.write(data[self.fed:min(end, self.fed + block)])
                stdin.flush()
                self.fed += n
            if stall_at is not None:
                self.stalled.set()
                self.ended.wait(DAEMON_BOUND)   # keep the pipe open: a stream that stalls
            stdin.close()
            self.input_closed = stall_at is None
        except (BrokenPipeError, OSError, ValueError):
            pass
        finally:
            self.stalled.set()
            try:
                stdin.close()
            except (BrokenPipeError, OSError, ValueError):
                pass

    @property
    def pid(self) -> int:
        return self.p.pid

    def running(self) -> bool:
        return self.p.poll() is None

    def wait(self, timeout: float) -> bool:
        """True if it ended within ``timeout`` (never past its bound)."""
        timeout = min(timeout, self.deadline() - time.monotonic())
        try:
            self.p.wait(max(timeout, 0))
            return True
        except subprocess.TimeoutExpired:
            return False

    def deadline(self) -> float:
        return self.start + self.bound

    def kill(self) -> None:
        """kill -9, the whole session (a command's own children too)."""
        if self.p.poll() is None:
            self.killed = True
        self._killpg(signal.SIGKILL)

    def signal(self, sig: int) -> None:
        if self.p.poll() is None:
            os.kill(self.p.pid, sig)

    def _killpg(self, sig: int) -> None:
        try:
            os.killpg(self.p.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def finish(self) -> Run:
        """Wait for the end, up to the bound; past it, kill and say so."""
        overran = not self.wait(self.deadline() - time.monotonic())
        if overran:
            self._killpg(signal.SIGKILL)
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:   # stuck in the kernel: reported anyway
                pass
        self._killpg(signal.SIGKILL)       # leftovers of a killed command's session
        self.ended.set()
        for t in self._threads:
            t.join(30)
        return Run(self.what, None if overran else self.p.returncode, bytes(self._out),
                   bytes(self._err), killed=self.killed and not overran, overran=overran,
                   bound=self.bound, fed=self.fed, input_closed=self.input_closed)


def run(what: str, argv: list[str], bound: float, **kw) -> Run:
    return Proc(what, argv, bound, **kw).finish()


# --- data --------------------------------------------------------------------------

def make_data(rng: random.Random, size: int) -> bytes:
    """Random and repetitive stretches: compressible, but not trivially."""
    out = bytearray()
    while len(out) < size:
        n = min(size - len(out), rng.randint(1, 256 * KiB))
        if rng.random() < 0.5:
            out += rng.randbytes(n)
        else:
            word = rng.randbytes(rng.randint(1, 64))
            out += (word * (n // len(word) + 1))[:n]
    return bytes(out)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- sites ---------------------------------------------------------------------------

class Site:
    """A spool and its vault: a local directory or an S3 bucket behind the proxy."""

    def __init__(self, name: str, root: Path, cert: Path, key: Path, s3=None):
        self.name, self.cert, self.key = name, cert, key
        self.s3 = s3            # (s3client, proxy) or None
        self.generation = 0
        self.buckets: list[str] = []
        self.renew(root)

    @property
    def is_s3(self) -> bool:
        return self.s3 is not None

    def renew(self, root: Path) -> None:
        """A fresh spool and vault (old ones stay on disk until the test ends)."""
        self.generation += 1
        self.root = root / f"{self.name}{self.generation}"
        self.root.mkdir(parents=True)
        self.spool, self.vaults = self.root / "spool", self.root / "vaults"
        self.config = self.root / "cryophile.toml"
        self.mnt = self.root / "mnt"
        self.mnt.mkdir()
        self.vault = str(uuid.uuid4())
        lines = [f'spool = "{self.spool}"', f"[vault.{self.vault}]",
                 f'keyring = ["{self.cert}"]', 'fragment_size = "256KiB"']
        if self.is_s3:
            client, proxy = self.s3
            client.create_bucket(Bucket=self.vault)
            self.buckets.append(self.vault)
            lines += [f'url = "s3://{self.vault}"', f'endpoint_url = "{proxy.endpoint}"',
                      'storage_class = "GLACIER"', 'part_size = "5MiB"']
        else:
            lines += [f'url = "file://{self.vaults}"']
        self.config.write_text("\n".join(lines) + "\n")

    def remove_buckets(self) -> None:
        """Free the S3 server's memory of every bucket this site made."""
        client = self.s3[0] if self.s3 else None
        for bucket in self.buckets:
            remove_bucket(client, bucket)
        self.buckets.clear()

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "cryophile", "-S", str(self.spool), "-c",
                str(self.config), *args]

    def mount_argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "cryophilefs", "-f", "-S", str(self.spool), "-c",
                str(self.config), "-k", str(self.key), "-o", "thaw_poll=0.2", *args,
                str(self.mnt)]

    def restore_argv(self, a: "Archive") -> list[str]:
        extra = ["-p", a.prefix] if a.prefix else []
        return self.argv("restore", "-v", self.vault, *extra, "-u", a.ulid, "-k", str(self.key))

    # -- the vault, seen from outside ------------------------------------------------

    def objects(self) -> dict[str, tuple]:
        """Every object in the vault: key -> something that changes when it does."""
        found = {}
        if self.is_s3:
            client = self.s3[0]
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.vault):
                for o in page.get("Contents", ()):
                    found[o["Key"]] = (o["Size"], o["ETag"], str(o["LastModified"]))
            return found
        top = self.vaults / self.vault
        for dirpath, _, names in os.walk(top):
            for n in names:
                st = os.stat(os.path.join(dirpath, n))
                found[os.path.relpath(os.path.join(dirpath, n), top)] = (
                    st.st_size, st.st_mtime_ns, st.st_ino)
        return found

    def spool_files(self, key: str) -> tuple:
        out = []
        for q in ("backup", "freeze", "thaw", "restore"):
            d = self.spool / q / self.vault / key
            if d.is_dir():
                for p in sorted(d.iterdir()):
                    try:
                        st = p.stat()
                    except FileNotFoundError:
                        continue
                    out.append((q, p.name, st.st_size, st.st_mtime_ns))
        return tuple(out)

    def ulids(self) -> set[str]:
        """ULIDs of archives without a prefix, in the spool or the vault."""
        found = {k.split("/", 1)[0] for k in self.objects()}
        for q in ("backup", "freeze"):
            d = self.spool / q / self.vault
            if d.is_dir():
                found.update(p.name for p in d.iterdir())
        return {u for u in found if ULID.match(u)}

    def queued(self, key: str) -> bool:
        return (self.spool / "freeze" / self.vault / key).is_dir()

    def uploads(self) -> list[str]:
        if not self.is_s3:
            return []
        resp = self.s3[0].list_multipart_uploads(Bucket=self.vault)
        return [u["Key"] for u in resp.get("Uploads", ())]

    def damage(self, key: str, how: str, rng: random.Random) -> str:
        """Damage one vault object; say what was done."""
        if self.is_s3:
            client = self.s3[0]
            head = client.head_object(Bucket=self.vault, Key=key)
            if how == "delete":
                client.delete_object(Bucket=self.vault, Key=key)
                return f"deleted {key}"
            # A damaged copy of a GLACIER object is readable only once restored:
            # read it back through a restore, as the vault would hand it out.
            sclass = head.get("StorageClass", "STANDARD")
            if sclass in ("GLACIER", "DEEP_ARCHIVE"):
                client.restore_object(Bucket=self.vault, Key=key, RestoreRequest={"Days": 1})
            data = client.get_object(Bucket=self.vault, Key=key)["Body"].read()
            data, what = _damaged(data, how, rng)
            client.put_object(Bucket=self.vault, Key=key, Body=data, StorageClass=sclass)
            return f"{what} {key}"
        path = self.vaults / self.vault / key
        if how == "delete":
            path.unlink()
            return f"deleted {key}"
        data, what = _damaged(path.read_bytes(), how, rng)
        tmp = path.with_name(path.name + ".soak")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return f"{what} {key}"


def _damaged(data: bytes, how: str, rng: random.Random) -> tuple[bytes, str]:
    if how == "truncate" or not data:
        n = rng.randrange(len(data)) if data else 0
        return data[:n], f"truncated to {n} bytes"
    i = rng.randrange(len(data))
    b = bytearray(data)
    b[i] ^= 1 << rng.randrange(8)
    return bytes(b), f"flipped a bit of byte {i} of"


# --- the model ---------------------------------------------------------------------

@dataclasses.dataclass
class Archive:
    site: Site
    trial: int
    name: str
    data: Path                   # the input, kept to compare
    digest: str
    size: int
    status: str                  # sealed | maybe | failed
    complete_input: bool         # its producer delivered the whole stream
    ulid: str | None = None      # None until found by name (mount writes)
    prefix: str = ""
    damaged: str | None = None
    verified: tuple | None = None    # the state it last restored in
    reported: bool = False       # one failure per archive is enough

    @property
    def key(self) -> str:
        return f"{self.prefix}/{self.ulid}" if self.prefix else str(self.ulid)

    def bytes(self) -> bytes:
        return self.data.read_bytes()


@dataclasses.dataclass
class Listed:
    key: str
    state: str
    name: str


# --- scripts run inside the mount's users ----------------------------------------

WRITER = r"""
import os, sys
path, src, block = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = open(src, "rb").read()
def say(*a):
    print(*a, flush=True)
try:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
except OSError as e:
    say("err open", e.errno); sys.exit(0)
off = 0
try:
    while off < len(data):
        off += os.write(fd, data[off:off + block])
        say("w", off)
except OSError as e:
    say("err write", e.errno)
try:
    os.close(fd)
    say("closed", off)
except OSError as e:
    say("err close", e.errno)
"""

READER = r"""
import hashlib, json, os, sys, time
path, reads = sys.argv[1], json.loads(sys.argv[2])
def say(**kw):
    print(json.dumps(kw), flush=True)
deadline = time.monotonic() + 20
while True:
    try:
        fd = os.open(path, os.O_RDONLY); break
    except OSError as e:
        if e.errno != 2 or time.monotonic() > deadline:
            say(op="open", errno=e.errno); sys.exit(0)
        time.sleep(0.1)
for off, n in reads:
    try:
        got = os.pread(fd, n, off)
        say(op="pread", off=off, n=len(got), sha=hashlib.sha256(got).hexdigest())
    except OSError as e:
        say(op="pread", off=off, errno=e.errno)
h, off = hashlib.sha256(), 0
try:
    while True:
        got = os.pread(fd, 1 << 20, off)
        if not got:
            break
        h.update(got); off += len(got)
    say(op="all", n=off, sha=h.hexdigest())
except OSError as e:
    say(op="all", n=off, sha=h.hexdigest(), errno=e.errno)
"""


class Mount:
    """cryophilefs -f on a site's mount point; lazily unmounted on any trouble."""

    def __init__(self, site: Site):
        self.site = site
        self.proc = Proc(f"cryophilefs on {site.name}", site.mount_argv(), DAEMON_BOUND)

    def wait_up(self) -> bool:
        deadline = time.monotonic() + MOUNT_BOUND
        while not os.path.ismount(self.site.mnt):
            if not self.proc.running() or time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def why(self) -> str:
        lines = bytes(self.proc._err).decode(errors="replace").strip().splitlines()
        state = "running" if self.proc.running() else f"exited {self.proc.p.returncode}"
        return f"{state}; {lines[-1][:300] if lines else 'no output'}"

    def unmount(self) -> tuple[Run, bool]:
        """(the mount's run, whether a clean unmount worked)."""
        clean = False
        if self.proc.running() and os.path.ismount(self.site.mnt):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if subprocess.run(["fusermount3", "-u", str(self.site.mnt)],
                                  capture_output=True, timeout=30).returncode == 0:
                    clean = True
                    break
                time.sleep(0.1)
        if clean:
            self.proc.wait(MOUNT_BOUND)
        self.lazy()
        return self.proc.finish(), clean

    def lazy(self) -> None:
        """Always: a killed mount leaves a dead one (ENOTCONN) until this."""
        subprocess.run(["fusermount3", "-uz", str(self.site.mnt)], capture_output=True,
                       timeout=30)
        if self.proc.running():
            self.proc.wait(5)


def fuse_available() -> bool:
    return os.path.exists("/dev/fuse") and os.getuid() == 0 and subprocess.run(
        ["which", "fusermount3"], capture_output=True).returncode == 0


def help_text(argv: list[str]) -> str:
    r = run("help", argv, LS_BOUND)
    return (r.stdout + r.stderr).decode(errors="replace")


Trial = Callable[[random.Random], list[Site]]
