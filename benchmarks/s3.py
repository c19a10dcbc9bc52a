"""freeze and restore through a moto S3 server, against `aws s3 cp --recursive`.

    .venv/bin/python benchmarks/s3.py [--size-gib 1]

Both sides talk to the same moto server over HTTP in the same run; the
figure is the ratio of their times (see BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import CRYOPHILE, GIB, WORK, gpg_key, mixed_data, rate, ratio, run  # noqa: E402
from tests.s3rig import MotoServer, aws_test_env  # noqa: E402

AWS = "/usr/bin/aws" if os.path.exists("/usr/bin/aws") else "aws"
ULID = "01J00000000000000000000000"
FREEZE_ULID = "01J00000000000000000000001"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-gib", type=float, default=1.0)
    args = ap.parse_args()
    size = int(args.size_gib * GIB)
    data = mixed_data(size)
    fpr, cert, key = gpg_key(WORK / "gnupg")
    env = {**os.environ, **aws_test_env(tempfile.mkdtemp())}
    os.environ.update(env)
    server = MotoServer().start()
    try:
        bench(server.endpoint, env, data, size, fpr, cert, key)
    finally:
        server.stop()


def bench(endpoint, env, data, size, fpr, cert, key) -> None:
    import boto3
    bucket = str(uuid.uuid4())
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    spool, copy, down = WORK / "s3-spool", WORK / "s3-fragments", WORK / "s3-down"
    for d in (spool, copy, down):
        shutil.rmtree(d, ignore_errors=True)
    config = WORK / "s3.toml"
    config.write_text(f'[vault.{bucket}]\nendpoint_url = "{endpoint}"\n'
                      f'storage_class = "GLACIER"\n')
    cryo = CRYOPHILE + ["-S", str(spool), "-c", str(config)]

    def backup(ulid: str, codec: str) -> int:
        """Back up the data; copy its fragments aside; return their total size."""
        run(cryo + ["backup", "-v", bucket, "-k", str(cert), "-u", ulid, "-C", codec,
                    "-i", str(data)], env=env)
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(spool / "freeze" / bucket / ulid, copy)
        return sum(f.stat().st_size for f in copy.iterdir())

    # freeze: uncompressed, so that the fragments are as large as the input
    stored = backup(FREEZE_ULID, "none")
    aws_up, _ = run([AWS, "--endpoint-url", endpoint, "s3", "cp", "--recursive", "--quiet",
                     str(copy), f"s3://{bucket}/baseline-up/"], env=env)
    ours_up, _ = run(cryo + ["freeze", "--once"], env=env)

    # restore: an lz4 archive, against download + cat | gpg -d | lz4 -d
    backup(ULID, "lz4")
    run([AWS, "--endpoint-url", endpoint, "s3", "cp", "--recursive", "--quiet",
         str(copy), f"s3://{bucket}/baseline/"], env=env)
    run(cryo + ["freeze", "--once"], env=env)
    genv = {**env, "GNUPGHOME": str(WORK / "gnupg")}
    aws_down, _ = run(f"{AWS} --endpoint-url {endpoint} s3 cp --recursive --quiet "
                      f"s3://{bucket}/baseline/ {down} && "
                      f"ls {down} | grep -v 'chunk.0$' | sort -t. -k2 -n | "
                      f"(cd {down} && xargs cat) | gpg --batch --quiet --decrypt | "
                      f"lz4 -d -q -c > /dev/null", shell=True, env=genv)
    ours_down, rss = run(cryo + ["restore", "-v", bucket, "-u", ULID, "-k", str(key)],
                         env={**env, "CRYOPHILE_LOG": "warn"})
    print(f"moto S3 server; input: {size / GIB:.2f} GiB of tar -c /usr")
    print(f"freeze of {stored / GIB:.2f} GiB of fragments   aws s3 cp {rate(stored, aws_up)}"
          f"   cryophile {rate(stored, ours_up)}   {ratio(aws_up, ours_up)}")
    print(f"restore (lz4)   aws s3 cp + cat|gpg|lz4 {rate(size, aws_down)}   cryophile "
          f"{rate(size, ours_down)}   {ratio(aws_down, ours_down)}   "
          f"(peak RSS {rss / 1024:.0f} MiB)")
    for d in (spool, copy, down):
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
