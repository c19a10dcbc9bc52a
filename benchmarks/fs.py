"""cryophilefs against a do-nothing FUSE filesystem (benchmarks/nullfs.py), same run.

    .venv/bin/python benchmarks/fs.py [--size-gib 1] [--big-gib 4]

write: `dd if=DATA of=MOUNT/incoming/VAULT/bench bs=1M` vs cryophile backup of the
       same data with the same vault settings, two ways: `cryophile backup -i DATA`
       (backup reads the file itself: no producer) and `dd if=DATA bs=1M |
       cryophile backup` (a producer pipe, as in use and as dd into the mount;
       the producer's CPU counted); interleaved, on real data (a
       whole tar of /usr) and random data; once with the mount's freeze running (as
       in use; each written archive is frozen before the next timed run), once with
       it held back (the vault cannot be reached): the write path alone; and, with
       the freeze running, `dd` into `rclone mount` of a local crypt remote (an
       optional peer, when rclone is installed);
read:  `cat MOUNT/VAULT/ULID > /dev/null` vs cat of nullfs's zero file;
memory: peak RSS of the cryophilefs process after writing 1 GiB and 4 GiB.
Prints each figure, its baseline, the ratio, CPU seconds and the load average.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (CRYOPHILE, GIB, WORK, best, compiled, cpu_of, gpg_key,  # noqa: E402
                    load, measure, mixed_data, per_gib, random_data, rate, ratio,
                    rclone_crypt, rss_kib, run, unmount, wait_mounted, whole_mib)

VAULT = "5f0c6a8e-0d1e-4b8a-9f2e-000000000002"
HERE = Path(__file__).resolve().parent


class Mount:
    def __init__(self, command: list[str], mnt: Path, stderr=None, env=None):
        self.mnt = mnt
        mnt.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=stderr, env=env)
        wait_mounted(mnt, self.proc)

    def peak_rss_kib(self) -> int:
        return rss_kib(self.proc.pid)

    def close(self) -> None:
        if unmount(self.mnt, self.proc) != 0:
            raise SystemExit(f"mount process exited with {self.proc.returncode}")


def cryophilefs(root: Path, cert: Path, key: Path, freeze: bool = True) -> Mount:
    """A mount with a local vault.  ``freeze=False``: the vault is a path that
    cannot be a directory, so the mount's freeze fails at once and waits
    (its log goes to a file): the write path measured alone."""
    root.mkdir(parents=True, exist_ok=True)
    spool, vaults = root / "spool", root / "vaults"
    if not freeze:
        vaults.write_text("not a directory\n")
    config = root / "cryophile.toml"
    config.write_text(f'spool = "{spool}"\n[vault.{VAULT}]\nurl = "file://{vaults}"\n'
                      f'keyring = ["{cert}"]\ncompression = "lz4"\n')
    log = None if freeze else open(root / "mount.log", "w")
    return Mount([sys.executable, "-m", "cryophilefs", "-f", "-q", "-c", str(config),
                  "-k", str(key), str(root / "mnt")], root / "mnt", stderr=log)


def wait_frozen(archive: Path, timeout: float = 600) -> None:
    """Until the archive is frozen; a state that can never become "local"
    (a stream cut short is sealed "incomplete") ends the run at once."""
    deadline = time.monotonic() + timeout
    while (state := os.getxattr(archive, "user.cryophile.state")) != b"local":
        if state in (b"incomplete", b"failed"):
            raise SystemExit(f"{archive} is {state.decode()}: the benchmark's data "
                             "must be a whole stream")
        if time.monotonic() > deadline:
            raise SystemExit(f"{archive} not frozen after {timeout} s")
        time.sleep(0.2)


def drop_caches() -> None:
    """Reads start cold (as root; elsewhere the page cache may help both sides)."""
    subprocess.run(["sync"], check=True)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass


def write_series(args, root: Path, cert: Path, key: Path, freeze: bool) -> int:
    """Interleaved runs of cryophile backup and of dd into the mount; returns
    the mount's peak RSS (KiB)."""
    size = whole_mib(args.size_gib)
    fs = cryophilefs(root / "w", cert, key, freeze)
    config = root / "w" / "cryophile.toml"
    cli_spool = root / "cli-spool"
    what = "freeze running" if freeze else "freeze held back"
    rclone = rclone_mount(root / "rclone") if freeze else None
    n = 0
    try:
        for kind, data in (("real", mixed_data(size)), ("random", random_data(size))):
            ours, base, piped, fs_cpu, peer = [], [], [], [], []
            backup = CRYOPHILE + ["-S", str(cli_spool), "-c", str(config), "backup", "-v", VAULT]
            for _ in range(args.repeat):          # interleaved, the best of each
                shutil.rmtree(cli_spool, ignore_errors=True)
                base.append(measure(backup + ["-i", str(data)]))
                shutil.rmtree(cli_spool, ignore_errors=True)
                piped.append(measure(f"set -o pipefail; dd if={data} bs=1M status=none | "
                                     + " ".join(map(shlex.quote, backup)), shell=True))
                n += 1
                before = cpu_of(fs.proc.pid)
                ours.append(measure(f"dd if={data} of={fs.mnt}/incoming/{VAULT}/bench{n} "
                                    "bs=1M status=none", shell=True))
                fs_cpu.append(cpu_of(fs.proc.pid) - before)
                if freeze:                        # untimed: no freeze overlaps the next run
                    for archive in (fs.mnt / VAULT).iterdir():
                        wait_frozen(archive)
                if rclone is not None:
                    peer.append(measure(f"dd if={data} of={rclone.mnt}/bench bs=1M status=none",
                                        shell=True))
                    os.remove(rclone.mnt / "bench")
            b, p = best(base), best(piped)
            i = ours.index(best(ours))
            print(f"write  {kind:6} {what}  mount (dd bs=1M) {rate(size, ours[i].seconds)} "
                  f"(mount {per_gib(size, fs_cpu[i])}, dd {per_gib(size, ours[i].cpu)}, "
                  f"{fs_cpu[i] / ours[i].seconds / 2 * 100:.0f} % of its 2-core ceiling)   "
                  f"backup -i {rate(size, b.seconds)} ({per_gib(size, b.cpu)}) "
                  f"{ratio(b.seconds, ours[i].seconds)}   "
                  f"dd | backup {rate(size, p.seconds)} ({per_gib(size, p.cpu)} with dd) "
                  f"{ratio(p.seconds, ours[i].seconds)}   [{load()}]", flush=True)
            if peer:
                r = best(peer)
                print(f"write  {kind:6} rclone mount (crypt, dd bs=1M) {rate(size, r.seconds)}   "
                      f"{ratio(r.seconds, ours[i].seconds)}", flush=True)
        return fs.peak_rss_kib()
    finally:
        fs.close()
        if rclone is not None:
            rclone.close()
        shutil.rmtree(root / "w", ignore_errors=True)
        shutil.rmtree(cli_spool, ignore_errors=True)


def rclone_mount(root: Path) -> Mount | None:
    """``rclone mount`` of a local crypt remote (writes need no VFS cache when
    sequential, as dd's are), or None without rclone."""
    env = rclone_crypt(root)
    if env is None:
        print("rclone: not installed, its crypt mount skipped")
        return None
    return Mount(["rclone", "mount", "crypt:", str(root / "mnt")], root / "mnt", env=env)


def write_part(args, root: Path, cert: Path, key: Path) -> None:
    rss_small = write_series(args, root, cert, key, freeze=True)
    write_series(args, root, cert, key, freeze=False)
    if not args.big_gib:
        return
    big = cryophilefs(root / "big", cert, key)
    try:
        copies = " ".join([str(mixed_data(whole_mib(args.size_gib)))] * args.big_gib)
        run(f"cat {copies} | dd of={big.mnt}/incoming/{VAULT}/big bs=1M status=none "
            "iflag=fullblock", shell=True)
        rss_big = big.peak_rss_kib()
    finally:
        big.close()
    shutil.rmtree(root / "big", ignore_errors=True)
    print(f"memory peak RSS of the mount: {args.repeat * 2} files of {args.size_gib:g} GiB "
          f"{rss_small / 1024:.0f} MiB, {args.big_gib} GiB in one file {rss_big / 1024:.0f} "
          f"MiB ({(rss_big - rss_small) / rss_small * 100:+.0f} %)   [{load()}]", flush=True)


class RcloneMount(Mount):
    """`rclone mount` of a crypt remote over a local directory holding ``data``
    (the optional peer of reads; its default VFS mode reads through, no cache)."""

    def __init__(self, root: Path, data: Path):
        env = rclone_crypt(root)
        subprocess.run(["rclone", "copyto", str(data), "crypt:data"], env=env, check=True)
        super().__init__(["rclone", "mount", "--read-only", "crypt:", str(root / "mnt")],
                         root / "mnt", stderr=subprocess.DEVNULL, env=env)
        self.file = self.mnt / "data"


def wait_listed(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{path} not listed after {timeout} s")
        time.sleep(0.05)


def timed_cat(path: Path, daemon_pid: int) -> tuple[float, float]:
    """Wall seconds and CPU-seconds (cat and the filesystem's process) of a cold cat."""
    drop_caches()
    before = cpu_of(daemon_pid)
    use = measure(["cat", str(path)])
    return use.seconds, use.cpu + cpu_of(daemon_pid) - before


def read_part(args, root: Path, cert: Path, key: Path) -> None:
    """Cold `cat` of an archive through cryophilefs against nullfs's zero file and
    against `rclone mount` (crypt) of the same data, interleaved, on both kinds.
    cryophilefs is mounted afresh for each timed read, so that every one is a
    first read (a mount does not hash a fragment again that it checked before);
    then one mount reads every archive ``repeat`` times, for its memory."""
    size = int(args.size_gib * GIB) >> 20 << 20   # whole MiB: a whole tar (sealed complete)
    gib = size / GIB
    kinds = (("real", mixed_data(size)), ("random", random_data(size)))
    fs = cryophilefs(root / "one", cert, key)
    try:
        for kind, data in kinds:
            run(f"dd if={data} of={fs.mnt}/incoming/{VAULT}/{kind} bs=1M status=none",
                shell=True)
        archives = {os.getxattr(a, "user.cryophile.name").decode(): a
                    for a in (fs.mnt / VAULT).iterdir()}
        for archive in archives.values():
            wait_frozen(archive)
    finally:
        fs.close()
    null = Mount([sys.executable, str(HERE / "nullfs.py"), str(root / "null"), str(size)],
                 root / "null")
    if shutil.which("rclone") is None:
        print("rclone: not installed, its crypt mount skipped")
    try:
        for kind, data in kinds:
            rclone = RcloneMount(root / f"rclone-{kind}", data) if shutil.which("rclone") else None
            res: dict[str, list[tuple[float, float]]] = {"null": [], "ours": [], "rclone": []}
            try:
                for _ in range(args.repeat):          # interleaved, each from cold
                    res["null"].append(timed_cat(null.mnt / "zero", null.proc.pid))
                    fs = cryophilefs(root / "one", cert, key)
                    try:
                        wait_listed(archives[kind])
                        res["ours"].append(timed_cat(archives[kind], fs.proc.pid))
                    finally:
                        fs.close()
                    if rclone is not None:
                        res["rclone"].append(timed_cat(rclone.file, rclone.proc.pid))
            finally:
                if rclone is not None:
                    rclone.close()
            fastest = {k: min(v) for k, v in res.items() if v}
            ours = fastest["ours"]
            line = (f"read   {kind:6} cryophilefs (cat) {rate(size, ours[0])} "
                    f"({per_gib(size, ours[1])})   nullfs {rate(size, fastest['null'][0])} "
                    f"{ratio(fastest['null'][0], ours[0])}")
            if "rclone" in fastest:
                peer = fastest["rclone"]
                line += (f"   rclone mount (crypt) {rate(size, peer[0])} "
                         f"({per_gib(size, peer[1])}) {ratio(peer[0], ours[0])}")
            print(line + f"   [{load()}]", flush=True)
    finally:
        null.close()
    fs = cryophilefs(root / "one", cert, key)
    try:
        for _ in range(args.repeat):
            for archive in archives.values():
                wait_listed(archive)
                run(["cat", str(archive)])
        time.sleep(1)           # the last reader's memory handed back
        print(f"memory of one mount after {args.repeat * len(archives)} reads of "
              f"{args.size_gib:g} GiB: peak RSS {rss_kib(fs.proc.pid, 'VmHWM') / 1024:.0f} MiB, "
              f"now {rss_kib(fs.proc.pid, 'VmRSS') / 1024:.0f} MiB", flush=True)
    finally:
        fs.close()
    shutil.rmtree(root / "one", ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--big-gib", type=int, default=4, help="data written for the memory check")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each; the best counts")
    ap.add_argument("--part", choices=("write", "read", "all"), default="all")
    args = ap.parse_args()
    compiled()
    _, cert, key = gpg_key(WORK / "gnupg")
    root = WORK / "fs"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    print(f"input: {args.size_gib:g} GiB; {load()}")
    if args.part in ("write", "all"):
        write_part(args, root, cert, key)
    if args.part in ("read", "all"):
        read_part(args, root, cert, key)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
