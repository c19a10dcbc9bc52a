"""Backup and restore throughput and memory, against lz4 | gpg | split in the same run.

    .venv/bin/python benchmarks/pipeline.py [--size-gib 1] [--big-gib 4] [--repeat 3]
                                            [--part backup|restore|all]

backup: `cryophile backup -C lz4` and `-C zstd` against `lz4 -1 | gpg -e | split`
and `zstd -1 | gpg -e | split`, on real data (a whole tar of /usr) and on random
data, runs interleaved (baseline, cryophile, baseline, …), the best of each;
with `-C lz4` also against `restic backup --stdin` (a new local repository,
one run: it is several times slower) and `rclone rcat` to a local crypt
remote, when installed;
then peak RSS of backups of 1 and --big-gib GiB.
Prints each figure with its baseline, the ratio, CPU seconds per GiB, peak RSS
and the load average; see BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (CRYOPHILE, GIB, WORK, best, compiled, gpg_key, load,  # noqa: E402
                    measure, mixed_data, per_gib, random_data, rate, ratio, rclone_crypt, run)

VAULT = "5f0c6a8e-0d1e-4b8a-9f2e-000000000001"
ULID = "01J00000000000000000000000"


class Setup:
    def __init__(self, size: int):
        self.size = size
        self.home = WORK / "gnupg"
        self.fpr, self.cert, self.key = gpg_key(self.home)
        self.genv = {**os.environ, "GNUPGHOME": str(self.home)}
        self.out = WORK / "split"
        self.spool = WORK / "spool"

    def baseline_backup(self, data, codec: str = "lz4"):
        shutil.rmtree(self.out, ignore_errors=True)
        self.out.mkdir(parents=True)
        return measure(f"{codec} -1 -q -c < {data} | gpg --batch --quiet --trust-model always "
                       f"--encrypt --compress-algo none -r {self.fpr} | "
                       f"split -b 64M - {self.out}/chunk.", shell=True, env=self.genv)

    def backup_command(self, codec: str, ulid: bool = True) -> list[str]:
        """``ulid=False``: a new ULID, as a backup without -u makes (-u first
        asks the vault whether it holds that archive already)."""
        return CRYOPHILE + ["-S", str(self.spool), "-c", "/dev/null", "backup", "-v", VAULT,
                            "-k", str(self.cert), "-C", codec] + (["-u", ULID] if ulid else [])

    def our_backup(self, data, codec: str = "lz4", ulid: bool = True):
        shutil.rmtree(self.spool, ignore_errors=True)
        return measure(self.backup_command(codec, ulid) + ["-i", str(data)])

    def restic_backup(self, data):
        """restic into a new repository (an old one would deduplicate the data away)."""
        repo = WORK / "restic"
        shutil.rmtree(repo, ignore_errors=True)
        env = {**os.environ, "RESTIC_PASSWORD": "cryophile-bench", "RESTIC_REPOSITORY": str(repo)}
        run(["restic", "init", "-q"], env=env)
        try:
            return measure(f"restic backup -q --stdin --stdin-filename data < {data}",
                           shell=True, env=env)
        finally:
            shutil.rmtree(repo, ignore_errors=True)

    def rclone_rcat(self, data, env):
        shutil.rmtree(WORK / "rclone" / "rclone", ignore_errors=True)
        return measure(f"rclone rcat crypt:data < {data}", shell=True, env=env)


def backup_part(s: Setup, repeat: int, big_gib: int) -> None:
    size = s.size
    rclone = rclone_crypt(WORK / "rclone")
    restic = shutil.which("restic") is not None
    for kind, data in (("real", mixed_data(size)), ("random", random_data(size))):
        for codec in ("lz4", "zstd"):
            base, ours, peers = [], [], {"restic": [], "rclone": []}
            for i in range(repeat):               # interleaved: load hits all alike
                base.append(s.baseline_backup(data, codec))
                ours.append(s.our_backup(data, codec, ulid=False))
                if codec == "lz4" and restic and i == 0:     # far behind: one run is enough
                    peers["restic"].append(s.restic_backup(data))
                if codec == "lz4" and rclone:
                    peers["rclone"].append(s.rclone_rcat(data, rclone))
            b = best(base)
            o = best(ours)
            print(f"backup -C {codec:4} {kind:6}  {codec}|gpg|split {rate(size, b.seconds)} "
                  f"({per_gib(size, b.cpu)})   cryophile {rate(size, o.seconds)} "
                  f"({per_gib(size, o.cpu)}, peak RSS {o.rss_kib / 1024:.0f} MiB, "
                  f"{o.cpu / o.seconds / 2 * 100:.0f} % of its 2-core ceiling)   "
                  f"{ratio(b.seconds, o.seconds)}   [{load()}]", flush=True)
            for name, runs in peers.items():
                if runs:
                    p = best(runs)
                    what = "restic backup --stdin" if name == "restic" else "rclone rcat (crypt)"
                    print(f"         {kind:6}  {what} {rate(size, p.seconds)} "
                          f"({per_gib(size, p.cpu)})   {ratio(p.seconds, o.seconds)}", flush=True)
    if not restic:
        print("restic: not installed, skipped")
    if rclone is None:
        print("rclone: not installed, skipped")
    if big_gib:
        data = mixed_data(size)
        small = s.our_backup(data)
        shutil.rmtree(s.spool, ignore_errors=True)
        big = measure(f"for i in $(seq {big_gib}); do cat {data}; done | "
                      + " ".join(s.backup_command("lz4")), shell=True)
        print(f"peak RSS backup -C lz4: {size / GIB:g} GiB {small.rss_kib / 1024:.0f} MiB, "
              f"{size * big_gib / GIB:g} GiB (through a pipe) {big.rss_kib / 1024:.0f} MiB "
              f"({big.rss_kib / small.rss_kib:.2f}x), {rate(size * big_gib, big.seconds)}   "
              f"[{load()}]", flush=True)
    shutil.rmtree(s.spool, ignore_errors=True)
    shutil.rmtree(s.out, ignore_errors=True)


def restore_part(s: Setup, repeat: int, big_gib: int) -> None:
    size = s.size
    data = mixed_data(size)
    s.baseline_backup(data)
    s.our_backup(data)

    def baseline_restore():
        return run(f"cat {s.out}/chunk.* | gpg --batch --quiet --decrypt | lz4 -d -q -c > /dev/null",
                   shell=True, env=s.genv)

    def our_restore():
        shutil.rmtree(s.spool / "restore", ignore_errors=True)
        return run(CRYOPHILE + ["-S", str(s.spool), "-c", "/dev/null", "restore", "-v", VAULT,
                                "-u", ULID, "-k", str(s.key)],
                   env={**os.environ, "CRYOPHILE_LOG": "warn"})

    base_r = min(baseline_restore() for _ in range(repeat))
    ours_r = min(our_restore() for _ in range(repeat))
    print(f"restore  cat|gpg|lz4   {rate(size, base_r[0])}   cryophile {rate(size, ours_r[0])}"
          f"   {ratio(base_r[0], ours_r[0])}")
    print(f"peak RSS restore {ours_r[1] / 1024:.0f} MiB")
    shutil.rmtree(s.spool, ignore_errors=True)
    shutil.rmtree(s.out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--big-gib", type=int, default=4, help="stream size for the memory check")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each; the best counts")
    ap.add_argument("--part", choices=("backup", "restore", "all"), default="all")
    args = ap.parse_args()
    compiled()
    s = Setup(int(args.size_gib * GIB))
    print(f"input: {s.size / GIB:.2f} GiB of tar -c /usr, and of random bytes; {load()}")
    if args.part in ("backup", "all"):
        backup_part(s, args.repeat, args.big_gib)
    if args.part in ("restore", "all"):
        restore_part(s, args.repeat, args.big_gib)


if __name__ == "__main__":
    main()
