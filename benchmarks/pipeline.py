"""Backup and restore throughput and memory, against lz4 | gpg | split in the same run.

    .venv/bin/python benchmarks/pipeline.py [--size-gib 1] [--big-gib 4]

Prints each figure with its baseline and the ratio; see BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import CRYOPHILE, GIB, WORK, gpg_key, mixed_data, rate, run  # noqa: E402

VAULT = "5f0c6a8e-0d1e-4b8a-9f2e-000000000001"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--big-gib", type=int, default=4, help="stream size for the memory check")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each; the best counts")
    args = ap.parse_args()
    size = int(args.size_gib * GIB)
    data = mixed_data(size)
    home = WORK / "gnupg"
    fpr, cert, key = gpg_key(home)
    genv = {**os.environ, "GNUPGHOME": str(home)}
    out = WORK / "split"
    spool = WORK / "spool"

    def baseline_backup():
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        return run(f"lz4 -1 -q -c < {data} | gpg --batch --quiet --trust-model always "
                   f"--encrypt --compress-algo none -r {fpr} | split -b 64M - {out}/chunk.",
                   shell=True, env=genv)

    def our_backup(src=None, shell=False):
        shutil.rmtree(spool, ignore_errors=True)
        cmd = CRYOPHILE + ["-S", str(spool), "-c", "/dev/null", "backup", "-v", VAULT, "-k", str(cert),
                           "-C", "lz4", "-u", "01J00000000000000000000000", "-i", str(data)]
        return run(src or cmd, shell=shell)

    def baseline_restore():
        return run(f"cat {out}/chunk.* | gpg --batch --quiet --decrypt | lz4 -d -q -c > /dev/null",
                   shell=True, env=genv)

    def our_restore():
        shutil.rmtree(spool / "restore", ignore_errors=True)
        return run(CRYOPHILE + ["-S", str(spool), "-c", "/dev/null", "restore", "-v", VAULT,
                                "-u", "01J00000000000000000000000", "-k", str(key)],
                   env={**os.environ, "CRYOPHILE_LOG": "warn"})

    print(f"input: first {size / GIB:.2f} GiB of tar -c /usr ({data})")
    base_b = min(baseline_backup() for _ in range(args.repeat))
    ours_b = min(our_backup() for _ in range(args.repeat))
    base_r = min(baseline_restore() for _ in range(args.repeat))
    ours_r = min(our_restore() for _ in range(args.repeat))
    print(f"backup   lz4|gpg|split {rate(size, base_b[0])}   cryophile {rate(size, ours_b[0])}"
          f"   ratio {base_b[0] / ours_b[0]:.2f}x")
    print(f"restore  cat|gpg|lz4   {rate(size, base_r[0])}   cryophile {rate(size, ours_r[0])}"
          f"   ratio {base_r[0] / ours_r[0]:.2f}x")
    print(f"peak RSS backup {ours_b[1] / 1024:.0f} MiB, restore {ours_r[1] / 1024:.0f} MiB")

    if args.big_gib:
        big = f"for i in $(seq {args.big_gib}); do cat {data}; done | " + " ".join(
            CRYOPHILE + ["-S", str(spool), "-c", "/dev/null", "backup", "-v", VAULT, "-k", str(cert), "-C", "lz4",
                         "-u", "01J00000000000000000000000"])
        shutil.rmtree(spool, ignore_errors=True)
        t, rss_big = run(big, shell=True)
        print(f"peak RSS backup of {size * args.big_gib / GIB:.0f} GiB: {rss_big / 1024:.0f} MiB "
              f"({rss_big / ours_b[1]:.2f}x the {size / GIB:.0f} GiB run), "
              f"{rate(size * args.big_gib, t)}")
    shutil.rmtree(spool, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
