"""The least-privilege IAM policies of docs/S3.md, enforced by a moto server
that checks credentials and policies: a write-only backup host can back up
and freeze but not read; the restore identity restores."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import boto3
import pytest

from tests.s3rig import MotoServer
from tests.test_s3_e2e import S3Rig

VAULT = "6a1f2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "S3.md"


def documented_policies() -> list[dict]:
    blocks = re.findall(r"```json\n(.*?)```", DOCS.read_text(), re.S)
    return [json.loads(b.replace("BUCKET", VAULT)) for b in blocks]


@pytest.fixture(scope="module")
def iam_server(aws_env):
    # the first 7 requests (users, policies, keys, bucket) need no credentials
    server = MotoServer({"INITIAL_NO_AUTH_ACTION_COUNT": "7"}).start()
    iam = boto3.client("iam", endpoint_url=server.endpoint)
    backup_policy, restore_policy = documented_policies()[:2]
    creds = {}
    for name, policy in (("backup", backup_policy), ("restore", restore_policy)):
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        creds[name] = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                       "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    boto3.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket=VAULT)
    yield server.endpoint, creds
    server.stop()


def test_write_only_backup_host_and_separate_restore_identity(iam_server, recipes, tmp_path):
    endpoint, creds = iam_server
    rig = S3Rig(tmp_path, VAULT, endpoint)
    data = os.urandom(200_000)
    backup_env = {**creds["backup"], "CRYOPHILE_S3_ATTEMPTS": "1"}
    proc = rig.run("backup", "-v", VAULT, "-k", str(recipes["gpg"].cert), "-s", "64KiB",
                   input=data, env=backup_env, check=True)
    ulid = proc.stdout.decode().strip()
    rig.run("freeze", "--once", env=backup_env, check=True)

    denied = rig.run("restore", "-v", VAULT, "-u", ulid, "-k", str(recipes["gpg"].key),
                     input=None, env=backup_env)
    err = denied.stderr.decode()
    assert denied.returncode == 10, err
    assert "access denied" in err and VAULT in err and "Traceback" not in err

    fresh = S3Rig(tmp_path / "restore-host", VAULT, endpoint)
    restore_env = {**creds["restore"], "CRYOPHILE_S3_ATTEMPTS": "1"}
    out = fresh.run("restore", "-v", VAULT, "-u", ulid, "-k", str(recipes["gpg"].key),
                    input=None, env=restore_env, check=True)
    assert out.stdout == data
    listing = fresh.run("ls", VAULT, env=restore_env, check=True).stdout.decode()
    assert ulid in listing


@pytest.mark.timeout(300)
def test_write_only_host_never_overwrites_an_archive(iam_server, recipes, tmp_path):
    """The backup identity cannot ask whether -u ULID is taken (HeadObject is
    denied): the conditional upload refuses, and the archive stays whole."""
    endpoint, creds = iam_server
    backup_env = {**creds["backup"], "CRYOPHILE_S3_ATTEMPTS": "1"}
    rig = S3Rig(tmp_path, VAULT, endpoint)
    data = os.urandom(200_000)
    cert = str(recipes["gpg"].cert)
    ulid = rig.run("backup", "-v", VAULT, "-k", cert, "-s", "64KiB", input=data,
                   env=backup_env, check=True).stdout.decode().strip()
    rig.run("freeze", "--once", env=backup_env, check=True)

    again = S3Rig(tmp_path / "same-ulid", VAULT, endpoint)
    again.run("backup", "-v", VAULT, "-k", cert, "-s", "64KiB", "-u", ulid,
              input=os.urandom(200_000), env=backup_env, check=True)
    proc = again.run("freeze", "--once", env=backup_env)
    err = proc.stderr.decode()
    assert proc.returncode == 10, err
    assert "already exists" in err and "HeadObject is denied" in err and ulid in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert list((again.spool / "freeze").glob(f"*/{ulid}/chunk.1")), "the local copy stays"

    fresh = S3Rig(tmp_path / "restore-host", VAULT, endpoint)
    restore_env = {**creds["restore"], "CRYOPHILE_S3_ATTEMPTS": "1"}
    out = fresh.run("restore", "-v", VAULT, "-u", ulid, "-k", str(recipes["gpg"].key),
                    input=None, env=restore_env, check=True)
    assert out.stdout == data
