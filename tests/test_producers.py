"""backup with real producers: zfs send (zfs-fuse), btrfs send (loop image),
tar.  Whole streams are kept with their identity; streams cut short, failed
producers and empty input are refused with nothing queued."""

from __future__ import annotations

import os
import subprocess

import pytest

from cryophile import keys, manifest
from tests.clirig import archive_dir, make_rig, restore_with
from tests.producers import Btrfs, Zfs, run
from tests.test_cli_errors import failed, no_complete_archive

PRODUCER, INCOMPLETE, EMPTY = 13, 14, 15
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def zfs_pool(tmp_path_factory):
    pool = Zfs(tmp_path_factory.mktemp("zfs"))
    try:
        pool.write("a", os.urandom(3 << 20))
        pool.write("b", b"hello\n" * 1000)
        pool.zfs("snapshot", f"{pool.name}@s1")
        pool.write("c", os.urandom(200_000))
        pool.zfs("snapshot", f"{pool.name}@s2")
        pool.zfs("create", f"{pool.name}/child")
        pool.zfs("snapshot", "-r", f"{pool.name}@s3")
        yield pool
    finally:
        pool.close()


@pytest.fixture(scope="module")
def zfs_sends(zfs_pool, tmp_path_factory):
    """Streams sent for real: full, -i, -I, -R."""
    d = tmp_path_factory.mktemp("zfs-sends")
    name = zfs_pool.name
    sends = {"full": ["send", f"{name}@s1"], "incremental": ["send", "-i", "s1", f"{name}@s2"],
             "intermediates": ["send", "-I", "s1", f"{name}@s3"],
             "replication": ["send", "-R", f"{name}@s3"],
             "replication-incremental": ["send", "-R", "-I", "s1", f"{name}@s3"]}
    out = {}
    for what, args in sends.items():
        out[what] = d / f"{what}.zfs"
        out[what].write_bytes(zfs_pool.zfs(*args))
    return out


@pytest.fixture(scope="module")
def btrfs_sends(tmp_path_factory):
    d = tmp_path_factory.mktemp("btrfs")
    fs = Btrfs(d)
    try:
        vol = fs.mnt / "vol"
        fs.btrfs("subvolume", "create", str(vol))
        (vol / "a").write_bytes(os.urandom(2 << 20))
        fs.btrfs("subvolume", "snapshot", "-r", str(vol), str(fs.mnt / "s1"))
        (vol / "b").write_bytes(b"more\n" * 5000)
        fs.btrfs("subvolume", "snapshot", "-r", str(vol), str(fs.mnt / "s2"))
        out = {"full": d / "full.btrfs", "incremental": d / "incremental.btrfs"}
        out["full"].write_bytes(fs.btrfs("send", str(fs.mnt / "s1")))
        out["incremental"].write_bytes(
            fs.btrfs("send", "-p", str(fs.mnt / "s1"), str(fs.mnt / "s2")))
        shown = {s: run("btrfs", "subvolume", "show", str(fs.mnt / s)).decode()
                 for s in ("s1", "s2")}
        yield out, shown
    finally:
        fs.close()


@pytest.fixture(scope="module")
def tar_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("tar")
    src = d / "src"
    (src / "sub").mkdir(parents=True)
    (src / "big").write_bytes(os.urandom(1 << 20))
    (src / "zeros").write_bytes(bytes(70_000))
    (src / "sub" / ("long-name-" * 20)).write_text("x")
    os.symlink("big", src / "link")
    path = d / "src.tar"
    subprocess.run(["tar", "-C", str(src), "-cf", str(path), "."], check=True)
    return path


@pytest.fixture
def rig(tmp_path, recipes):
    r = make_rig(tmp_path)
    r.cert = recipes["sq"].cert
    r.key = recipes["sq"]
    return r


def backup(rig, *args, data: bytes | None = b""):
    return rig.run("backup", "-v", rig.vault, "-k", str(rig.cert), *args, input=data)


def clear(rig, ulid: str) -> manifest.ClearInfo:
    return manifest.load(archive_dir(rig, ulid, where="freeze") / "chunk.0")[0]


def cuts(size: int, end_of_header: int) -> list[int]:
    """Places to cut a stream: at and around its first records, in the middle, near the end."""
    points = {end_of_header - 1, end_of_header, end_of_header + 1, size // 3, size // 2,
              size - 513, size - 312, size - 10, size - 1}
    return sorted(n for n in points if 0 < n < size)


# --- whole streams --------------------------------------------------------------

def test_zfs_sends_are_kept_with_their_guids(rig, zfs_pool, zfs_sends):
    name = zfs_pool.name
    s1, s2, s3 = (zfs_pool.guid(f"{name}@s{i}") for i in (1, 2, 3))
    want = {"full": (s1, None, False), "incremental": (s2, s1, False),
            "intermediates": (s3, s1, True), "replication": (s3, None, True),
            "replication-incremental": (s3, s1, True)}
    for what, path in zfs_sends.items():
        proc = backup(rig, data=path.read_bytes())
        assert proc.returncode == 0, proc.stderr
        info = clear(rig, proc.stdout.decode().strip())
        stream = info.stream
        assert (stream["kind"], stream["complete"]) == ("zfs", True), what
        assert (stream["toguid"], stream["fromguid"], stream["package"]) == want[what], what
        assert name not in str(info.to_json()), "names stay out of the clear metadata"
        if what == "replication-incremental":
            names = _manifest(rig, proc.stdout.decode().strip())["stream"]
            assert (names["toname"], names["package"]) == (f"{name}@s3", f"{name}@s3")
            assert (names["fromsnap"], names["tosnap"]) == ("s1", "s3")
            assert names["toguid"] == s3 and names["complete"] is True


def _manifest(rig, ulid: str) -> dict:
    info, encrypted = manifest.load(archive_dir(rig, ulid, where="freeze") / "chunk.0")
    keyring = keys.load_secret_keys([str(rig.key.key)], None)
    return manifest.read_manifest(encrypted, info, keyring.decrypt_session_key)


def test_zfs_send_run_by_backup_roundtrips(rig, zfs_pool, zfs_sends):
    proc = backup(rig, "--", *zfs_pool.command("zfs", "send", "-i", "s1", f"{zfs_pool.name}@s2"),
                  data=None)
    assert proc.returncode == 0, proc.stderr
    out = restore_with(rig, proc.stdout.decode().strip(), rig.key)
    assert out.returncode == 0, out.stderr
    assert out.stdout == zfs_sends["incremental"].read_bytes()


def test_btrfs_sends_are_kept_with_their_uuids(rig, btrfs_sends):
    sends, shown = btrfs_sends
    uuids = {s: _field(shown[s], "UUID") for s in shown}
    for what, path in sends.items():
        proc = backup(rig, data=path.read_bytes())
        assert proc.returncode == 0, proc.stderr
        stream = clear(rig, proc.stdout.decode().strip()).stream
        assert (stream["kind"], stream["complete"]) == ("btrfs", True)
        if what == "full":
            assert stream["uuid"] == uuids["s1"] and stream["clone_uuid"] is None
        else:
            assert stream["uuid"] == uuids["s2"] and stream["clone_uuid"] == uuids["s1"]
            assert stream["clone_ctransid"] is not None and stream["ctransid"] > 0


def _field(text: str, name: str) -> str:
    for line in text.splitlines():
        key, _, value = line.strip().partition(":")
        if key == name:
            return value.strip()
    raise AssertionError(f"no {name} in {text}")


def test_tar_is_kept(rig, tar_file):
    proc = backup(rig, "--", "tar", "-C", str(tar_file.parent / "src"), "-c", ".", data=None)
    assert proc.returncode == 0, proc.stderr
    assert clear(rig, proc.stdout.decode().strip()).stream == {"kind": "tar", "complete": True}


# --- cut short ------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["zfs", "btrfs", "tar"])
def test_a_stream_cut_short_is_refused(rig, kind, request):
    if kind == "zfs":
        paths = request.getfixturevalue("zfs_sends")
        path, first = paths["replication"], 312
    elif kind == "btrfs":
        path, first = request.getfixturevalue("btrfs_sends")[0]["incremental"], 17
    else:
        path, first = request.getfixturevalue("tar_file"), 512
    data = path.read_bytes()
    for n in cuts(len(data) if kind != "tar" else _tar_end(data), first):
        proc = rig.run("backup", "-v", rig.vault, "-k", str(rig.cert), "--", "head", "-c",
                       str(n), str(path), input=None)
        failed(proc, INCOMPLETE, kind, "not whole", "abandoned")
        no_complete_archive(rig)


def _tar_end(data: bytes) -> int:
    """Where GNU tar's two zero blocks end (zero padding follows)."""
    end = len(data.rstrip(b"\0"))
    return (end + 511) // 512 * 512 + 1024


def test_tar_padding_may_be_cut(rig, tar_file):
    data = tar_file.read_bytes()
    end = _tar_end(data)
    assert end < len(data)
    proc = backup(rig, data=data[:end])
    assert proc.returncode == 0, proc.stderr


# --- failed producers, empty input -----------------------------------------------

def test_a_failed_command_abandons_the_archive(rig, tar_file):
    proc = backup(rig, "--", "sh", "-c", f'cat "{tar_file}"; exit 3', data=None)
    failed(proc, PRODUCER, "sh", "status 3", "abandoned")
    no_complete_archive(rig)


def test_a_killed_command_abandons_the_archive(rig):
    proc = backup(rig, "--", "sh", "-c", "head -c 100000 /dev/zero; kill -9 $$", data=None)
    failed(proc, PRODUCER, "SIGKILL")
    no_complete_archive(rig)


def test_a_zfs_send_of_a_missing_snapshot_is_no_backup(rig, zfs_pool):
    proc = backup(rig, "--", *zfs_pool.command("zfs", "send", f"{zfs_pool.name}@nope"), data=None)
    err = proc.stderr.decode().splitlines()
    assert "does not exist" in err[0], err           # the command's own message is passed on
    proc.stderr = err[-1].encode()
    failed(proc, PRODUCER, "exited with status 1", "abandoned")
    no_complete_archive(rig)


def test_a_command_that_cannot_run(rig):
    failed(backup(rig, "--", "/nonexistent/producer", data=None), PRODUCER, "cannot run")
    no_complete_archive(rig)


def test_command_and_input_together_are_refused(rig, tar_file):
    failed(backup(rig, "-i", str(tar_file), "--", "true"), 2, "-i", "--")


def test_a_failed_pipeline_producer_gives_empty_input_which_is_refused(rig):
    command = " ".join(rig.command("backup", "-v", rig.vault, "-k", str(rig.cert)))
    proc = subprocess.run(f"false | {command}", shell=True, capture_output=True, timeout=120,
                          env={**os.environ, "CRYOPHILE_LOG_STYLE": "never"})
    failed(proc, EMPTY, "empty", "--allow-empty")
    no_complete_archive(rig)


def test_empty_input_is_kept_with_allow_empty(rig):
    proc = backup(rig, "--allow-empty", data=b"")
    assert proc.returncode == 0, proc.stderr
    info = clear(rig, proc.stdout.decode().strip())
    assert info.size == 0 and info.stream == {"kind": "unknown", "complete": None}


def test_parent_is_recorded(rig):
    parent = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
    proc = backup(rig, "--parent", parent.lower(), data=b"an unrecognised stream")
    assert proc.returncode == 0, proc.stderr
    assert clear(rig, proc.stdout.decode().strip()).parent == parent
    failed(backup(rig, "--parent", "nope", data=b"x"), 2, "ULID")


def test_an_interrupted_backup_stops_its_command(rig, tmp_path):
    import signal
    import time
    pidfile = tmp_path / "producer.pid"
    proc = subprocess.Popen(rig.command("backup", "-v", rig.vault, "-k", str(rig.cert), "--",
                                        "sh", "-c", f'echo $$ > "{pidfile}"; exec yes'),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(600):
            if pidfile.exists() and pidfile.read_text().strip():
                break
            time.sleep(0.05)
        time.sleep(0.5)                            # some output taken
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, err
    pid = int(pidfile.read_text())
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the command still runs")
    no_complete_archive(rig)


@pytest.mark.timeout(180)
def test_ctrl_c_twice_still_abandons_the_archive(rig, tmp_path):
    """An impatient user presses Ctrl-C again while the backup cleans up: the
    archive is still abandoned whole, not left dead with fragments queued."""
    import signal
    import time
    proc = subprocess.Popen(rig.command("backup", "-v", rig.vault, "-k", str(rig.cert),
                                        "-s", "1MiB", "--", "sh", "-c", "exec yes"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(1200):                     # some fragments queued
            if len(list((rig.spool / "freeze").rglob("chunk.*"))) >= 2:
                break
            time.sleep(0.05)
        while proc.poll() is None:                # Ctrl-C, again and again
            proc.send_signal(signal.SIGINT)
            time.sleep(0.002)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130 and b"Traceback" not in err, err
    no_complete_archive(rig)
    listed = rig.run("ls", rig.vault, "-H", check=True).stdout.decode()
    assert "\tabandoned\t" in listed and "dead" not in listed, listed


def test_every_cut_of_real_streams_is_caught(zfs_sends, btrfs_sends, tar_file):
    """The parsers alone, over many cuts of what the real producers wrote."""
    from cryophile.streams import Watcher
    streams = [(p, len(p.read_bytes())) for p in zfs_sends.values()]
    streams += [(p, len(p.read_bytes())) for p in btrfs_sends[0].values()]
    streams += [(tar_file, _tar_end(tar_file.read_bytes()))]
    for path, end in streams:
        data = memoryview(path.read_bytes())
        step = max(1, end // 150)
        for n in sorted(set(range(512, end, step)) | {end - 1, end - 312, end - 1024}):
            w = Watcher()
            for i in range(0, n, 65536):
                w.feed(data[i:min(n, i + 65536)])
            assert w.finish().complete is False, (path.name, n)
        w = Watcher()
        w.feed(data)
        assert w.finish().complete is True, path.name
