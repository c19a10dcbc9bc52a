"""pytest plugin: a moto S3 server, a fault proxy in front of it, buckets.

Load with ``pytest_plugins = ["tests.conftest_s3"]`` in tests/conftest.py.
Fixtures:

- ``aws_env`` (session, autouse): fake credentials, no real ~/.aws, no IMDS;
  no test can reach a real AWS account by accident.
- ``moto_endpoint`` (session): URL of the moto server, spoken to directly.
- ``moto_auth_endpoint`` (session, lazy): a second moto server that checks
  credentials, so wrong keys really fail (InvalidAccessKeyId).
- ``s3proxy``: the ``FaultProxy`` (session-wide, reset for each test);
  ``s3proxy.endpoint`` is its URL.
- ``s3client``: a boto3 client talking straight to moto, for assertions.
- ``bucket``: a fresh bucket named by a uuid4 (a vault), emptied afterwards.
"""

from __future__ import annotations

import uuid

import boto3
import pytest

from tests.s3rig import AWS_ENV_TO_CLEAR, FaultProxy, MotoServer, aws_test_env, remove_bucket


@pytest.fixture(scope="session", autouse=True)
def aws_env(tmp_path_factory):
    env = aws_test_env(str(tmp_path_factory.mktemp("aws")))
    with pytest.MonkeyPatch.context() as mp:
        for name in AWS_ENV_TO_CLEAR:
            mp.delenv(name, raising=False)
        for name, value in env.items():
            mp.setenv(name, value)
        yield env


@pytest.fixture(scope="session")
def moto_endpoint(aws_env):
    server = MotoServer().start()
    yield server.endpoint
    server.stop()


@pytest.fixture(scope="session")
def moto_auth_endpoint(aws_env):
    # With no unauthenticated actions allowed, unknown keys are refused.
    server = MotoServer({"INITIAL_NO_AUTH_ACTION_COUNT": "0"}).start()
    yield server.endpoint
    server.stop()


@pytest.fixture(scope="session")
def _s3proxy_session(moto_endpoint):
    proxy = FaultProxy(moto_endpoint).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def s3proxy(_s3proxy_session):
    _s3proxy_session.reset()
    yield _s3proxy_session
    _s3proxy_session.reset()


@pytest.fixture(scope="session")
def s3client(moto_endpoint):
    client = boto3.session.Session().client("s3", endpoint_url=moto_endpoint)
    yield client
    client.close()


@pytest.fixture
def bucket(s3client):
    name = str(uuid.uuid4())
    s3client.create_bucket(Bucket=name)
    yield name
    remove_bucket(s3client, name)
