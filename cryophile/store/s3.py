"""A vault in an S3 bucket (Amazon S3 Glacier, or any S3-compatible store).

Concurrency rules: one botocore session and one client are made in the
constructor and shared.  botocore clients are thread-safe; sessions are not,
so nothing here creates a session after ``__init__``.  Callers run every
method in a worker thread (``trio.to_thread.run_sync``); a multipart ``put``
adds up to ``max_concurrency`` threads of its own, and ``list`` up to
``LIST_WORKERS``, so the connection pool is
sized for several such callers at once.

Never overwriting: every put is conditional (``If-None-Match: *`` on
PutObject and CompleteMultipartUpload, which S3 has honoured since 2024), and
carries its SHA-256 (as the object's checksum and in ``x-amz-meta-sha256``).
A put that meets an existing object asks HeadObject whether it holds the
same bytes (a re-upload after a lost answer or a crash: success) or not
(ConflictError).  For stores without conditional writes the vault setting
``conditional_writes = false`` checks with HeadObject before uploading
instead, which leaves a small race and needs read access to be safe.

Retries: botocore's own ``standard`` retry mode smooths over single hiccups;
``RetryingStore`` (retry.py) retries the whole operation with backoff when an
error is still transient after that.  Credentials come only from botocore's
chain (environment, shared files, ``profile``, instance roles) and are never
logged or put into messages.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import logging
import threading
from typing import BinaryIO, Iterable, Iterator

import botocore.config
import botocore.exceptions
import botocore.session
import urllib3.exceptions

from cryophile import throttle
from cryophile.errors import (
    AccessDeniedError, ConflictError,
    IntegrityError, NotFoundError, NotRestoredError, StoreError, TransientStoreError,
)
from cryophile.store import listing, s3list
from cryophile.store.base import ObjectInfo, State, Store, check_same, file_sha256

log = logging.getLogger("cryophile.store")

MiB = 1024 * 1024
ARCHIVED_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
MIN_PART_SIZE = 5 * MiB              # S3 rejects smaller parts (except the last)
MAX_PARTS = 10_000
LIST_PAGE = 1000                     # keys per LIST request (S3's maximum)
LIST_WORKERS = 8                     # LIST requests in flight (listing.py)
CHUNK = 1 * MiB                      # GET streaming unit: memory stays flat

_DENIED = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403",
    "ExpiredToken", "InvalidToken", "AllAccessDisabled", "AccountProblem",
})
_TRANSIENT = frozenset({
    "500", "502", "503", "504", "429", "InternalError", "ServiceUnavailable",
    "SlowDown", "RequestTimeout", "Throttling", "ThrottlingException",
})
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
_EXISTS = frozenset({"PreconditionFailed", "412"})
# Another conditional write of the key is in flight: S3 asks to try again.
_CONCURRENT = frozenset({"ConditionalRequestConflict", "409"})
_UNSUPPORTED = frozenset({"NotImplemented", "501"})
_BAD_DIGEST = frozenset({"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"})
_NETWORK = (
    botocore.exceptions.EndpointConnectionError,    # includes ConnectTimeoutError
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.HTTPClientError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.ReadTimeoutError,
    ConnectionError,
    TimeoutError,
)
_FAILURES = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, *_NETWORK)


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


class S3Store(Store):
    """Objects ``PREFIX/KEY`` in ``bucket``; see the module docstring for threads."""

    def __init__(self, bucket: str, *, prefix: str = "", endpoint_url: str | None = None,
                 region: str | None = None, profile: str | None = None,
                 storage_class: str = "GLACIER", multipart_threshold: int = 64 * MiB,
                 part_size: int = 16 * MiB, max_concurrency: int = 4,
                 sdk_attempts: int = 3, connect_timeout: float = 10.0,
                 read_timeout: float = 60.0, conditional_writes: bool = True):
        """``prefix`` is a folder inside the bucket ("a/b" and "a/b/" are the
        same).  ``sdk_attempts``, ``connect_timeout`` and ``read_timeout`` tune
        botocore underneath our own retries (tests make them small)."""
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.storage_class = storage_class
        self.multipart_threshold = max(multipart_threshold, 1)
        self.part_size = max(part_size, MIN_PART_SIZE)
        self.max_concurrency = max(max_concurrency, 1)
        self.list_page, self.list_workers = LIST_PAGE, LIST_WORKERS
        self.conditional_writes = conditional_writes
        self.endpoint = endpoint_url or "AWS S3"
        self.url = f"s3://{bucket}/{self.prefix}"
        config = botocore.config.Config(
            # Every concurrent caller may run a multipart upload of its own.
            max_pool_connections=max(10, 4 * self.max_concurrency),
            retries={"mode": "standard", "total_max_attempts": max(sdk_attempts, 1)},
            connect_timeout=connect_timeout, read_timeout=read_timeout,
        )
        try:
            # botocore's session, not boto3's: the same client, credentials and
            # configuration, without importing s3transfer for methods never used
            session = botocore.session.Session(profile=profile)
            if region is not None:
                session.set_config_variable("region", region)
            self._client = session.create_client("s3", region_name=region,
                                                 endpoint_url=endpoint_url, config=config)
        except botocore.exceptions.BotoCoreError as exc:
            raise self._error(exc, "open") from exc
        self.endpoint = endpoint_url or self._client.meta.endpoint_url
        s3list.install(self._client)       # listings: our parser, not botocore's

    # -- the Store interface ----------------------------------------------

    def put(self, key: str, path: str, *, size: int, sha256: bytes | None = None,
            storage_class: str | None = None) -> None:
        storage_class = storage_class or self.storage_class
        try:
            if sha256 is None:
                sha256 = file_sha256(path)
            if not self.conditional_writes:
                existing = self._existing(key)
                if existing is not None:
                    return check_same(self.url, key, size, sha256, existing)
            if size < self.multipart_threshold:
                self._put_single(key, path, sha256, storage_class)
            else:
                _MultipartUpload(self, key, storage_class).run(path, size, sha256)
        except botocore.exceptions.ClientError as exc:
            code = _code(exc)
            if code in _EXISTS:
                return self._settle(key, size, sha256)
            if code in _CONCURRENT:
                raise TransientStoreError(f"upload of {key} in bucket {self.bucket} met a "
                                          "concurrent write of the same key") from exc
            if code in _UNSUPPORTED and self.conditional_writes:
                raise StoreError(f"upload of {key} to bucket {self.bucket} at {self.endpoint} "
                                 f"failed ({code}): this store may not support conditional "
                                 "writes (If-None-Match); set conditional_writes = false "
                                 "for this vault (see docs/S3.md)") from exc
            raise self._error(exc, "upload", key) from exc
        except _FAILURES as exc:
            raise self._error(exc, "upload", key) from exc
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from None

    def _existing(self, key: str) -> ObjectInfo | None:
        """The object under ``key``, or None when absent or when the
        credentials may not ask (a write-only identity)."""
        try:
            return self.head(key, checksum=True)
        except NotFoundError:
            return None
        except AccessDeniedError:
            log.debug("cannot check whether %s exists in bucket %s: HeadObject denied",
                      key, self.bucket)
            return None

    def _settle(self, key: str, size: int, sha256: bytes) -> None:
        """A conditional put found ``key`` taken: ours (same bytes) or a conflict."""
        try:
            existing = self.head(key, checksum=True)
        except NotFoundError:
            raise TransientStoreError(f"{key} in bucket {self.bucket} existed and then "
                                      "vanished during the upload") from None
        except AccessDeniedError:
            raise ConflictError(
                f"{key} already exists in {self.url} and HeadObject is denied, so it "
                "cannot be compared: not overwritten (the local copy stays in the "
                "spool)") from None
        check_same(self.url, key, size, sha256, existing)

    def get(self, key: str, out: BinaryIO, *, start: int = 0, end: int | None = None) -> int:
        if end is not None and end <= start:
            return 0
        # botocore < 1.36 checks the stored checksum of a GET only when asked
        args = {"Bucket": self.bucket, "Key": self.prefix + key, "ChecksumMode": "ENABLED"}
        if start or end is not None:
            args["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        written = 0
        try:
            body = self._client.get_object(**args)["Body"]
            try:
                for chunk in body.iter_chunks(throttle.download_block(CHUNK)):
                    throttle.downloaded(len(chunk))
                    out.write(chunk)
                    written += len(chunk)
            finally:
                body.close()
        except botocore.exceptions.ClientError as exc:
            if _code(exc) == "InvalidRange":     # start at or past the end
                return 0
            raise self._error(exc, "download", key) from exc
        except _FAILURES as exc:
            raise self._error(exc, "download", key) from exc
        return written

    def head(self, key: str, *, checksum: bool = False) -> ObjectInfo:
        """``checksum`` also asks for S3's own checksum (ChecksumMode, which
        needs kms:Decrypt on KMS-encrypted buckets): only to settle a
        conflict with an object that lacks our x-amz-meta-sha256."""
        args = {"ChecksumMode": "ENABLED"} if checksum else {}
        try:
            resp = self._client.head_object(Bucket=self.bucket, Key=self.prefix + key, **args)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                self._check_bucket()    # a HEAD 404 does not say which is missing
            raise self._error(exc, "head", key) from exc
        except _FAILURES as exc:
            raise self._error(exc, "head", key) from exc
        storage_class = resp.get("StorageClass") or "STANDARD"
        return ObjectInfo(key=key, size=resp["ContentLength"], storage_class=storage_class,
                          state=_state(storage_class, resp.get("Restore")),
                          sha256=_sha256(resp), modified=resp.get("LastModified"))

    def request_restore(self, key: str, *, tier: str, days: int) -> None:
        """Start a restore; tolerate one already running or one not needed.

        S3 Glacier Deep Archive has no Expedited tier, and Expedited capacity
        can run out (GlacierExpeditedRetrievalNotAvailable): in both cases we
        fall back to the Standard tier and log a warning, because a slower
        thaw beats none.
        """
        if tier == "Expedited" and self.head(key).storage_class == "DEEP_ARCHIVE":
            log.warning("%s: DEEP_ARCHIVE has no Expedited restores; using Standard", key)
            tier = "Standard"
        try:
            self._restore(key, tier, days)
        except botocore.exceptions.ClientError as exc:
            code = _code(exc)
            if code == "GlacierExpeditedRetrievalNotAvailable" and tier == "Expedited":
                log.warning("%s: no Expedited capacity now; using Standard", key)
                return self.request_restore(key, tier="Standard", days=days)
            if code in ("RestoreAlreadyInProgress", "InvalidObjectState",
                        "ObjectAlreadyInActiveTierError"):
                return None     # running already, or readable without a restore
            raise self._error(exc, "restore", key) from exc
        except _FAILURES as exc:
            raise self._error(exc, "restore", key) from exc

    def list(self, prefix: str = "", *, expected: Iterable[str] = ()) -> Iterator[ObjectInfo]:
        """Several pages at once (listing.py), each with the restore status
        of archived objects (no HEAD each), read by s3list.py.  With the
        keys the caller ``expected``, the ranges are placed so that each
        holds one page of them."""
        full = self.prefix + prefix

        def page(after: str, upto: str | None):
            kw = {"StartAfter": after} if after else {}
            reply = self._client.list_objects_v2(
                Bucket=self.bucket, Prefix=full, MaxKeys=self.list_page,
                OptionalObjectAttributes=["RestoreStatus"], **kw)
            parsed = reply.get(s3list.PAGE, reply)      # botocore's, if the hook did not run
            if isinstance(parsed, s3list.MalformedPage):
                raise StoreError(f"list of {prefix!r} in bucket {self.bucket} at "
                                 f"{self.endpoint} failed: {_one_line(parsed)}")
            contents = parsed.get("Contents", [])
            mine = [o for o in contents if upto is None or o["Key"] <= upto]
            infos = [self._listed(o) for o in mine]
            return infos, [o["Key"] for o in mine], (
                bool(parsed.get("IsTruncated")) and len(mine) == len(contents))
        expected = sorted({self.prefix + k for k in expected if k.startswith(prefix)})
        bounds = listing.bounds(expected, self.list_page) if expected else None
        try:
            return listing.parallel(page, self.list_workers, bounds=bounds)
        except _FAILURES as exc:
            raise self._error(exc, "list", prefix) from exc

    def _listed(self, obj: dict) -> ObjectInfo:
        sclass = obj.get("StorageClass") or "STANDARD"
        return ObjectInfo(key=obj["Key"][len(self.prefix):], size=obj["Size"],
                          state=_listed_state(sclass, obj.get("RestoreStatus")),
                          storage_class=sclass, modified=obj.get("LastModified"))

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self.prefix + key)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) not in _NOT_FOUND:
                raise self._error(exc, "delete", key) from exc
        except _FAILURES as exc:
            raise self._error(exc, "delete", key) from exc

    def abort_uploads(self, prefix: str) -> int:
        aborted = 0
        try:
            pages = self._client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix)
            for page in pages:
                for upload in page.get("Uploads", ()):
                    self._client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                    aborted += 1
        except _FAILURES as exc:
            raise self._error(exc, "abort unfinished uploads", prefix) from exc
        return aborted

    def close(self) -> None:
        self._client.close()

    # -- helpers ----------------------------------------------------------

    def _put_single(self, key: str, path: str, sha256: bytes, storage_class: str) -> None:
        args = {"ChecksumAlgorithm": "SHA256", "ChecksumSHA256": _b64(sha256),
                "Metadata": {"sha256": sha256.hex()}}     # S3 checks it: BadDigest if not
        if self.conditional_writes:
            args["IfNoneMatch"] = "*"
        with open(path, "rb") as body:
            body = throttle.paced_upload(body)
            self._client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=body,
                                    StorageClass=storage_class, **args)

    def _restore(self, key: str, tier: str, days: int) -> None:
        self._client.restore_object(
            Bucket=self.bucket, Key=self.prefix + key,
            RestoreRequest={"Days": days, "GlacierJobParameters": {"Tier": tier}})

    def _check_bucket(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in _NOT_FOUND | {"NoSuchBucket"}:
                raise self._error(exc, "head", None, code="NoSuchBucket") from exc
        except _FAILURES:
            pass    # the caller reports its own error

    def _error(self, exc: BaseException, verb: str, key: str | None = None, *,
               code: str | None = None) -> Exception:
        """The one place that turns boto3/botocore/urllib3 failures into ours."""
        where = f"bucket {self.bucket} at {self.endpoint}"
        what = f"{key} in {where}" if key is not None else where
        if isinstance(exc, botocore.exceptions.ClientError):
            code = code or _code(exc)
            message = _one_line(exc.response.get("Error", {}).get("Message") or code)
            if code == "NoSuchBucket":
                return StoreError(f"bucket {self.bucket} does not exist at {self.endpoint}")
            if code in _DENIED:
                return AccessDeniedError(f"access denied to {where} ({code}): "
                                  "check the credentials and the bucket policy")
            if code in _NOT_FOUND:
                return NotFoundError(f"{key} not found in {where}")
            if code == "InvalidObjectState":
                return NotRestoredError(f"{key} in {where} is archived and not restored")
            if code in _BAD_DIGEST:
                return IntegrityError(f"{verb} of {what} failed: content does not "
                                      f"match its checksum ({code})")
            if code in _TRANSIENT:
                return TransientStoreError(f"{verb} of {what} failed: {code}: {message}")
            return StoreError(f"{verb} of {what} failed: {code}: {message}")
        if isinstance(exc, botocore.exceptions.FlexibleChecksumError):
            return IntegrityError(f"{verb} of {what}: checksum mismatch in transit")
        if isinstance(exc, (botocore.exceptions.NoCredentialsError,
                            botocore.exceptions.PartialCredentialsError,
                            botocore.exceptions.ProfileNotFound)):
            return StoreError(f"no usable AWS credentials for {where}: {_one_line(exc)}")
        if isinstance(exc, _NETWORK):
            return TransientStoreError(f"{verb} of {what} failed: "
                                       f"{type(exc).__name__}: {_one_line(exc)}")
        return StoreError(f"{verb} of {what} failed: {_one_line(exc)}")


def _code(exc: botocore.exceptions.ClientError) -> str:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(error.get("Code") or status or "")


def _first_failure_or_results(futures: list[concurrent.futures.Future]) -> list:
    """Results in order, or the first real error (not a cancellation it caused)."""
    concurrent.futures.wait(futures)
    for fut in futures:
        if not fut.cancelled() and fut.exception() is not None:
            raise fut.exception()
    return [fut.result() for fut in futures]


def _sha256(resp: dict) -> bytes | None:
    """The whole object's SHA-256 from HeadObject: our metadata, else a
    full-object checksum (a multipart one is a hash of the parts' hashes)."""
    try:
        meta = resp.get("Metadata", {}).get("sha256")
        if meta:
            return bytes.fromhex(meta)
        checksum = resp.get("ChecksumSHA256")
        if checksum and "-" not in checksum and resp.get("ChecksumType") != "COMPOSITE":
            return base64.b64decode(checksum)
    except ValueError:
        pass
    return None


def _listed_state(storage_class: str, restore: dict | None) -> State:
    """Thaw state from a listing's ``RestoreStatus`` (stores that do not
    send it: archived classes look ARCHIVED)."""
    if storage_class not in ARCHIVED_CLASSES:
        return State.AVAILABLE
    if not restore:
        return State.ARCHIVED
    return State.RESTORING if restore.get("IsRestoreInProgress") else State.AVAILABLE


def _state(storage_class: str, restore: str | None) -> State:
    """Thaw state from ``StorageClass`` and the ``x-amz-restore`` header."""
    if restore and 'ongoing-request="true"' in restore:
        return State.RESTORING
    if restore and 'ongoing-request="false"' in restore:
        return State.AVAILABLE
    return State.ARCHIVED if storage_class in ARCHIVED_CLASSES else State.AVAILABLE


class _MultipartUpload:
    """One multipart upload: read parts in order, upload them in parallel.

    The file is read once, by the calling thread, which hashes the whole file
    (to check ``sha256``) and each part (S3 verifies per-part SHA-256).  At
    most ``max_concurrency`` parts are in memory; any failure aborts the
    upload so no invisible, billed parts stay behind.
    """

    def __init__(self, store: S3Store, key: str, storage_class: str):
        self.store, self.client = store, store._client
        self.key = store.prefix + key
        self.display_key = key
        self.storage_class = storage_class
        self.upload_id: str | None = None

    def run(self, path: str, size: int, sha256: bytes) -> None:
        # S3 allows at most 10,000 parts: grow the part size for huge files.
        part_size = max(self.store.part_size, -(-size // MAX_PARTS))
        self.upload_id = self.client.create_multipart_upload(
            Bucket=self.store.bucket, Key=self.key, StorageClass=self.storage_class,
            ChecksumAlgorithm="SHA256", Metadata={"sha256": sha256.hex()})["UploadId"]
        try:
            parts = self._upload_parts(path, part_size, sha256)
            condition = {"IfNoneMatch": "*"} if self.store.conditional_writes else {}
            self.client.complete_multipart_upload(
                Bucket=self.store.bucket, Key=self.key, UploadId=self.upload_id,
                MultipartUpload={"Parts": parts}, **condition)
        except BaseException:
            self._abort()
            raise

    def _upload_parts(self, path: str, part_size: int, sha256: bytes | None) -> list[dict]:
        whole = hashlib.sha256()
        slots = threading.BoundedSemaphore(self.store.max_concurrency)
        failed = threading.Event()
        futures: list[concurrent.futures.Future] = []

        def done(fut: concurrent.futures.Future) -> None:
            if not fut.cancelled() and fut.exception() is not None:
                failed.set()
            slots.release()

        with concurrent.futures.ThreadPoolExecutor(self.store.max_concurrency) as pool, \
                open(path, "rb") as f:
            try:
                for number in range(1, MAX_PARTS + 1):
                    slots.acquire()     # bounds the parts held in memory
                    data = f.read(part_size)
                    if failed.is_set() or (not data and number > 1):
                        slots.release()
                        break           # a part failed: the upload is lost anyway
                    whole.update(data)
                    fut = pool.submit(self._upload_part, number, data)
                    fut.add_done_callback(done)
                    futures.append(fut)
                    if len(data) < part_size:
                        break
            except BaseException:
                failed.set()
                raise
            finally:
                if failed.is_set():
                    for fut in futures:
                        fut.cancel()    # parts not started yet: the upload is lost
            parts = _first_failure_or_results(futures)
        if sha256 is not None and whole.digest() != sha256:
            raise IntegrityError(f"{path} does not match its SHA-256: not uploaded")
        return parts

    def _upload_part(self, number: int, data: bytes) -> dict:
        checksum = _b64(hashlib.sha256(data).digest())
        resp = self.client.upload_part(
            Bucket=self.store.bucket, Key=self.key, UploadId=self.upload_id,
            PartNumber=number, Body=throttle.paced_bytes(data), ChecksumAlgorithm="SHA256",
            ChecksumSHA256=checksum)
        return {"PartNumber": number, "ETag": resp["ETag"], "ChecksumSHA256": checksum}

    def _abort(self) -> None:
        try:
            self.client.abort_multipart_upload(
                Bucket=self.store.bucket, Key=self.key, UploadId=self.upload_id)
        except Exception as exc:    # keep the original error; say what is left
            log.warning("could not abort multipart upload of %s (%s); a lifecycle rule "
                        "for incomplete uploads will remove its parts",
                        self.display_key, _one_line(exc))
