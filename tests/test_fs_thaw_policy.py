"""The mount never thaws by accident: budgets, a guard against scanners,
approval by setfattr, partial thaws.  Real FUSE mounts on the moto server
through the fault proxy, with restores that stay ongoing for a while."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import urllib.parse

import pytest

from tests.fsrig import FsRig, data, fskeys, needs_fuse, sh, state, wait_until  # noqa: F401

pytestmark = needs_fuse
MiB = 1 << 20


def rig_with(tmp_path, fskeys, s3proxy, bucket, top: dict | None = None, **vault) -> FsRig:
    rig = FsRig(tmp_path / "fs", fskeys[0], url=f"s3://{bucket}",
                endpoint_url=s3proxy.endpoint, storage_class="GLACIER", **vault)
    if top:
        lines = rig.config.read_text().splitlines()
        extra = [f"{k} = {json.dumps(v)}" for k, v in top.items()]
        rig.config.write_text("\n".join(lines[:1] + extra + lines[1:]) + "\n")
    return rig


def restored(s3proxy) -> list[str]:
    return sorted(urllib.parse.unquote(r.path).rsplit("/", 1)[1]
                  for r in s3proxy.requests("POST", "restore"))


@pytest.mark.timeout(300)
def test_a_range_read_thaws_only_its_fragments(tmp_path, fskeys, s3proxy, bucket, data):
    rig = rig_with(tmp_path, fskeys, s3proxy, bucket, {"thaw_readahead": 0})
    with rig.mounted("-k", str(fskeys[1]), "-o", "thaw_poll=0.2"):
        sh(f"cat {data} > {rig.incoming}/big")
        archive = rig.archive()
        wait_until(lambda: state(archive) == "frozen", timeout=60)
        plan = os.getxattr(archive, "user.cryophile.thaw_plan").decode()
        assert plan.startswith("4 fragment(s)"), plan
        s3proxy.restore_delay = 1.0
        want = data.read_bytes()[2 * MiB + 1000:2 * MiB + 1100]
        fd = os.open(archive, os.O_RDONLY)
        try:
            assert os.pread(fd, 100, 2 * MiB + 1000) == want
        finally:
            os.close(fd)
        # chunk.1 holds the session key packets; the 1 MiB block read from
        # 2 MiB on is in chunk.3 and chunk.4; chunk.2 is not thawed
        assert restored(s3proxy) == ["chunk.1", "chunk.3", "chunk.4"]


@pytest.mark.timeout(600)
def test_grep_over_many_frozen_archives_stays_within_the_budget(tmp_path, fskeys, s3proxy,
                                                               bucket):
    rig = rig_with(tmp_path, fskeys, s3proxy, bucket, thaw_budget_daily="250KiB")
    sample = tmp_path / "sample"
    sample.write_bytes(os.urandom(100_000))
    with rig.mounted("-k", str(fskeys[1]), "-o", "thaw_poll=0.2",
                     expect=(r"refused",)) as _:
        for i in range(20):
            sh(f"cat {sample} > {rig.incoming}/a{i:02d}")
        wait_until(lambda: all(state(p) == "frozen" for p in rig.archives.iterdir()),
                   timeout=120)
        s3proxy.restore_delay = 0.5
        proc = subprocess.run(["grep", "-r", "-c", "needle", str(rig.archives)],
                              capture_output=True, timeout=240)
        assert proc.returncode == 2, proc        # errors for the refused archives
        # grep opens with O_NONBLOCK: EAGAIN while a thaw within the budget runs
        assert proc.stderr.count(b"Disk quota exceeded") == 18, proc.stderr
        assert proc.stderr.count(b"Resource temporarily unavailable") == 2, proc.stderr
        wait_until(lambda: len(restored(s3proxy)) >= 2, timeout=60)
        wait_until(lambda: not list((rig.spool / "thaw").rglob("chunk.*")), timeout=60)
        assert len(restored(s3proxy)) == 2, restored(s3proxy)
        ledger = json.loads((rig.spool / "thaw" / ".ledger.json").read_text())
        (day,) = ledger["days"].values()
        assert day["*"]["bytes"] <= 250 * 1024
    assert rig.log.count("refused") <= 20, "the plan is logged once per archive"


@pytest.mark.timeout(300)
def test_never_refuses_with_edquot_until_approved(tmp_path, fskeys, s3proxy, bucket, data):
    rig = rig_with(tmp_path, fskeys, s3proxy, bucket, {"thaw_on_read": "never"})
    with rig.mounted("-k", str(fskeys[1]), "-o", "thaw_poll=0.2", expect=(r"refused",)):
        sh(f"cat {data} > {rig.incoming}/cold")
        archive = rig.archive()
        wait_until(lambda: state(archive) == "frozen", timeout=60)
        with pytest.raises(OSError) as info:
            archive.read_bytes()
        assert info.value.errno == errno.EDQUOT
        with pytest.raises(OSError) as info:
            archive.read_bytes()
        assert info.value.errno == errno.EDQUOT
        assert restored(s3proxy) == []
        s3proxy.restore_delay = 0.5
        subprocess.run(["setfattr", "-n", "user.cryophile.thaw", "-v", "approve",
                        str(archive)], check=True, timeout=60)
        assert archive.read_bytes() == data.read_bytes()
        assert restored(s3proxy) == ["chunk.1", "chunk.2", "chunk.3", "chunk.4"]
    assert rig.log.count("refused") == 1, rig.log
