"""Damaged archives in a local vault: restore (to stdout and with -o) and reads
through the mount end within seconds, with exit 8 or 9 (EIO in the mount),
and never hand out a byte that is not the archive's."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.clirig import archive_dir, fragments, make_rig
from tests.fsrig import FsRig, fskeys, needs_fuse  # noqa: F401

CODECS = ["none", "lz4", "zstd"]
DAMAGES = ["flipped", "truncated", "missing-middle", "missing-last", "extra-chunk",
           "reordered", "other-archive"]
SIZE = 1_300_000
UNTRUSTED = "output is not to be trusted"


def payload(codec: str) -> bytes:
    """Random, so that every codec needs several 128 KiB fragments."""
    return (codec.encode() * 8) + os.urandom(SIZE)


@pytest.fixture(scope="module")
def template(tmp_path_factory, fskeys):
    """A vault holding, per codec, the archive to damage and another one."""
    root = tmp_path_factory.mktemp("damage-template")
    rig = make_rig(root)
    made = {}
    for codec in CODECS:
        data = payload(codec)
        a = rig.backup(data, fskeys[0], "-C", codec, "-s", "128KiB")
        b = rig.backup(b"another archive " + codec.encode(), fskeys[0], "-C", codec)
        made[codec] = (data, a, b)
    rig.run("freeze", "--once", check=True)
    return root, made


def damage(directory: Path, kind: str, other: Path) -> None:
    frags = fragments(directory)
    assert len(frags) >= 5
    middle, last = frags[len(frags) // 2], frags[-1]
    if kind == "flipped":
        raw = bytearray(frags[1].read_bytes())
        raw[len(raw) // 2] ^= 0x40
        frags[1].write_bytes(raw)
    elif kind == "truncated":
        raw = frags[1].read_bytes()
        frags[1].write_bytes(raw[:len(raw) // 2])
    elif kind == "missing-middle":
        middle.unlink()
    elif kind == "missing-last":
        last.unlink()
    elif kind == "extra-chunk":
        (directory / f"chunk.{len(frags) + 1}").write_bytes(os.urandom(1000))
    elif kind == "reordered":
        a, b = frags[1].read_bytes(), frags[2].read_bytes()
        frags[1].write_bytes(b)
        frags[2].write_bytes(a)
    elif kind == "other-archive":
        shutil.rmtree(directory)
        shutil.copytree(other, directory)


def copy_rig(template, tmp_path, kind: str, codec: str):
    root, made = template
    shutil.copytree(root / "vaults", tmp_path / "vaults")
    rig = make_rig(tmp_path)
    rig.spool.mkdir()
    data, a, b = made[codec]
    damage(archive_dir(rig, a), kind, archive_dir(rig, b))
    return rig, data, a, b


def check_failure(proc, kind: str, a: str, b: str) -> None:
    err = proc.stderr.decode()
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    if kind == "other-archive":
        assert proc.returncode == 9, err
        assert a in err and b in err, err
    else:
        assert proc.returncode in ((8,) if kind.startswith("missing") else (8, 9)), err
        assert UNTRUSTED in err, err


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", DAMAGES)
@pytest.mark.parametrize("codec", CODECS)
def test_restore_of_a_damaged_archive_ends(template, tmp_path, fskeys, codec, kind):
    rig, data, a, b = copy_rig(template, tmp_path, kind, codec)
    proc = rig.restore(a, fskeys[1], timeout=60)
    assert proc.stdout == data[:len(proc.stdout)], "bytes that are not the archive's"
    if kind == "extra-chunk":      # not part of the archive: never read
        assert proc.returncode == 0 and proc.stdout == data, proc.stderr
    else:
        check_failure(proc, kind, a, b)
    out = tmp_path / "out"
    proc = rig.restore(a, fskeys[1], "-o", str(out), timeout=60)
    if kind == "extra-chunk":
        assert proc.returncode == 0 and out.read_bytes() == data, proc.stderr
    else:
        check_failure(proc, kind, a, b)
        assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


@pytest.mark.timeout(120)
def test_restore_reads_a_local_vault_in_place(template, tmp_path, fskeys):
    """No fragment is copied into the spool: it is checked and read where it is."""
    rig, data, a, b = copy_rig(template, tmp_path, "extra-chunk", "zstd")
    proc = rig.run("restore", "-v", rig.vault, "-u", a, "-k", str(fskeys[1]), input=None,
                   pre=("-d",), timeout=60)
    assert proc.returncode == 0 and proc.stdout == data, proc.stderr
    assert "read in place from file://" in proc.stderr.decode()


@pytest.mark.timeout(180)
def test_a_fragment_removed_from_a_local_vault_while_read_ends_the_restore(tmp_path, fskeys):
    """A restore that found every fragment in the local vault reads them in
    place with no thawer: one removed meanwhile ends it (exit 8), never a
    wait for a thaw that nobody serves."""
    rig = make_rig(tmp_path)
    data = os.urandom(24 << 20)
    ulid = rig.backup(data, fskeys[0], "-C", "lz4", "-s", "128KiB")
    rig.run("freeze", "--once", check=True)
    frags = fragments(archive_dir(rig, ulid))
    assert len(frags) > 150
    proc = subprocess.Popen(rig.command("restore", "-v", rig.vault, "-u", ulid, "-k",
                                        str(fskeys[1])),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, bufsize=0,     # (read(1): one byte)
                            env={**os.environ, "CRYOPHILE_LOG_STYLE": "never"})
    try:
        first = proc.stdout.read(1)     # under way (output waits on this pipe: a few
        frags[-1].unlink()              # MiB read ahead at most, far from the end)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out, err = first + out, err.decode()
    assert proc.returncode == 8, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"chunk.{len(frags)}" in err and UNTRUSTED in err, err
    assert out == data[:len(out)] and len(out) < len(data)


@pytest.mark.timeout(120)
def test_ls_skips_a_mark_of_another_archive(template, tmp_path):
    rig, data, a, b = copy_rig(template, tmp_path, "other-archive", "lz4")
    proc = rig.run("ls", rig.vault, timeout=60)
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 9, err                # the others listed, the skip reported
    assert a not in out and out.count(b) == 1, out
    assert a in err and b in err, err


# --- through the mount -------------------------------------------------------------

def read_all(path: Path, skip_mib: int = 0) -> tuple[int, bytes]:
    """dd if=PATH bs=1M skip=N: (exit status, bytes it wrote)."""
    proc = subprocess.run(["dd", f"if={path}", "bs=1M", f"skip={skip_mib}", "status=none"],
                          capture_output=True, timeout=60)
    return proc.returncode, proc.stdout


@needs_fuse
@pytest.mark.timeout(400)
@pytest.mark.parametrize("codec", CODECS)
def test_mount_reads_of_damaged_archives_fail(template, tmp_path, fskeys, codec):
    """cat and dd skip= of every kind of damage, in one mount per codec."""
    root, made = template
    data, _, b = made[codec]
    fs = FsRig(tmp_path, fskeys[0])
    (tmp_path / "cli").mkdir()
    rig = make_rig(tmp_path / "cli")
    ulids = {}
    for kind in DAMAGES:       # one copy of the archive per kind of damage
        ulid = rig.backup(data, fskeys[0], "-C", codec, "-s", "128KiB")
        ulids[kind] = ulid
    other = rig.backup(b"another archive", fskeys[0], "-C", codec)
    rig.run("freeze", "--once", check=True)
    shutil.copytree(rig.vaults, fs.vaults)
    vault = fs.vaults / rig.vault
    for kind, ulid in ulids.items():
        damage(vault / ulid, kind, vault / other)
    expect = (r"damaged|missing|not to be trusted|fails|belongs to archive|truncated",)
    with fs.mounted("-k", str(fskeys[1]), expect=expect):
        listed = os.listdir(fs.archives)
        assert ulids["other-archive"] not in listed and other in listed
        for kind, ulid in ulids.items():
            if kind == "other-archive":
                with pytest.raises(FileNotFoundError):
                    open(fs.archives / ulid, "rb")
                continue
            path = fs.archives / ulid
            for skip in (0, 1, len(data) >> 20):
                status, got = read_all(path, skip)
                want = data[skip << 20:]
                assert got == want[:len(got)], (kind, skip, "bytes that are not the archive's")
                if kind == "extra-chunk":
                    assert status == 0 and got == want, (kind, skip)
                elif skip == 0 or kind == "missing-last":
                    assert status != 0, (kind, skip)
            if kind != "extra-chunk":
                proc = subprocess.run(["cat", str(path)], capture_output=True, timeout=60)
                assert proc.returncode != 0, kind
                assert os.strerror(errno.EIO).encode() in proc.stderr, (kind, proc.stderr)


@needs_fuse
@pytest.mark.timeout(300)
def test_mount_tail_and_dd_of_intact_archives(tmp_path, fskeys):
    """tail -c and dd skip= near the end, where the last chunk's longer length
    header used to shift every byte, for every codec (far enough from the
    start that the mount's read-ahead from offset 0 does not get there first)."""
    size = 16 * (1 << 20) + 300_000
    data = os.urandom(size)
    (tmp_path / "cli").mkdir()
    rig = make_rig(tmp_path / "cli")
    made = {codec: rig.backup(data, fskeys[0], "-C", codec, "-s", "1MiB") for codec in CODECS}
    rig.run("freeze", "--once", check=True)
    fs = FsRig(tmp_path, fskeys[0])
    shutil.copytree(rig.vaults, fs.vaults)
    with fs.mounted("-k", str(fskeys[1])):
        for codec, ulid in made.items():
            path = fs.archives / ulid
            for n in (1000, 1, 300_000, 1 << 20):
                proc = subprocess.run(["tail", "-c", str(n), str(path)], capture_output=True,
                                      timeout=60)
                assert proc.returncode == 0 and proc.stdout == data[-n:], (codec, n)
            for skip in (16, 15):
                status, got = read_all(path, skip)
                assert status == 0 and got == data[skip << 20:], (codec, skip)
