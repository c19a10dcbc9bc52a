"""backup → freeze → thaw → restore through a real S3 protocol server (moto),
with a proxy that keeps Glacier restores ongoing and slows uploads."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.clirig import Rig, thaw_daemon_running

FRAG = 64 * 1024


class S3Rig(Rig):
    def __init__(self, root: Path, bucket: str, endpoint: str, **settings):
        super().__init__(root, vault=bucket)
        root.mkdir(parents=True, exist_ok=True)
        self.endpoint = endpoint
        self.write_s3_config(**settings)

    def write_s3_config(self, spool_max: str | None = None, **settings) -> None:
        lines = [f'spool = "{self.spool}"']
        if spool_max:
            lines.append(f'spool_max = "{spool_max}"')
        lines += [f"[vault.{self.vault}]", 'name = "offsite"',
                  f'endpoint_url = "{self.endpoint}"']
        for k, v in settings.items():
            lines.append(f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}")
        self.config.write_text("\n".join(lines) + "\n")

    def popen(self, *args: str, **kw) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "cryophile", "-S", str(self.spool), "-c", str(self.config),
               *args]
        return subprocess.Popen(cmd, env={**os.environ, "CRYOPHILE_LOG_STYLE": "never"},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


@pytest.fixture
def rig(tmp_path, bucket, s3proxy):
    return S3Rig(tmp_path, bucket, s3proxy.endpoint)


def fragment_keys(s3client, bucket: str) -> dict[str, dict]:
    out = {}
    for page in s3client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", ()):
            out[obj["Key"]] = s3client.head_object(Bucket=bucket, Key=obj["Key"])
    return out


def test_glacier_round_trip_waits_for_a_slow_thaw(rig, recipes, s3client, bucket, s3proxy):
    data = os.urandom(5 * FRAG + 123)
    ulid = rig.backup(data, recipes["gpg"].cert, "-p", "tank/home", "-s", "64KiB",
                      "-C", "zstd", "--name", "monday")
    rig.run("freeze", "--once", check=True)
    objects = fragment_keys(s3client, bucket)
    frags = {k: v for k, v in objects.items() if not k.endswith("chunk.0")}
    assert len(frags) == 6
    assert all(h["StorageClass"] == "GLACIER" for h in frags.values())
    assert objects[f"tank/home/{ulid}/chunk.0"].get("StorageClass", "STANDARD") == "STANDARD"
    assert not any(rig.spool.glob("freeze/*/*/*/*/chunk.*")), "local copies dropped"

    s3proxy.restore_delay = 3.0
    started = time.monotonic()
    out = rig.restore(ulid, recipes["gpg"].key, "-p", "tank/home", check=True)
    waited = time.monotonic() - started
    assert out.stdout == data
    assert waited >= 3.0, "restore must wait until the thaw completes"
    assert len(s3proxy.requests("POST", "restore")) >= 6
    heads = s3proxy.requests("HEAD", "chunk.1")
    assert 2 <= len(heads) <= 6, f"polled {len(heads)} times: backoff expected"
    assert not any(rig.spool.glob("restore/**/chunk.*")), "restore queue consumed"


def test_fresh_host_lists_and_restores_from_the_bucket(rig, recipes, bucket, s3proxy, tmp_path):
    data = os.urandom(3 * FRAG)
    ulid = rig.backup(data, recipes["sq"].cert, "-s", "64KiB", "--name", "nightly")
    rig.run("freeze", "--once", check=True)
    fresh = S3Rig(tmp_path / "fresh", bucket, s3proxy.endpoint)
    listing = fresh.run("ls", "offsite", check=True).stdout.decode()
    assert ulid in listing and "frozen" in listing and "nightly" not in listing
    named = fresh.run("ls", "offsite", "-k", str(recipes["sq"].key), check=True).stdout.decode()
    assert "nightly" in named
    assert fresh.restore(ulid, recipes["sq"].key, check=True).stdout == data


def test_transient_faults_are_retried(rig, recipes, s3client, bucket, s3proxy):
    data = os.urandom(2 * FRAG)
    ulid = rig.backup(data, recipes["gpg"].cert, "-s", "64KiB", "-C", "none")
    s3proxy.fail_next(2, 503, "SlowDown", methods=["PUT"])
    s3proxy.reset_next(1, methods=["PUT"])
    s3proxy.fail_next(1, 500, "InternalError", methods=["PUT"])
    rig.run("freeze", "--once", check=True)
    assert s3proxy.pending_faults == 0
    s3proxy.fail_next(2, 503, "SlowDown", methods=["GET"])
    assert rig.restore(ulid, recipes["gpg"].key, check=True).stdout == data


def test_missing_bucket_is_one_clear_line(tmp_path, recipes, s3proxy):
    rig = S3Rig(tmp_path, str(uuid.uuid4()), s3proxy.endpoint)
    rig.backup(b"x" * 100, recipes["gpg"].cert)
    proc = rig.run("freeze", "--once")
    err = proc.stderr.decode()
    assert proc.returncode == 10, err
    assert rig.vault in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_unreachable_endpoint_fails_clearly(tmp_path, recipes):
    from tests.s3rig import free_port
    rig = S3Rig(tmp_path, str(uuid.uuid4()), f"http://127.0.0.1:{free_port()}")
    rig.backup(b"x" * 100, recipes["gpg"].cert)
    proc = rig.run("freeze", "--once", env={"CRYOPHILE_S3_ATTEMPTS": "2"})
    err = proc.stderr.decode()
    assert proc.returncode == 10, err
    assert "127.0.0.1" in err and "Traceback" not in err
    assert any(rig.spool.glob("freeze/**/chunk.0")), "nothing lost: still queued"


def spool_bytes(spool: Path) -> int:
    total = 0
    for q in ("backup", "freeze"):
        for dirpath, _, files in os.walk(spool / q):
            for f in files:
                try:
                    total += os.lstat(os.path.join(dirpath, f)).st_size
                except FileNotFoundError:
                    pass
    return total


def test_backpressure_bounds_the_spool(tmp_path, recipes, bucket, s3proxy):
    bound = 4 * FRAG
    rig = S3Rig(tmp_path, bucket, s3proxy.endpoint, spool_max="256KiB")
    data = os.urandom(5 * bound)
    s3proxy.slow_next(1000, 0.05, methods=["PUT"])
    freezer = rig.popen("freeze")
    peak = 0
    stop = threading.Event()

    def watch():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, spool_bytes(rig.spool))
            time.sleep(0.005)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        ulid = rig.backup(data, recipes["gpg"].cert, "-s", "64KiB", "-C", "none")
        deadline = time.monotonic() + 60
        while any(rig.spool.glob("freeze/**/chunk.*")) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        watcher.join()
        freezer.terminate()
        _, err = freezer.communicate(timeout=30)
    assert peak <= bound + FRAG + 4096, f"spool peaked at {peak} bytes, bound {bound}"
    assert peak >= bound - FRAG, "the test must actually reach the bound"
    assert b"Traceback" not in err
    assert rig.restore(ulid, recipes["gpg"].key, check=True).stdout == data


def test_killed_multipart_freeze_leaves_no_orphans(tmp_path, recipes, s3client, bucket,
                                                   s3proxy):
    rig = S3Rig(tmp_path, bucket, s3proxy.endpoint, part_size="5MiB")
    data = os.urandom(12 << 20)
    ulid = rig.backup(data, recipes["gpg"].cert, "-s", "16MiB", "-C", "none")
    s3proxy.slow_next(100, 30.0, methods=["PUT"], path_contains="partNumber")
    freezer = rig.popen("freeze", "--once")
    deadline = time.monotonic() + 20
    while not s3client.list_multipart_uploads(Bucket=bucket).get("Uploads"):
        assert time.monotonic() < deadline, "freeze never started its multipart upload"
        time.sleep(0.05)
    freezer.kill()
    freezer.communicate()
    assert s3client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    s3proxy.reset()
    rig.run("freeze", "--once", check=True)
    assert not s3client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    head = s3client.head_object(Bucket=bucket, Key=f"{ulid}/chunk.1")
    assert head["ContentLength"] > 12 << 20 and head["StorageClass"] == "GLACIER"
    assert rig.restore(ulid, recipes["gpg"].key, check=True).stdout == data


def test_restore_streams_before_later_fragments_arrive(rig, recipes, s3proxy):
    data = os.urandom(5 * FRAG)
    ulid = rig.backup(data, recipes["gpg"].cert, "-s", "64KiB", "-C", "none")
    rig.run("freeze", "--once", check=True)
    s3proxy.slow_next(1, 8.0, methods=["GET"], path_contains="chunk.4")
    proc = rig.popen("restore", "-v", rig.vault, "-u", ulid, "-k", str(recipes["gpg"].key),
                     bufsize=0)       # unbuffered: communicate() reads the fd itself
    first = b""
    while len(first) < 2 * FRAG:
        block = proc.stdout.read(2 * FRAG - len(first))
        assert block, "restore ended early"
        first += block
    assert first == data[:2 * FRAG]
    assert not s3proxy.requests("GET", "chunk.4"), "output came only after fragment 4"
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert first + rest == data


def test_restore_leaves_thawing_to_a_running_daemon(rig, recipes, s3proxy):
    data = os.urandom(3 * FRAG)
    ulid = rig.backup(data, recipes["gpg"].cert, "-s", "64KiB")
    rig.run("freeze", "--once", check=True)
    s3proxy.restore_delay = 2.0
    daemon = rig.popen("thaw")
    try:
        deadline = time.monotonic() + 30
        while not thaw_daemon_running(rig.spool):
            assert time.monotonic() < deadline and daemon.poll() is None, "thaw did not start"
            time.sleep(0.05)
        out = rig.restore(ulid, recipes["gpg"].key, check=True)
        assert out.stdout == data
        assert b"waiting for the running `cryophile thaw`" in out.stderr
    finally:
        daemon.terminate()
        _, err = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, err
    assert b"Traceback" not in err
    assert len(s3proxy.requests("POST", "restore")) >= 3
