"""The seal, for real: close(2) returning 0 means sealed and durable, and a
write the mount refused never leaves a normal-looking archive."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.fsrig import data, fskeys, needs_fuse, rig, sh  # noqa: F401

pytestmark = [needs_fuse, pytest.mark.timeout(180)]


class Killed(Exception):
    pass


def sealed_ulids(rig) -> set[str]:
    """Archives whose chunk.0 is in the freeze queue or the vault."""
    found = set()
    for where in (rig.spool / "freeze" / rig.vault, rig.vaults / rig.vault):
        found |= {p.parent.name for p in where.rglob("chunk.0")}
    return found


def kill_mount(rig) -> None:
    """kill -9 the mount process, as a crash would; the test rig then does
    `fusermount3 -uz`."""
    rig.proc.kill()
    rig.proc.wait(timeout=30)
    raise Killed


def cryophile(rig, *args: str, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "cryophile", "-S", str(rig.spool), "-c",
                           str(rig.config), *args], capture_output=True, timeout=120, **kw)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc


needs_rsync = pytest.mark.skipif(not shutil.which("rsync"), reason="needs rsync")


@needs_rsync
def test_rsync_inplace_cp_and_dd_exit_0(rig, data, fskeys):
    with rig.mounted("-k", str(fskeys[1])):
        sh(f"rsync --inplace {data} {rig.incoming}/by-rsync")
        sh(f"rsync -a --inplace {data} {rig.incoming}/by-rsync-a")      # times, modes
        sh(f"cp -p {data} {rig.incoming}/by-cp-p")
        sh(f"dd if={data} of={rig.incoming}/by-dd bs=64k status=none")
        names = ("by-rsync", "by-rsync-a", "by-cp-p", "by-dd")
        for name in names:
            sh(f"cmp {data} {rig.archive(name_like=name)}")
            assert os.getxattr(rig.incoming / name, "user.cryophile.state") == b"sealed"
        assert os.listdir(rig.incoming) == []       # sealed entries are not listed
        sh(f"rsync -a --inplace {data} {rig.incoming}/by-rsync-a")      # up to date: skipped
        assert len(os.listdir(rig.archives)) == 4
        sh(f"cp {data} {rig.incoming}/by-dd")       # the same name again: a new backup
        assert len(os.listdir(rig.archives)) == 5


@pytest.fixture
def sparse(tmp_path):
    """Data, a 1 MiB hole, data, and a hole at the end."""
    path = tmp_path / "sparse"
    with open(path, "wb") as f:
        f.write(os.urandom(200_000))
        f.seek(1 << 20, os.SEEK_CUR)
        f.write(os.urandom(200_000))
        f.truncate(3 << 20)
    return path


@needs_rsync
def test_sparse_copies_are_refused_and_seal_nothing(rig, sparse):
    expect = ("written in order", "cannot truncate", "failed")
    with rig.mounted(expect=expect):
        for command in (f"cp --sparse=always {sparse} {rig.incoming}/cp-sparse",
                        f"rsync --inplace --sparse {sparse} {rig.incoming}/rsync-sparse"):
            proc = subprocess.run(["sh", "-c", command], capture_output=True, timeout=120)
            assert proc.returncode != 0, command
        assert not os.listdir(rig.archives)
    assert not sealed_ulids(rig)
    assert rig.log.count("failed and was dropped, nothing sealed") == 2


def test_a_stream_going_on_after_a_close_is_not_sealed_short(rig, data):
    """`(cat a; cat b) > f`: the first cat's exit closes a copy of the file and
    seals it; the second cat's write is refused and the archive withdrawn."""
    with rig.mounted(expect=("sealed", "withdrawn")):
        proc = subprocess.run(["sh", "-c", f"(cat {data}; cat {data}) > {rig.incoming}/two"],
                              capture_output=True, timeout=120)
        assert proc.returncode != 0
        assert not os.listdir(rig.archives)
        sh(f"{{ cat {data}; }} > {rig.incoming}/one")     # one command: fine
        assert len(os.listdir(rig.archives)) == 1
    assert len(sealed_ulids(rig)) == 1


def test_touch_makes_no_archive(rig, data):
    with rig.mounted():
        sh(f"touch {rig.incoming}/empty")
        assert not os.listdir(rig.archives)
        sh(f"cat {data} > {rig.incoming}/empty")        # written after all: sealed
        assert len(os.listdir(rig.archives)) == 1


HOLDER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT)
os.write(fd, open(sys.argv[2], "rb").read())
os.close(os.dup(fd))                # a close: the seal, with the file still open
print("closed", flush=True)
sys.stdin.read()                    # holds fd until the test is done
"""


def test_a_killed_mount_keeps_what_close_promised(rig, data, fskeys):
    with pytest.raises(Killed):
        with rig.mounted():
            holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(rig.incoming / "held"),
                                       str(data)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            try:
                assert holder.stdout.readline() == b"closed\n"
                kill_mount(rig)
            finally:
                holder.stdin.close()
                holder.stdout.close()
                holder.wait(timeout=60)
    (ulid,) = sealed_ulids(rig)
    with rig.mounted("-k", str(fskeys[1])):             # the next mount freezes it
        sh(f"cmp {data} {rig.archives / ulid}")
        assert os.getxattr(rig.archives / ulid, "user.cryophile.name") == b"held"


def test_cp_then_kill_9_then_cryophile_freeze(rig, data, fskeys, tmp_path):
    with pytest.raises(Killed):
        with rig.mounted():
            sh(f"cp {data} {rig.incoming}/copied")
            kill_mount(rig)
    cryophile(rig, "freeze", "--once")
    (ulid,) = {p.parent.name for p in (rig.vaults / rig.vault).rglob("chunk.0")}
    out = tmp_path / "restored"
    cryophile(rig, "restore", "-v", rig.vault, "-u", ulid, "-k", str(fskeys[1]), "-o", str(out))
    assert out.read_bytes() == data.read_bytes()


def test_cp_then_unmount_at_once_keeps_the_archive(rig, data, fskeys):
    with pytest.raises(Killed):
        with rig.mounted():
            sh(f"cp {data} {rig.incoming}/quick && fusermount3 -u {rig.mnt}")
            assert rig.proc.wait(timeout=60) == 0
            raise Killed
    (ulid,) = sealed_ulids(rig)
    with rig.mounted("-k", str(fskeys[1])):
        sh(f"cmp {data} {rig.archives / ulid}")


def test_an_unconfigured_vault_says_where_it_goes(rig):
    other = "5d7c1f3e-2b4a-4c6d-8e9f-0a1b2c3d4e5f"
    with rig.mounted(expect=("not configured",)):
        os.mkdir(rig.mnt / "incoming" / other)
    (line,) = [x for x in rig.log.splitlines() if "not configured" in x]
    assert f"s3://{other}" in line and "AWS" in line


def test_a_tar_cut_short_is_incomplete_in_the_mount_and_in_ls(rig, tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(4):
        (tree / f"f{i}").write_bytes(os.urandom(100_000))
    with rig.mounted(expect=("sealed as incomplete",)):
        sh(f"tar cf - -C {tree} . > {rig.incoming}/whole.tar")
        sh(f"tar cf - -C {tree} . | head -c 150000 > {rig.incoming}/cut.tar")
        states = {os.getxattr(rig.incoming / n, "user.cryophile.state") for n in
                  ("whole.tar", "cut.tar")}
        assert states == {b"sealed", b"incomplete"}
        cut = os.getxattr(rig.incoming / "cut.tar", "user.cryophile.backup_id").decode()
        ulid = cut.rsplit("/", 1)[1]
        assert os.getxattr(rig.archives / ulid, "user.cryophile.state") == b"incomplete"
    out = cryophile(rig, "ls", rig.vault).stdout.decode()
    (line,) = [x for x in out.splitlines() if ulid in x]
    assert "incomplete" in line
    assert sum("incomplete" in x for x in out.splitlines()) == 1


@pytest.mark.timeout(300)
def test_reading_an_incomplete_archive_ends_in_an_io_error(rig, tmp_path, fskeys):
    """Every byte it holds comes back, and then EIO where its end would be
    taken for the stream's end: cat exits non-zero, as restore exits 14."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(3):
        (tree / f"f{i}").write_bytes(os.urandom(700_000))
    whole = tmp_path / "whole.tar"
    sh(f"tar cf {whole} -C {tree} .")
    cut = whole.read_bytes()[:1_500_000]          # past the first MiB block
    with rig.mounted("-k", str(fskeys[1]),
                     expect=("sealed as incomplete", "was sealed incomplete")):
        sh(f"cat {whole} > {rig.incoming}/whole.tar")
        sh(f"head -c {len(cut)} {whole} > {rig.incoming}/cut.tar")
        archives = {}
        for name in ("whole.tar", "cut.tar"):
            bid = os.getxattr(rig.incoming / name, "user.cryophile.backup_id").decode()
            archives[name] = rig.archives / bid.rsplit("/", 1)[1]
        assert archives["whole.tar"].read_bytes() == whole.read_bytes()
        for _ in range(2):                        # the same again on a second open
            got = subprocess.run(["cat", str(archives["cut.tar"])], capture_output=True,
                                 timeout=120)
            assert got.returncode != 0
            assert b"Input/output error" in got.stderr
            assert got.stdout == cut
        with open(archives["cut.tar"], "rb") as f:     # a read inside it is served
            f.seek(1000)
            assert f.read(5000) == cut[1000:6000]
    assert "was sealed incomplete" in rig.log


@pytest.mark.skipif(not shutil.which("zfs-fuse"), reason="needs zfs-fuse")
@pytest.mark.timeout(300)
def test_a_real_zfs_send_cut_short_is_incomplete(rig, tmp_path):
    import shlex

    from tests.producers import Zfs
    (tmp_path / "zfs").mkdir()
    pool = Zfs(tmp_path / "zfs")
    try:
        pool.write("a", os.urandom(1 << 20))
        pool.zfs("snapshot", f"{pool.name}@s1")
        send = shlex.join(pool.command("zfs", "send", f"{pool.name}@s1"))
        with rig.mounted(expect=("sealed as incomplete",)):
            sh(f"{send} > {rig.incoming}/whole.zfs")
            sh(f"{send} | head -c 300000 > {rig.incoming}/cut.zfs")
            for name, state in (("whole.zfs", b"sealed"), ("cut.zfs", b"incomplete")):
                assert os.getxattr(rig.incoming / name, "user.cryophile.state") == state
                bid = os.getxattr(rig.incoming / name, "user.cryophile.backup_id").decode()
                archive = rig.archives / bid.rsplit("/", 1)[1]
                assert (os.getxattr(archive, "user.cryophile.state") == b"incomplete") == \
                    (state == b"incomplete")
    finally:
        pool.close()
