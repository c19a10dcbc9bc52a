"""S3Store and RetryingStore against a moto server, with and without faults."""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import threading
import time

import pytest

from cryophile.errors import (
    ConflictError, IntegrityError, NotFoundError, NotRestoredError, StoreError,
    TransientStoreError,
)
from cryophile.store.base import State
from cryophile.store.retry import RetryingStore
from cryophile.store.s3 import S3Store
from tests.s3rig import free_port
from tests.store_contract import StoreContract, get_bytes, put_bytes, write_file

MiB = 1024 * 1024
SMALL_PARTS = {"multipart_threshold": 5 * MiB + 1, "part_size": 5 * MiB}


def make_s3(bucket, endpoint, **kwargs) -> S3Store:
    # One botocore attempt and short timeouts: faults reach our own retry.
    options = {"sdk_attempts": 1, "connect_timeout": 1, "read_timeout": 5, **kwargs}
    return S3Store(bucket, endpoint_url=endpoint, **options)


def retrying(inner, attempts=4) -> RetryingStore:
    return RetryingStore(inner, attempts=attempts, base=0.001, cap=0.01)


@pytest.fixture
def s3(bucket, s3proxy):
    store = make_s3(bucket, s3proxy.endpoint)
    yield store
    store.close()


@pytest.fixture(params=["s3", "s3-prefix-retrying-proxy", "s3-unconditional"])
def store(request, bucket, moto_endpoint):
    if request.param == "s3":
        inner = make_s3(bucket, moto_endpoint, storage_class="STANDARD")
        yield inner
    elif request.param == "s3-unconditional":
        inner = make_s3(bucket, moto_endpoint, storage_class="STANDARD",
                        conditional_writes=False)
        yield inner
    else:
        proxy = request.getfixturevalue("s3proxy")
        inner = make_s3(bucket, proxy.endpoint, storage_class="STANDARD", prefix="vaults/v1")
        yield retrying(inner)
    inner.close()


class TestS3StoreContract(StoreContract):
    pass


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


# -- storage classes, checksums, layout ------------------------------------

def test_default_storage_class_is_glacier(s3, s3client, bucket, tmp_path):
    put_bytes(s3, tmp_path, "k", b"cold")
    assert s3client.head_object(Bucket=bucket, Key="k")["StorageClass"] == "GLACIER"
    info = s3.head("k")
    assert (info.storage_class, info.state, info.size) == ("GLACIER", State.ARCHIVED, 4)
    assert [i.storage_class for i in s3.list()] == ["GLACIER"]


@pytest.mark.parametrize("storage_class,state", [
    ("STANDARD", State.AVAILABLE), ("GLACIER_IR", State.AVAILABLE),
    ("DEEP_ARCHIVE", State.ARCHIVED)])
def test_storage_class_per_put(s3, tmp_path, storage_class, state):
    put_bytes(s3, tmp_path, "k", b"x", storage_class=storage_class)
    assert (s3.head("k").storage_class, s3.head("k").state) == (storage_class, state)


def test_single_part_put_sends_sha256(s3, s3client, bucket, tmp_path):
    put_bytes(s3, tmp_path, "k", b"payload")
    head = s3client.head_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
    expected = base64.b64encode(hashlib.sha256(b"payload").digest()).decode()
    assert head["ChecksumSHA256"] == expected


def test_download_checksum_mismatch_is_an_integrity_error(s3, s3client, bucket):
    # moto stores a wrong checksum as given; botocore checks it on GET.
    s3client.put_object(Bucket=bucket, Key="k", Body=b"payload", ChecksumAlgorithm="SHA256",
                        ChecksumSHA256=base64.b64encode(b"\0" * 32).decode())
    with pytest.raises(IntegrityError) as exc:
        get_bytes(s3, "k")
    assert "k" in one_line(exc)


def test_prefix_is_a_folder_in_the_bucket(bucket, moto_endpoint, s3client, tmp_path):
    store = make_s3(bucket, moto_endpoint, prefix="/srv/vault/")
    put_bytes(store, tmp_path, "01X/chunk.1", b"x")
    assert [o["Key"] for o in s3client.list_objects_v2(Bucket=bucket)["Contents"]] == \
        ["srv/vault/01X/chunk.1"]
    assert [i.key for i in store.list()] == ["01X/chunk.1"]
    assert store.url == f"s3://{bucket}/srv/vault/"


def test_list_follows_pages(s3, s3proxy, tmp_path):
    for n in range(5):
        put_bytes(s3, tmp_path, f"k{n}", b"x", storage_class="STANDARD")
    s3._client.meta.events.register(      # force pages of 2 keys
        "provide-client-params.s3.ListObjectsV2",
        lambda params, **_: params.update(MaxKeys=2))
    s3.list_workers = 1                   # one after the other: page by page
    assert [i.key for i in s3.list()] == [f"k{n}" for n in range(5)]
    assert len(s3proxy.requests("GET", "list-type=2")) == 3
    s3proxy.reset()
    s3.list_workers = 8                   # at once: the rest cut into ranges
    assert [i.key for i in s3.list()] == [f"k{n}" for n in range(5)]
    assert 3 <= len(s3proxy.requests("GET", "list-type=2")) <= 1 + 8


# -- multipart ---------------------------------------------------------------

def test_multipart_round_trip_with_part_checksums(bucket, s3proxy, s3client, tmp_path):
    store = make_s3(bucket, s3proxy.endpoint, storage_class="STANDARD", **SMALL_PARTS)
    data = os.urandom(12 * MiB)
    put_bytes(store, tmp_path, "big", data)
    assert len(s3proxy.requests("PUT", "partNumber=")) == 3
    assert get_bytes(store, "big") == data
    boundary = 5 * MiB
    assert get_bytes(store, "big", start=boundary - 10, end=boundary + 10) == \
        data[boundary - 10:boundary + 10]
    # S3's composite checksum: SHA-256 over the parts' SHA-256 digests.
    parts = [hashlib.sha256(data[i:i + 5 * MiB]).digest() for i in range(0, len(data), 5 * MiB)]
    composite = base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode()
    head = s3client.head_object(Bucket=bucket, Key="big", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"].split("-")[0] == composite
    assert s3client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_multipart_size_exact_multiple_of_part_size(bucket, s3proxy, tmp_path):
    store = make_s3(bucket, s3proxy.endpoint, storage_class="STANDARD",
                    multipart_threshold=1, part_size=5 * MiB)
    data = os.urandom(10 * MiB)
    put_bytes(store, tmp_path, "big", data)
    assert len(s3proxy.requests("PUT", "partNumber=")) == 2
    assert get_bytes(store, "big") == data


def test_multipart_failure_aborts_the_upload(bucket, s3proxy, s3client, tmp_path):
    store = make_s3(bucket, s3proxy.endpoint, **SMALL_PARTS)
    s3proxy.fail_next(1, 500, "InternalError", methods="PUT", path_contains="partNumber=2")
    path, size, sha256 = write_file(tmp_path, os.urandom(12 * MiB))
    with pytest.raises(TransientStoreError, match="InternalError"):
        store.put("big", path, size=size, sha256=sha256)
    assert s3proxy.requests("DELETE", "uploadId=")
    assert s3client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert "Contents" not in s3client.list_objects_v2(Bucket=bucket)


def test_multipart_wrong_sha256_is_not_completed(bucket, s3proxy, s3client, tmp_path):
    store = make_s3(bucket, s3proxy.endpoint, **SMALL_PARTS)
    path, size, _ = write_file(tmp_path, os.urandom(6 * MiB))
    with pytest.raises(IntegrityError):
        store.put("big", path, size=size, sha256=b"\0" * 32)
    assert s3client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert "Contents" not in s3client.list_objects_v2(Bucket=bucket)


def test_multipart_retried_after_a_failed_part(bucket, s3proxy, s3client, tmp_path):
    store = retrying(make_s3(bucket, s3proxy.endpoint, storage_class="STANDARD",
                             **SMALL_PARTS))
    s3proxy.reset_next(1, methods="PUT", path_contains="partNumber=3")
    data = os.urandom(11 * MiB)
    put_bytes(store, tmp_path, "big", data)
    assert get_bytes(store, "big") == data
    assert len(s3proxy.requests("POST", "uploads")) == 2
    assert s3client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


# -- thawing -----------------------------------------------------------------

def test_glacier_thaw(s3, s3proxy, tmp_path):
    put_bytes(s3, tmp_path, "k", b"frozen bytes")
    with pytest.raises(NotRestoredError) as exc:
        s3.get("k", io.BytesIO())
    assert "k" in one_line(exc)
    s3proxy.restore_delay = 0.5
    s3.request_restore("k", tier="Standard", days=1)
    assert s3.head("k").state == State.RESTORING
    with pytest.raises(NotRestoredError):
        s3.get("k", io.BytesIO())
    s3.request_restore("k", tier="Standard", days=1)    # RestoreAlreadyInProgress
    assert s3proxy.requests("POST", "restore")[-1].status == 409
    while s3.head("k").state == State.RESTORING:
        time.sleep(0.05)
    assert len(s3proxy.requests("HEAD")) >= 3
    assert s3.head("k").state == State.AVAILABLE
    assert get_bytes(s3, "k") == b"frozen bytes"
    assert get_bytes(s3, "k", start=7) == b"bytes"


def restore_tiers(store) -> list[str]:
    tiers: list[str] = []
    store._client.meta.events.register(
        "provide-client-params.s3.RestoreObject",
        lambda params, **_: tiers.append(
            params["RestoreRequest"]["GlacierJobParameters"]["Tier"]))
    return tiers


@pytest.mark.expect_log
def test_deep_archive_expedited_falls_back_to_standard(s3, tmp_path, caplog):
    put_bytes(s3, tmp_path, "k", b"x", storage_class="DEEP_ARCHIVE")
    tiers = restore_tiers(s3)
    with caplog.at_level(logging.WARNING, "cryophile.store"):
        s3.request_restore("k", tier="Expedited", days=1)
    assert tiers == ["Standard"]
    assert "Standard" in caplog.text
    assert s3.head("k").state == State.AVAILABLE     # moto restores at once


@pytest.mark.expect_log
def test_expedited_without_capacity_falls_back(s3, s3proxy, tmp_path, caplog):
    put_bytes(s3, tmp_path, "k", b"x")
    tiers = restore_tiers(s3)
    s3proxy.fail_next(1, 503, "GlacierExpeditedRetrievalNotAvailable", methods="POST")
    with caplog.at_level(logging.WARNING, "cryophile.store"):
        s3.request_restore("k", tier="Expedited", days=1)
    assert tiers == ["Expedited", "Standard"]
    assert "Standard" in caplog.text


def test_restore_of_missing_key(s3):
    with pytest.raises(NotFoundError):
        s3.request_restore("nope", tier="Standard", days=1)


# -- faults and retries --------------------------------------------------------

FAULTS = {
    "503 SlowDown": lambda p, **kw: p.fail_next(2, 503, "SlowDown", **kw),
    "500 InternalError": lambda p, **kw: p.fail_next(2, 500, "InternalError", **kw),
    "reset": lambda p, **kw: p.reset_next(2, **kw),
}


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("method", ["PUT", "GET", "HEAD"])
def test_transient_faults_are_retried(bucket, s3proxy, tmp_path, fault, method):
    store = retrying(make_s3(bucket, s3proxy.endpoint, storage_class="STANDARD"))
    FAULTS[fault](s3proxy, methods=method)
    put_bytes(store, tmp_path, "k", b"data")
    assert get_bytes(store, "k") == b"data"
    assert store.head("k").size == 4
    assert s3proxy.pending_faults == 0
    assert len(s3proxy.requests(method)) == 3


def test_read_timeout_is_retried(bucket, s3proxy, tmp_path):
    store = retrying(make_s3(bucket, s3proxy.endpoint, read_timeout=0.3,
                             storage_class="STANDARD"))
    put_bytes(store, tmp_path, "k", b"data")
    s3proxy.slow_next(1, 1.0, methods="GET")
    assert get_bytes(store, "k") == b"data"


def test_botocore_retries_underneath(bucket, s3proxy, tmp_path):
    store = make_s3(bucket, s3proxy.endpoint, sdk_attempts=3, storage_class="STANDARD")
    put_bytes(store, tmp_path, "k", b"data")
    s3proxy.fail_next(1, 503, "SlowDown", methods="GET")
    assert get_bytes(store, "k") == b"data"


def test_get_resumes_without_duplicating_bytes(bucket, s3proxy, tmp_path):
    store = retrying(make_s3(bucket, s3proxy.endpoint, storage_class="STANDARD"))
    data = os.urandom(3 * MiB)
    put_bytes(store, tmp_path, "k", data)
    s3proxy.cut_next(1, after=MiB + 17, methods="GET")
    s3proxy.cut_next(1, after=1000, methods="GET")
    assert get_bytes(store, "k", start=5, end=3 * MiB - 5) == data[5:-5]
    ranges = [r.range for r in s3proxy.requests("GET")]
    assert ranges == [f"bytes=5-{3 * MiB - 6}", f"bytes={MiB + 22}-{3 * MiB - 6}",
                      f"bytes={MiB + 1022}-{3 * MiB - 6}"]


def test_get_resumes_into_a_pipe(bucket, s3proxy, tmp_path):
    store = retrying(make_s3(bucket, s3proxy.endpoint, storage_class="STANDARD"))
    data = os.urandom(2 * MiB)
    put_bytes(store, tmp_path, "k", data)
    s3proxy.cut_next(1, after=MiB, methods="GET")
    read_fd, write_fd = os.pipe()
    chunks = []
    with open(read_fd, "rb") as reader, open(write_fd, "wb") as writer:
        drain = threading.Thread(target=lambda: chunks.append(reader.read()))
        drain.start()
        assert store.get("k", writer) == len(data)
        writer.close()
        drain.join()
    assert chunks == [data]


def test_persistent_faults_give_up(bucket, s3proxy, tmp_path):
    store = retrying(make_s3(bucket, s3proxy.endpoint), attempts=3)
    s3proxy.fail_next(100, 503, "SlowDown")
    with pytest.raises(TransientStoreError) as exc:
        store.get("k", io.BytesIO())
    message = one_line(exc)
    assert "SlowDown" in message and bucket in message
    assert message.endswith("(gave up after 3 attempts)")
    assert len(s3proxy.requests("GET")) == 3


def test_non_transient_errors_are_not_retried(bucket, s3proxy):
    store = retrying(make_s3(bucket, s3proxy.endpoint))
    with pytest.raises(NotFoundError):
        store.get("nope", io.BytesIO())
    assert len(s3proxy.requests("GET")) == 1


def test_retry_backoff_is_exponential_with_full_jitter():
    class Flaky:
        url = "flaky://"
        calls = 0

        def head(self, key):
            self.calls += 1
            raise TransientStoreError("boom")
    sleeps: list[float] = []
    store = RetryingStore(Flaky(), attempts=8, base=0.2, cap=20, sleep=sleeps.append)
    with pytest.raises(TransientStoreError, match=r"^boom \(gave up after 8 attempts\)$"):
        store.head("k")
    assert store.inner.calls == 8 and len(sleeps) == 7
    assert all(0 <= s <= min(20, 0.2 * 2 ** n) for n, s in enumerate(sleeps))


# -- configuration errors --------------------------------------------------------

@pytest.mark.parametrize("operation", ["put", "get", "head", "list", "restore"])
def test_missing_bucket(s3proxy, tmp_path, operation):
    store = retrying(make_s3("no-such-bucket-here", s3proxy.endpoint))
    path, size, sha256 = write_file(tmp_path, b"x")
    calls = {
        "put": lambda: store.put("k", path, size=size, sha256=sha256),
        "get": lambda: store.get("k", io.BytesIO()),
        "head": lambda: store.head("k"),
        "list": lambda: list(store.list()),
        "restore": lambda: store.request_restore("k", tier="Standard", days=1),
    }
    with pytest.raises(StoreError) as exc:
        calls[operation]()
    assert one_line(exc) == f"bucket no-such-bucket-here does not exist at {s3proxy.endpoint}"
    assert not isinstance(exc.value, TransientStoreError)


@pytest.mark.parametrize("operation", ["head", "get", "list"])
def test_wrong_credentials(moto_auth_endpoint, operation):
    store = retrying(make_s3("some-bucket", moto_auth_endpoint))
    calls = {"head": lambda: store.head("k"), "get": lambda: store.get("k", io.BytesIO()),
             "list": lambda: list(store.list())}
    with pytest.raises(StoreError) as exc:
        calls[operation]()
    message = one_line(exc)
    assert "some-bucket" in message and moto_auth_endpoint in message
    assert "credentials" in message
    assert "testing" not in message     # never the key itself
    assert not isinstance(exc.value, TransientStoreError)


def test_unreachable_endpoint():
    endpoint = f"http://127.0.0.1:{free_port()}"     # nothing listens there
    store = retrying(make_s3("some-bucket", endpoint), attempts=3)
    with pytest.raises(StoreError) as exc:
        store.head("k")
    message = one_line(exc)
    assert "some-bucket" in message and endpoint in message
    assert message.endswith("(gave up after 3 attempts)")


def test_profile_not_found():
    with pytest.raises(StoreError, match="credentials"):
        S3Store("some-bucket", profile="no-such-profile")


# -- never overwriting ---------------------------------------------------

def test_multipart_put_never_replaces_other_bytes(bucket, s3proxy, s3client, tmp_path):
    store = retrying(make_s3(bucket, s3proxy.endpoint, storage_class="STANDARD", **SMALL_PARTS))
    first = os.urandom(6 * MiB)
    put_bytes(store, tmp_path, "01X/chunk.1", first)
    path, size, sha256 = write_file(tmp_path, os.urandom(6 * MiB), "other")
    with pytest.raises(ConflictError) as exc:
        store.put("01X/chunk.1", path, size=size, sha256=sha256)
    assert "01X/chunk.1" in one_line(exc) and "different content" in str(exc.value)
    assert get_bytes(store, "01X/chunk.1") == first
    assert not s3client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    # the same bytes again (a freeze killed before it dropped its copy): stored
    path, size, sha256 = write_file(tmp_path, first, "same")
    store.put("01X/chunk.1", path, size=size, sha256=sha256)
    assert len(s3proxy.requests("POST", "uploadId=")) == 3, "completes were conditional"


def test_put_records_its_sha256(s3, s3client, bucket, tmp_path):
    put_bytes(s3, tmp_path, "k", b"cold")
    assert s3.head("k").sha256 == hashlib.sha256(b"cold").digest()
    meta = s3client.head_object(Bucket=bucket, Key="k")["Metadata"]
    assert meta["sha256"] == hashlib.sha256(b"cold").hexdigest()


def test_object_without_checksum_is_a_conflict(s3, s3client, bucket, tmp_path):
    s3client.put_object(Bucket=bucket, Key="k", Body=b"cold")   # no checksum, no metadata
    with pytest.raises(ConflictError) as exc:
        put_bytes(s3, tmp_path, "k", b"cold")
    assert "cannot be compared" in one_line(exc)


def test_store_without_conditional_writes_gets_a_hint(bucket, s3proxy, tmp_path):
    s3proxy.fail_next(1, 501, "NotImplemented", methods=["PUT"])
    store = make_s3(bucket, s3proxy.endpoint)
    with pytest.raises(StoreError) as exc:
        put_bytes(store, tmp_path, "k", b"cold")
    assert "conditional_writes = false" in one_line(exc)
