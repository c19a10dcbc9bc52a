"""The read path against its peers, measured interleaved in one run.

    .venv/bin/python benchmarks/restore.py [--size-gib 1] [--big-gib 4] [--repeat 3]
                                           [--mount-only]

For real data (the first GiB of `tar -c /usr`, behind
a line of text) and random data, with lz4
and zstd, one archive is backed up and frozen into a local (file://) vault;
then, round after round:

- baseline: `cat chunk.1 … chunk.N | gpg -d | lz4 -d` (or `zstd -d`) of the
  archive's own fragments (an archive is one OpenPGP message);
- `cryophile restore` from the spool (fragments still in the freeze queue,
  hashed by the writer in this boot: not hashed again);
- `cryophile restore` from the vault (an empty spool, fragments read in
  place: copies, hashed before use as after a reboot);
- `cat` of the archive through a cryophilefs mount of the vault (the
  mount's page cache dropped first), compared with the restore from the vault;
- `rclone cat` of a crypt remote holding the same data, when rclone is
  installed (optional peer).

Each line prints the throughput of both sides, the ratio (above 1.0:
cryophile is faster), CPU-seconds per GiB, how many cores cryophile kept
busy on average (CPU-seconds over wall seconds: 2.00 is both cores) and
peak RSS, with the load average.  ``--big-gib`` restores a bigger archive and reads it through the
mount to check that memory stays flat.  Vault fragments are read once
before the runs, so every side reads them from the page cache.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import (CRYOPHILE, GIB, WORK, Usage, cpu_of, gpg_key,  # noqa: E402
                    mixed_data, random_data, rclone_crypt, rss_kib, unmount, wait_mounted)

VAULT = "5f0c6a8e-0d1e-4b8a-9f2e-000000000003"
ULID = "01J00000000000000000000003"
# Compiled modules cached as an installed package has them (under WORK), even where
# the environment says PYTHONDONTWRITEBYTECODE: else every start compiles ~150 modules.
ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
       "PYTHONPYCACHEPREFIX": str(WORK / "pycache"),
       "CRYOPHILE_LOG": "warn", "CRYOPHILE_LOG_STYLE": "never"}


Result = Usage


def run(cmd, *, shell: bool = False, env=None) -> Result:
    """Run a command to its end: wall seconds, CPU-seconds of it and its children, peak RSS."""
    return common.measure(cmd, shell=shell, env=env, stdin=subprocess.DEVNULL)


def real_data(size: int) -> Path:
    """The first bytes of `tar -c /usr` behind a 512-byte line of text: cut short, a
    recognised tar stream would be refused by backup, and the text makes it no tar."""
    path = WORK / f"real-{size}.bin"
    if not (path.exists() and path.stat().st_size == size):
        with open(mixed_data(size), "rb") as src, open(path, "wb") as f:
            f.write(b"cryophile read-path benchmark\n".ljust(512))
            left = size - 512
            while left:
                block = src.read(min(left, 1 << 20))
                f.write(block)
                left -= len(block)
    return path


class Case:
    """One archive, in the freeze queue of ``spool`` and frozen into ``vaults``."""

    def __init__(self, root: Path, data: Path, codec: str, cert: Path, key: Path):
        self.root, self.data, self.codec, self.key = root, data, codec, key
        self.size = data.stat().st_size
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        self.vaults = root / "vaults"
        self.spool = root / "spool"           # holds the archive in its freeze queue
        self.empty = root / "empty"           # reads from the vault
        self.config = root / "cryophile.toml"
        self.config.write_text(f'[vault.{VAULT}]\nurl = "file://{self.vaults}"\n'
                               f'keyring = ["{cert}"]\n')
        frozen = root / "frozen"
        subprocess.run(CRYOPHILE + ["-S", str(self.spool), "-c", str(self.config), "backup",
                                    "-v", VAULT, "-u", ULID, "-C", codec, "-i", str(data)],
                       env=ENV, check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["cp", "-al", str(self.spool), str(frozen)], check=True)   # links
        subprocess.run(CRYOPHILE + ["-S", str(frozen), "-c", str(self.config), "freeze",
                                    "--once"], env=ENV, check=True)
        shutil.rmtree(frozen)
        self.fragments = sorted(glob.glob(f"{self.vaults}/{VAULT}/{ULID}/chunk.*"),
                                key=lambda p: int(p.rsplit(".", 1)[1]))[1:]
        for path in self.fragments:
            # freeze hard-linked the spool's files, and with them the writer's record
            # that they were hashed in this boot: the vault gets copies without it,
            # so that a restore from the vault hashes them, as after a reboot
            subprocess.run(["cp", "--no-preserve=all", path, path + ".copy"], check=True)
            os.replace(path + ".copy", path)
        for path in self.fragments:          # into the page cache, for every side alike
            with open(path, "rb") as f:
                while f.read(1 << 20):
                    pass

    def restore(self, spool: Path) -> Result:
        if spool == self.empty:
            shutil.rmtree(spool, ignore_errors=True)
        else:
            shutil.rmtree(spool / "restore", ignore_errors=True)
        return run(CRYOPHILE + ["-S", str(spool), "-c", str(self.config), "restore",
                                "-v", VAULT, "-u", ULID, "-k", str(self.key)], env=ENV)

    def baseline(self, genv: dict) -> Result:
        tool = "lz4 -d -q -c" if self.codec == "lz4" else "zstd -d -q -c"
        return run(f"cat {' '.join(self.fragments)} | gpg --batch --quiet --decrypt "
                   f"| {tool} > /dev/null", shell=True, env=genv)


class Mount:
    """cryophilefs over a case's vault; CPU and peak RSS read from /proc.

    Mounted afresh for each round, so that its `cat` is a first read (every
    fragment hashed), as restore's is; a second `cat` in the same mount is
    the re-read (fragments checked before and unchanged are not hashed again).
    """

    def __init__(self, case: Case):
        self.mnt = case.root / "mnt"
        self.mnt.mkdir(exist_ok=True)
        shutil.rmtree(case.root / "fs-spool", ignore_errors=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cryophilefs", "-f", "-q", "-S", str(case.root / "fs-spool"),
             "-c", str(case.config), "-k", str(case.key), str(self.mnt)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=ENV)
        wait_mounted(self.mnt, self.proc)
        self.archive = self.mnt / VAULT / ULID

    def _stat(self) -> float:
        return cpu_of(self.proc.pid)

    def peak_rss_kib(self) -> int:
        return self.rss_kib("VmHWM")

    def rss_kib(self, field: str) -> int:
        return rss_kib(self.proc.pid, field)

    def cat(self) -> Result:
        with open(self.archive, "rb") as f:      # cold: none of it in the page cache
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        before = self._stat()
        r = run(["cat", str(self.archive)])
        r.cpu += self._stat() - before
        r.rss_kib = self.peak_rss_kib()
        return r

    def close(self) -> None:
        if unmount(self.mnt, self.proc) != 0:
            raise SystemExit(f"cryophilefs exited with {self.proc.returncode}")


def rclone_case(case: Case, root: Path) -> tuple[list[str], dict] | None:
    """A local rclone crypt remote holding the case's plaintext (optional peer)."""
    env = rclone_crypt(root)
    if env is None:
        return None
    subprocess.run(["rclone", "copyto", str(case.data), "crypt:data"], env=env, check=True)
    return ["rclone", "cat", "crypt:data"], env


def line(what: str, size: int, ours: list[Result], base: list[Result], base_name: str) -> None:
    o = min(ours, key=lambda r: r.seconds)
    b = min(base, key=lambda r: r.seconds)
    gib = size / GIB
    print(f"  {what:<22} {size / o.seconds / 1e6:7.1f} MB/s {o.cpu / gib:5.2f} CPU-s/GiB "
          f"{o.cpu / o.seconds:4.2f} cores {o.rss_kib / 1024:4.0f} MiB | {base_name:<14} {size / b.seconds / 1e6:7.1f} MB/s "
          f"{b.cpu / gib:5.2f} CPU-s/GiB | ratio {b.seconds / o.seconds:.2f}x", flush=True)


def load() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def measure(case: Case, repeat: int, genv: dict, mount: bool, rclone,
            mount_only: bool = False) -> None:
    res: dict[str, list[Result]] = {k: [] for k in ("base", "spool", "vault", "mount", "again",
                                                    "rclone")}
    for _ in range(repeat):                # interleaved: load hits every side alike
        if not mount_only:
            res["base"].append(case.baseline(genv))
            res["spool"].append(case.restore(case.spool))
        res["vault"].append(case.restore(case.empty))
        if mount:                          # afresh: a first read, fragments not yet checked
            fs = Mount(case)
            try:
                res["mount"].append(fs.cat())
                res["again"].append(fs.cat())
            finally:
                fs.close()
        if rclone is not None:
            res["rclone"].append(run(rclone[0], env=rclone[1]))
    tool = f"gpg|{case.codec}"
    if not mount_only:
        line("restore from spool", case.size, res["spool"], res["base"], tool)
        line("restore from vault", case.size, res["vault"], res["base"], tool)
    if res["rclone"]:
        line("restore from vault", case.size, res["vault"], res["rclone"], "rclone cat")
    if res["mount"]:
        line("mount cat", case.size, res["mount"], res["vault"], "restore (vault)")
        line("mount cat again", case.size, res["again"], res["vault"], "restore (vault)")
        pairs(case.size, res["mount"], res["vault"])


def pairs(size: int, mount: list[Result], vault: list[Result]) -> None:
    """Round by round (each mount's `cat` against the restore just before it):
    the median ratio and the median of the mount's extra CPU-seconds per GiB,
    steadier than the best of each side when the load changes between rounds."""
    gib = size / GIB
    ratios = sorted(v.seconds / m.seconds for m, v in zip(mount, vault))
    extra = sorted((m.cpu - v.cpu) / gib for m, v in zip(mount, vault))
    print(f"  {'mount cat, by round':<22} ratio median {statistics.median(ratios):.2f}x "
          f"({ratios[0]:.2f}-{ratios[-1]:.2f}), mount CPU-s/GiB minus restore's: median "
          f"{statistics.median(extra):+.2f} ({extra[0]:+.2f} to {extra[-1]:+.2f})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--big-gib", type=int, default=4, help="archive size for the memory check "
                    "(0: none)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; the best of each counts")
    ap.add_argument("--kinds", default="real,random")
    ap.add_argument("--codecs", default="lz4,zstd")
    ap.add_argument("--no-mount", action="store_true")
    ap.add_argument("--mount-only", action="store_true", help="the mount against restore from "
                    "the vault only (no gpg baseline, spool restore or rclone)")
    args = ap.parse_args()
    size = int(args.size_gib * GIB)
    home = WORK / "gnupg"
    _, cert, key = gpg_key(home)
    key.chmod(0o600)                          # else every command warns about it
    genv = {**os.environ, "GNUPGHOME": str(home)}
    root = WORK / "restore"
    print(f"load average {load()} at the start; {os.cpu_count()} CPUs")
    for kind in filter(None, args.kinds.split(",")):
        data = real_data(size) if kind == "real" else random_data(size)
        for codec in args.codecs.split(","):
            print(f"{kind} data, {size / GIB:g} GiB, -C {codec}:", flush=True)
            case = Case(root / f"{kind}-{codec}", data, codec, cert, key)
            rclone = rclone_case(case, case.root) if codec == "lz4" and not args.mount_only \
                else None
            measure(case, args.repeat, genv, not args.no_mount, rclone, args.mount_only)
            shutil.rmtree(case.root)
            print(f"  load average {load()}", flush=True)
    if args.big_gib:
        big = WORK / f"big-{args.big_gib}.tar"
        with open(big, "wb") as f:
            for _ in range(args.big_gib):
                with open(real_data(size), "rb") as src:
                    shutil.copyfileobj(src, f, 1 << 20)
        for data, name in ((real_data(size), "small"), (big, "big")):
            case = Case(root / name, data, "lz4", cert, key)
            r = case.restore(case.empty)
            rss_mount = None
            if not args.no_mount:
                fs = Mount(case)
                try:
                    rss_mount = fs.cat().rss_kib
                    time.sleep(1)            # the closed reader's memory handed back
                    rss_now = fs.rss_kib("VmRSS")
                finally:
                    fs.close()
            print(f"peak RSS, {case.size / GIB:g} GiB real data -C lz4: restore from vault "
                  f"{r.rss_kib / 1024:.0f} MiB"
                  + (f", mount after cat {rss_mount / 1024:.0f} MiB (peak), "
                     f"{rss_now / 1024:.0f} MiB (now)" if rss_mount else ""),
                  flush=True)
            shutil.rmtree(case.root)
        big.unlink()
    print(f"load average {load()} at the end")


if __name__ == "__main__":
    main()
