"""The prune identity of docs/S3.md, enforced by a moto server that checks
policies: the write-only backup host cannot delete; the prune identity
prunes, removes and checks, but reads no fragment."""

from __future__ import annotations

import json
import os

import boto3
import pytest

from tests.s3rig import MotoServer
from tests.test_iam import documented_policies
from tests.test_s3_e2e import S3Rig

VAULT = "7b2e3c4d-5e6f-4a70-8b9c-0d1e2f3a4b5c"
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def iam_server(aws_env):
    # the first 7 requests (users, policies, keys, bucket) need no credentials
    server = MotoServer({"INITIAL_NO_AUTH_ACTION_COUNT": "7"}).start()
    iam = boto3.client("iam", endpoint_url=server.endpoint)
    backup_policy, _restore, prune_policy = documented_policies()
    creds = {}
    for name, policy in (("backup", backup_policy), ("prune", prune_policy)):
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=json.dumps(
            policy).replace("6a1f2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b", VAULT))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        creds[name] = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"],
                       "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
                       "CRYOPHILE_S3_ATTEMPTS": "1"}
    boto3.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket=VAULT)
    yield server.endpoint, creds
    server.stop()


def test_backup_host_cannot_delete_and_the_prune_identity_can(iam_server, recipes, tmp_path):
    endpoint, creds = iam_server
    host = S3Rig(tmp_path / "host", VAULT, endpoint)
    ulids = []
    for day in (1, 2, 3):
        proc = host.run("backup", "-v", VAULT, "-p", "tank", "-k", str(recipes["gpg"].cert),
                        "-s", "4KiB", "-t", f"2026-01-0{day}T00:00:00Z",
                        input=os.urandom(10_000), env=creds["backup"], check=True)
        ulids.append(proc.stdout.decode().strip())
    host.run("freeze", "--once", env=creds["backup"], check=True)

    for args in (["prune", VAULT, "--keep-last", "1", "--allow-early-delete"],
                 ["rm", f"{VAULT}/tank/{ulids[0]}"]):
        denied = host.run(*args, env=creds["backup"])
        assert denied.returncode == 10, denied.stderr
        assert b"access denied" in denied.stderr and b"Traceback" not in denied.stderr

    admin = S3Rig(tmp_path / "admin", VAULT, endpoint)
    assert admin.run("check", VAULT, env=creds["prune"]).returncode == 0
    read = admin.run("check", VAULT, "--read-data", env=creds["prune"])
    assert read.returncode == 10, read.stderr                  # no fragment is readable
    admin.run("rm", f"{VAULT}/tank/{ulids[0]}", env=creds["prune"], check=True)
    proc = admin.run("prune", VAULT, "--keep-last", "1", "--allow-early-delete",
                     env=creds["prune"], check=True)
    assert "1 kept, 0 held, 1 to delete" in proc.stdout.decode()
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=endpoint, **{
        "aws_access_key_id": creds["prune"]["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": creds["prune"]["AWS_SECRET_ACCESS_KEY"]}).list_objects_v2(
            Bucket=VAULT)["Contents"]]
    assert keys and all(k.startswith(f"tank/{ulids[2]}/") for k in keys)
