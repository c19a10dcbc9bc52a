"""restore --chain with the real producers and receivers: zfs-fuse
(full + -i + -i, zfs receive) and btrfs (send, send -p twice, btrfs
receive), each chain resolved from the vault alone and compared with
diff -r."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.clirig import make_rig
from tests.fsrig import FsRig, fskeys, needs_fuse, sh  # noqa: F401
from tests.producers import Btrfs, Zfs

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def rig(tmp_path, recipes):
    (tmp_path / "rig").mkdir()
    r = make_rig(tmp_path / "rig")
    r.key = str(recipes["sq"].key)
    r.cert = str(recipes["sq"].cert)
    return r


def backup_from(rig, command: list[str], prefix: str) -> str:
    proc = rig.run("backup", "-v", rig.vault, "-p", prefix, "-k", rig.cert, "--", *command,
                   check=True)
    return proc.stdout.decode().strip()


def test_zfs_chain_into_zfs_receive(rig, tmp_path):
    (tmp_path / "zfs").mkdir()
    pool = Zfs(tmp_path / "zfs")
    try:
        src = f"{pool.name}/src"
        pool.zfs("create", src)
        ulids = []
        for n, data in enumerate((os.urandom(300_000), b"two\n" * 5000, os.urandom(70_000))):
            pool.write(f"src/file{n}", data)
            pool.zfs("snapshot", f"{src}@s{n}")
            send = ["send", f"{src}@s0"] if n == 0 else ["send", "-i", f"s{n - 1}", f"{src}@s{n}"]
            ulids.append(backup_from(rig, pool.command("zfs", *send), "tank/src"))
        pool.write("src/file0", b"changed after the last snapshot")
        pool.zfs("rollback", f"{src}@s2")
        rig.run("freeze", "--once", check=True)

        chain = rig.run("chain", "-H", f"{rig.vault}/tank/src/{ulids[2]}",
                        check=True).stdout.decode()
        assert [line.split("\t")[0].rsplit("/", 1)[1] for line in chain.splitlines()] == ulids
        rig.run("restore", "-k", rig.key, f"{rig.vault}/tank/src/{ulids[2]}", "--chain",
                "--", *pool.command("zfs", "receive", f"{pool.name}/dst"), input=None,
                check=True, timeout=300)
        received_whole(pool, src)
    finally:
        pool.close()


def test_btrfs_chain_into_btrfs_receive(rig, tmp_path):
    (tmp_path / "btrfs").mkdir()
    fs = Btrfs(tmp_path / "btrfs")
    try:
        vol = fs.mnt / "vol"
        fs.btrfs("subvolume", "create", str(vol))
        ulids = []
        for n, data in enumerate((os.urandom(400_000), b"more\n" * 5000, os.urandom(9000))):
            (vol / f"file{n}").write_bytes(data)
            if n == 2:
                (vol / "file0").unlink()
            fs.btrfs("subvolume", "snapshot", "-r", str(vol), str(fs.mnt / f"s{n}"))
            parent = [] if n == 0 else ["-p", str(fs.mnt / f"s{n - 1}")]
            ulids.append(backup_from(rig, ["btrfs", "-q", "send", *parent, str(fs.mnt / f"s{n}")],
                                     "home"))
        rig.run("freeze", "--once", check=True)
        out = fs.mnt / "restored"
        out.mkdir()
        rig.run("restore", "-k", rig.key, "-v", rig.vault, "-p", "home", "--latest", "--chain",
                "--", "btrfs", "-q", "receive", str(out), input=None, check=True, timeout=300)
        assert sorted(p.name for p in out.iterdir()) == ["s0", "s1", "s2"]
        for n in range(3):
            subprocess.run(["diff", "-r", str(fs.mnt / f"s{n}"), str(out / f"s{n}")],
                           check=True, timeout=120)
        # a broken chain is refused before anything is received
        for p in (rig.vaults / rig.vault / "home" / ulids[1]).iterdir():
            p.unlink()
        again = fs.mnt / "again"
        again.mkdir()
        proc = rig.run("restore", "-k", rig.key, f"{rig.vault}/home/{ulids[2]}", "--chain",
                       "--", "btrfs", "-q", "receive", str(again), input=None, timeout=300)
        assert proc.returncode == 7 and "btrfs subvolume" in proc.stderr.decode()
        assert list(again.iterdir()) == []
    finally:
        fs.close()


@pytest.mark.skipif(not shutil.which("zfs-fuse"), reason="needs zfs-fuse")
@needs_fuse
def test_zfs_chain_written_through_the_mount(tmp_path, fskeys):
    """zfs send, -i, -i written into the mount's incoming/; the chain
    resolved from the vault by `cryophile chain` and received whole by
    `restore --chain` into zfs receive."""
    import shlex
    rig = FsRig(tmp_path / "fs", fskeys[0])
    (tmp_path / "zfs").mkdir()
    pool = Zfs(tmp_path / "zfs")
    try:
        src = f"{pool.name}/src"
        pool.zfs("create", src)
        with rig.mounted():
            (rig.incoming / "tank").mkdir()
            ulids = []
            for n, data in enumerate((os.urandom(300_000), b"two\n" * 5000,
                                      os.urandom(70_000))):
                pool.write(f"src/file{n}", data)
                pool.zfs("snapshot", f"{src}@s{n}")
                send = (["send", f"{src}@s0"] if n == 0
                        else ["send", "-i", f"s{n - 1}", f"{src}@s{n}"])
                sh(f"{shlex.join(pool.command('zfs', *send))} > {rig.incoming}/tank/s{n}")
                bid = os.getxattr(rig.incoming / "tank" / f"s{n}",
                                  "user.cryophile.backup_id").decode()
                ulids.append(bid.rsplit("/", 1)[1])
            assert os.getxattr(rig.archives / "tank" / ulids[2],
                               "user.cryophile.parent").decode() == ulids[1]
        cli = [sys.executable, "-m", "cryophile", "-S", str(rig.spool), "-c", str(rig.config)]
        subprocess.run([*cli, "freeze", "--once"], check=True, timeout=300)
        chain = subprocess.run([*cli, "chain", "-H", f"{rig.vault}/tank/{ulids[2]}"],
                               check=True, capture_output=True, timeout=120).stdout.decode()
        assert [line.split("\t")[0].rsplit("/", 1)[1] for line in chain.splitlines()] == ulids
        subprocess.run([*cli, "restore", "-k", str(fskeys[1]), f"{rig.vault}/tank/{ulids[2]}",
                        "--chain", "--", *pool.command("zfs", "receive", f"{pool.name}/dst")],
                       check=True, capture_output=True, timeout=300)
        received_whole(pool, src)
    finally:
        pool.close()


def received_whole(pool, src: str) -> None:
    """pool/dst holds s0…s2 received from ``src``: same guid, same files."""
    snaps = pool.zfs("list", "-H", "-o", "name", "-t", "snapshot", "-r",
                     f"{pool.name}/dst").decode().split()
    assert snaps == [f"{pool.name}/dst@s{n}" for n in range(3)]
    assert pool.guid(f"{pool.name}/dst@s2") == pool.guid(f"{src}@s2")
    diff = subprocess.run(pool.command("diff", "-r", str(pool.mnt / "src"),
                                       str(pool.mnt / "dst")), capture_output=True,
                          timeout=120)
    assert diff.returncode == 0, diff.stdout + diff.stderr
