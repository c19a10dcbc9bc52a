"""Bandwidth limits: the token bucket (pure, with a fake clock), its sharing
between threads, and real transfers to the moto server that take at least
as long as the limit says (lower bounds only: never a flaky timed test)."""

import datetime
import io
import os
import re
import threading
import time

import hypothesis.strategies as st
import pytest
from hypothesis import given

from cryophile import errors, throttle
from cryophile.throttle import Paced, TokenBucket, parse_rate
from tests.test_s3_e2e import S3Rig

MiB = 1 << 20


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


@given(rate=st.integers(1, 10 * MiB), sizes=st.lists(st.integers(0, 4 * MiB), max_size=30),
       gaps=st.lists(st.floats(0, 2), max_size=30))
def test_bucket_keeps_to_the_rate(rate, sizes, gaps):
    clock = FakeClock()
    bucket = TokenBucket(rate, clock=clock, sleep=clock.sleep)
    idle = 0.0
    for i, n in enumerate(sizes):
        gap = gaps[i] if i < len(gaps) else 0.0
        clock.now += gap
        idle += gap
        bucket.take(n)
    total = sum(sizes)
    # never faster than the rate, beyond the one burst the bucket holds
    assert clock.now >= (total - bucket.capacity) / rate - 1e-6
    # and never slower than the rate asks, when nothing else takes tokens
    assert clock.now <= idle + total / rate + 1e-6


def test_a_full_bucket_lets_a_burst_through_then_paces():
    clock = FakeClock()
    bucket = TokenBucket(1000, clock=clock, sleep=clock.sleep)
    bucket.take(250)                    # a quarter second's worth: free
    assert clock.now == 0
    bucket.take(1000)
    assert clock.now == pytest.approx(1.0)
    clock.now += 10                     # idle: the bucket refills to its capacity only
    bucket.take(250)
    bucket.take(500)
    assert clock.now == pytest.approx(11.5)


def test_threads_share_one_bucket():
    bucket = TokenBucket(4 * MiB)
    start = time.monotonic()
    threads = [threading.Thread(target=lambda: [bucket.take(64 << 10) for _ in range(8)])
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    # 2 MiB at 4 MiB/s, less the quarter-second burst: at least 0.25 s
    assert time.monotonic() - start >= 0.25 - 0.01


def test_a_paced_body_pays_each_byte_once():
    clock = FakeClock()
    bucket = TokenBucket(1000, clock=clock, sleep=clock.sleep)
    body = Paced(io.BytesIO(b"x" * 2250), bucket)
    assert body.read() == b"x" * 2250          # read to sign it
    assert clock.now == pytest.approx(2.0)
    body.seek(0)
    while body.read(100):                       # read again to send it: already paid
        pass
    assert clock.now == pytest.approx(2.0)
    assert body.tell() == 2250


@pytest.mark.parametrize("text, rate", [
    ("10M", 10 * MiB), ("10MiB", 10 * MiB), ("10MiB/s", 10 * MiB), ("2MB", 2_000_000),
    ("512k", 512 << 10), ("1000", 1000), (1000, 1000), ("0", None), (0, None), (None, None),
    ("  8M/s ", 8 * MiB)])
def test_parse_rate(text, rate):
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["fast", "-1", "10Q", "M", "1.5M"])
def test_parse_rate_refuses(text):
    with pytest.raises(errors.UsageError, match="bytes per second"):
        parse_rate(text, "--limit-upload")


def test_a_bad_limit_is_one_line_and_exit_2(tmp_path):
    from tests.clirig import make_rig
    rig = make_rig(tmp_path)
    proc = rig.run("freeze", "--once", "--limit-upload", "fast")
    assert proc.returncode == 2
    assert proc.stderr.decode().strip().count("\n") == 0 and "--limit-upload" in \
        proc.stderr.decode()
    rig.config.write_text(rig.config.read_text().replace(
        "[vault.", 'limit_download = "slow"\n[vault.', 1))
    proc = rig.run("status")
    assert proc.returncode == 3 and "limit_download" in proc.stderr.decode()


def test_unlimited_by_default():
    throttle.configure(None, None)
    f = io.BytesIO(b"abc")
    assert throttle.paced_upload(f) is f and throttle.paced_bytes(b"abc") == b"abc"
    assert throttle.download_block(1 << 20) == 1 << 20


STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z ")


def logged(rig, log_file, first: str, last: str, *args, **kw) -> float:
    """Seconds between the log lines saying ``first`` and ``last`` (timestamps of
    --log-file): the transfer itself, without the command's start and key work."""
    log_file.unlink(missing_ok=True)
    rig.run("-d", "--log-file", str(log_file), *args, check=True, **kw)
    stamps = {}
    for line in log_file.read_text().splitlines():
        for word in (first, last):
            m = STAMP.match(line)
            if m and word in line and word not in stamps:
                stamps[word] = datetime.datetime.fromisoformat(m.group(1))
    return (stamps[last] - stamps[first]).total_seconds()


@pytest.mark.timeout(300)
def test_limits_hold_on_real_transfers_to_s3(tmp_path, bucket, moto_endpoint, recipes):
    rig = S3Rig(tmp_path, bucket, moto_endpoint, storage_class="STANDARD", part_size="5MiB")
    log_file = tmp_path / "log"
    small = os.urandom(4 * MiB)
    ulid = rig.backup(small, recipes["sq"].cert, "-C", "none")
    # 4 MiB in one PUT at 2 MiB/s: at least (4 MiB - the 0.5 MiB burst) / 2 MiB/s
    assert logged(rig, log_file, "uploading", "frozen",
                  "freeze", "--once", "--limit-upload", "2M") >= 1.5
    out = tmp_path / "out"
    # and back at 2 MiB/s
    assert logged(rig, log_file, "downloading", "restored",
                  "restore", "-v", rig.vault, "-u", ulid, "-k", str(recipes["sq"].key),
                  "-o", str(out), "--limit-download", "2M", input=None) >= 1.5
    assert out.read_bytes() == small

    # multipart (5 MiB parts, in parallel), the limit from the configuration
    big = os.urandom(11 * MiB)
    rig.backup(big, recipes["sq"].cert, "-C", "none")
    rig.config.write_text(f'limit_upload = "6M"\n{rig.config.read_text()}')
    # 11 MiB at 6 MiB/s: 1.58 s at least
    assert logged(rig, log_file, "uploading", "frozen", "freeze", "--once") >= 1.5
    assert not list(rig.spool.rglob("chunk.*"))


def test_config_limits():
    from cryophile import config
    cfg = config.parse({"limit_upload": "10M", "limit_download": 2_000_000})
    assert (cfg.limit_upload, cfg.limit_download) == (10 * MiB, 2_000_000)
    assert config.parse({"limit_upload": "0"}).limit_upload is None
    assert config.parse({}).limit_download is None
    with pytest.raises(errors.ConfigError, match="limit_upload must be a rate"):
        config.parse({"limit_upload": 1.5})
