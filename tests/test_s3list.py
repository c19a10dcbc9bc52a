"""s3list: ListObjectsV2 pages read as botocore reads them, without its parser.

The property test builds S3's XML for any keys, sizes, classes, restore
states and truncation, and compares our parse with botocore's own parse of
the same bytes.  The rest speaks to the moto server (through the counting
proxy) and to a small HTTP server answering broken pages."""

from __future__ import annotations

import datetime
import http.server
import threading
import urllib.parse
from xml.sax.saxutils import escape

import botocore.handlers
import botocore.parsers
import botocore.session
import pytest
from hypothesis import given, settings, strategies as st

from cryophile import errors
from cryophile.store import s3list
from cryophile.store.base import State
from cryophile.store.s3 import S3Store

pytestmark = pytest.mark.timeout(120)

MODEL = botocore.session.get_session().get_service_model("s3").operation_model("ListObjectsV2")
NS = "http://s3.amazonaws.com/doc/2006-03-01/"
FIELDS = ("Key", "Size", "StorageClass", "LastModified", "ETag", "RestoreStatus")
# Characters XML 1.0 can carry (keys with others need EncodingType=url)
XML_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\x00",
                          min_codepoint=0x20) | st.sampled_from("\t\n")
ANY_CHARS = st.characters(blacklist_categories=("Cs",))
WHEN = st.datetimes(datetime.datetime(1990, 1, 1), datetime.datetime(2100, 1, 1))


def botocore_parse(body: bytes) -> dict:
    parsed = botocore.parsers.RestXMLParser().parse(
        {"body": body, "headers": {}, "status_code": 200}, MODEL.output_shape)
    botocore.handlers.decode_list_object_v2(parsed, context={"encoding_type_auto_set": True})
    return parsed


def stamp(when: datetime.datetime, millis: bool) -> str:
    text = when.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{when.microsecond // 1000:03d}Z" if millis else text + "Z"


@st.composite
def objects(draw, encoded: bool):
    key = draw(st.text(ANY_CHARS if encoded else XML_CHARS, min_size=1, max_size=40))
    fields = [f"<Key>{urllib.parse.quote_plus(key, safe='/') if encoded else escape(key)}</Key>",
              f"<LastModified>{stamp(draw(WHEN), draw(st.booleans()))}</LastModified>",
              '<ETag>"0123456789abcdef"</ETag>',
              f"<Size>{draw(st.integers(0, 5 << 40))}</Size>"]
    sclass = draw(st.none() | st.sampled_from(["STANDARD", "GLACIER", "DEEP_ARCHIVE",
                                               "GLACIER_IR", "STANDARD_IA"]))
    if sclass is not None:
        fields.append(f"<StorageClass>{sclass}</StorageClass>")
    restore = draw(st.none() | st.booleans())
    if restore is not None:
        expiry = "" if restore else \
            f"<RestoreExpiryDate>{stamp(draw(WHEN), True)}</RestoreExpiryDate>"
        fields.append(f"<RestoreStatus><IsRestoreInProgress>{str(restore).lower()}"
                      f"</IsRestoreInProgress>{expiry}</RestoreStatus>")
    return "<Contents>" + "".join(draw(st.permutations(fields))) + "</Contents>"


@st.composite
def pages(draw):
    encoded = draw(st.booleans())
    contents = draw(st.lists(objects(encoded), max_size=12))
    truncated = draw(st.booleans())
    head = [f"<Name>bucket</Name><Prefix>{'tank%2F' if encoded else 'tank/'}</Prefix>",
            f"<KeyCount>{len(contents)}</KeyCount><MaxKeys>1000</MaxKeys>",
            f"<IsTruncated>{str(truncated).lower()}</IsTruncated>"]
    if encoded:
        head.append("<EncodingType>url</EncodingType>")
    if truncated:
        head.append("<NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM="
                    "</NextContinuationToken>")
    if draw(st.booleans()):
        head.append(f"<StartAfter>{'a%2Bb+c' if encoded else 'a+b c'}</StartAfter>")
    ns = f' xmlns="{NS}"' if draw(st.booleans()) else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult{ns}>'
            + "".join(head) + "".join(contents) + "</ListBucketResult>").encode()


@settings(max_examples=300, deadline=None)
@given(pages())
def test_parse_is_botocores_parse(body):
    ours, theirs = s3list.parse(body), botocore_parse(body)
    for name, value in ours.items():
        if name != "Contents":
            assert value == theirs[name], name
    assert "IsTruncated" in ours and ours.get("NextContinuationToken") == \
        theirs.get("NextContinuationToken")
    assert len(ours.get("Contents", [])) == len(theirs.get("Contents", []))
    for mine, boto in zip(ours.get("Contents", []), theirs.get("Contents", [])):
        assert mine == {k: boto[k] for k in FIELDS if k in boto}


def test_a_body_that_is_not_a_page_is_refused():
    with pytest.raises(s3list.ErrorDocument):
        s3list.parse(b"<Error><Code>InternalError</Code></Error>")
    with pytest.raises(s3list.MalformedPage, match="Size"):
        s3list.parse(b"<ListBucketResult><Contents><Key>a</Key><Size>x</Size>"
                     b"</Contents></ListBucketResult>")
    with pytest.raises(s3list.MalformedPage, match="no Key"):
        s3list.parse(b"<ListBucketResult><Contents><Size>1</Size></Contents>"
                     b"</ListBucketResult>")


# (moto cannot store a key with a newline; the property test covers it)
ODD_KEYS = ["a b", "a+b", "a%20b", "a&b<c>'\"", "é/ü/漢字", "tab\there",
            "cr\rreturn", "ctl\x01\x1f", "~!@#$^*()[]{};:,?=", "trailing space ", "x" * 900]


def test_odd_keys_through_moto_list_as_botocore_lists_them(bucket, s3client, s3proxy):
    for i, key in enumerate(ODD_KEYS):
        s3client.put_object(Bucket=bucket, Key=key, Body=b"x" * i,
                            StorageClass="GLACIER" if i % 2 else "STANDARD")
    store = S3Store(bucket, endpoint_url=s3proxy.endpoint)
    try:
        listed = list(store.list())
    finally:
        store.close()
    theirs = s3client.list_objects_v2(Bucket=bucket)["Contents"]
    assert [(i.key, i.size, i.storage_class, i.modified) for i in listed] == \
        [(o["Key"], o["Size"], o.get("StorageClass", "STANDARD"), o["LastModified"])
         for o in theirs]
    assert sorted(i.key for i in listed) == sorted(ODD_KEYS)
    assert {i.key: i.state for i in listed}["a+b"] == State.ARCHIVED
    # every listing asked for url-encoded keys, and was read by our parser
    assert all("encoding-type=url" in r.query for r in s3proxy.requests("GET", "list-type=2"))


def test_an_error_inside_a_200_is_retried_by_botocore(bucket, s3client, s3proxy):
    s3client.put_object(Bucket=bucket, Key="k", Body=b"x")
    s3proxy.fail_next(1, status=200, code="InternalError", path_contains="list-type=2")
    store = S3Store(bucket, endpoint_url=s3proxy.endpoint)
    try:
        assert [i.key for i in store.list()] == ["k"]
    finally:
        store.close()
    assert [r.status for r in s3proxy.requests("GET", "list-type=2")] == [200, 200]


class _Answer(http.server.BaseHTTPRequestHandler):
    body = b""
    seen = 0

    def do_GET(self):
        type(self).seen += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def answering():
    """An HTTP server answering every GET with ``_Answer.body`` (200)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Answer.seen = 0
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("body, error, message", [
    (b"<ListBucketResult><Contents><Key>a</Key><Size>1</Si", errors.TransientStoreError,
     "failed: 500"),
    (b"<ListBucketResult><Contents><Key>a</Key><Size>x</Size></Contents></ListBucketResult>",
     errors.StoreError, "Size .x. is not a number"),
])
def test_a_broken_page_is_a_one_line_error(answering, body, error, message):
    _Answer.body = body
    store = S3Store("bucket", endpoint_url=answering, sdk_attempts=2)
    try:
        with pytest.raises(error, match=message) as info:
            list(store.list())
    finally:
        store.close()
    assert "\n" not in str(info.value)
    assert _Answer.seen == (2 if error is errors.TransientStoreError else 1)  # cut short: retried


def test_other_operations_keep_botocores_check_of_200_answers(bucket, s3client, s3proxy,
                                                             tmp_path):
    store = S3Store(bucket, endpoint_url=s3proxy.endpoint, storage_class="STANDARD",
                    multipart_threshold=5 << 20, part_size=5 << 20)
    src = tmp_path / "big"
    src.write_bytes(b"y" * (6 << 20))
    s3proxy.fail_next(1, status=200, code="InternalError", methods=["POST"],
                      path_contains="uploadId=")
    try:
        store.put("big", str(src), size=6 << 20)    # CompleteMultipartUpload: 200 error, retried
    finally:
        store.close()
    completes = [r for r in s3proxy.requests("POST") if "uploadId=" in r.query]
    assert len(completes) == 2
    assert s3client.head_object(Bucket=bucket, Key="big")["ContentLength"] == 6 << 20


def test_a_timestamp_that_does_not_read_is_refused():
    with pytest.raises(s3list.MalformedPage, match="timestamp 'soon'"):
        s3list.parse(b"<ListBucketResult><Contents><Key>a</Key>"
                     b"<LastModified>soon</LastModified></Contents></ListBucketResult>")
