"""The log never shows credentials, even at trace level with boto3's own
debug output; --log-file sends it to a file, with timestamps."""

from __future__ import annotations

import logging
import os
import re
import stat

import hypothesis.strategies as st
import pytest
from hypothesis import given

from cryophile import log
from tests.test_s3_e2e import S3Rig

SECRET = "SECRETkeyMARKER0123456789abcdefghijklmn"
TOKEN = "TOKENmarker/With+Base64==FwoGZXIvYXdzEJr//////////wEaDKZ"
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z cryophile\[\d+\]: "
CREDS = {"AWS_ACCESS_KEY_ID": "AKIATESTMARKER", "AWS_SECRET_ACCESS_KEY": SECRET,
         "AWS_SESSION_TOKEN": TOKEN, "CRYOPHILE_LOG": "trace,botocore=trace,urllib3=trace"}


def assert_clean(text: str) -> None:
    for secret in (SECRET, TOKEN, TOKEN.replace("/", "%2F").replace("+", "%2B")):
        assert secret not in text
    assert "TOKENmarker" not in text and "SECRETkeyMARKER" not in text


@pytest.mark.timeout(300)
def test_trace_log_of_a_real_session_shows_no_credentials(tmp_path, bucket, moto_endpoint,
                                                          recipes):
    rig = S3Rig(tmp_path, bucket, moto_endpoint)
    ulid = rig.backup(os.urandom(12000), recipes["sq"].cert, "-s", "4KiB")
    seen = []
    for args in (["freeze", "--once"], ["ls", rig.vault]):
        proc = rig.run(*args, env=CREDS, check=True)
        seen.append(proc.stderr.decode())
    proc = rig.restore(ulid, recipes["sq"].key, env=CREDS, check=True)
    seen.append(proc.stderr.decode())
    text = "\n".join(seen)
    assert "X-Amz-Security-Token" in text and "Authorization" in text    # boto3 spoke up
    assert_clean(text)
    assert log.REDACTED in text


@pytest.mark.timeout(300)
def test_log_file_has_timestamps_and_no_credentials(tmp_path, bucket, moto_endpoint, recipes):
    rig = S3Rig(tmp_path, bucket, moto_endpoint)
    rig.backup(b"x" * 12000, recipes["sq"].cert, "-s", "4KiB")
    logfile = tmp_path / "freeze.log"
    old = os.umask(0)
    try:
        proc = rig.run("freeze", "--once", "--log-file", str(logfile), "-d", env=CREDS,
                       check=True)
    finally:
        os.umask(old)
    assert proc.stderr == b""
    text = logfile.read_text()
    assert stat.S_IMODE(logfile.stat().st_mode) == 0o600
    first = text.splitlines()[0]
    assert re.match(STAMP, first), first
    assert "Authorization" in text and log.REDACTED in text
    assert_clean(text)


def test_errors_reach_stderr_and_the_log_file(tmp_path, recipes):
    from tests.clirig import make_rig
    rig = make_rig(tmp_path)
    logfile = tmp_path / "restore.log"
    proc = rig.run("restore", "-v", rig.vault, "-u", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "-k",
                   str(recipes["sq"].key), "--log-file", str(logfile), input=None)
    assert proc.returncode == 7
    [line] = proc.stderr.decode().splitlines()
    assert line.startswith("cryophile: error: no archive")
    assert re.search(STAMP + "error: no archive", logfile.read_text())


def test_log_file_not_writable(tmp_path):
    from tests.clirig import make_rig
    rig = make_rig(tmp_path)
    proc = rig.run("status", "--log-file", str(tmp_path / "no" / "such" / "dir.log"))
    assert proc.returncode == 11
    assert proc.stderr.decode().count("\n") == 1 and "log file" in proc.stderr.decode()


# --- the filter itself --------------------------------------------------------------

token = st.text(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="),
                min_size=12, max_size=80).filter(lambda t: t[0].isalnum())


@given(token)
def test_redact_hides_tokens_wherever_botocore_puts_them(value):
    forms = [
        f"headers={{'X-Amz-Security-Token': b'{value}', 'Authorization': b'AWS4-HMAC-SHA256 "
        f"Credential=AKIA/x, SignedHeaders=host, Signature={value}'}}",
        f"x-amz-security-token:{value}\nhost:example",
        f"https://b.example/k?X-Amz-Signature={value}&X-Amz-Security-Token={value}",
        f"<SessionToken>{value}</SessionToken><SecretAccessKey>{value}</SecretAccessKey>",
        f'{{"SecretAccessKey": "{value}", "SessionToken": "{value}"}}',
        f"aws_secret_access_key = {value}",
        f"Credentials(access_key='AKIA', secret_key='{value}', token='{value}')",
        f"authorization: Bearer {value}",
    ]
    for text in forms:
        assert value not in log.redact(text), text


def test_redact_filter_covers_arguments_and_tracebacks(caplog):
    handler = logging.Handler()
    handler.addFilter(log.Redact())
    record = logging.LogRecord("botocore", logging.DEBUG, __file__, 1,
                               "headers %s", ({"X-Amz-Security-Token": "abcdefgh1234"},), None)
    try:
        raise ValueError("aws_session_token=abcdefgh1234")
    except ValueError:
        import sys
        record.exc_info = sys.exc_info()
    assert handler.filter(record)
    assert "abcdefgh1234" not in record.getMessage()
    assert "abcdefgh1234" not in record.exc_text
