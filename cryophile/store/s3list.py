"""ListObjectsV2 answers read without botocore's response parser.

botocore turns every 1,000-key page into dicts through its generic,
model-driven XML parser, and every ``LastModified`` through dateutil: most
of the CPU time of a big listing.  Here botocore still builds, signs and
sends the request, retries, and parses every error; only a 200 answer to
ListObjectsV2 is taken by a ``before-parse`` hook (``install``) and read
with ElementTree into the same dicts botocore would make (the members this
project reads: ``Contents`` with ``Key``, ``Size``, ``StorageClass``,
``LastModified``, ``ETag`` and ``RestoreStatus``; ``IsTruncated``,
``NextContinuationToken``, ``KeyCount``), put in the reply under ``PAGE``.

Like botocore: keys (and ``StartAfter``) are URL-decoded when the page says
``EncodingType`` url (botocore asks for it on every listing we make, so
that keys with characters XML cannot carry come through); an absent
``StorageClass`` stays absent (the caller reads it as STANDARD); a 200
answer that is an ``<Error>`` document or not well-formed XML (a page cut
short) is turned into a 500, which botocore retries and reports.  A
well-formed page with a member that does not read (a size that is not a
number) is left in ``PAGE`` as a ``MalformedPage`` for the caller to
report.
"""

from __future__ import annotations

import datetime
import urllib.parse
import xml.etree.ElementTree as ET

from botocore import handlers as _botocore_handlers
from botocore.utils import parse_timestamp

PAGE = "CryophileListPage"          # where the hook leaves the parsed page
OPERATION = "ListObjectsV2"
_EVENT = "before-parse.s3.*"


class MalformedPage(ValueError):
    """A well-formed XML answer that is not a readable ListObjectsV2 page."""


class ErrorDocument(MalformedPage):
    """An ``<Error>`` document in a 200 answer."""


def parse(body: bytes) -> dict:
    """The page's members as botocore would parse them (see the module
    docstring).  Raises ET.ParseError for a body that is not XML,
    ErrorDocument for an ``<Error>`` document, MalformedPage for another
    document or a member that does not read."""
    root = ET.fromstring(body)
    if _local(root.tag) == "Error":
        raise ErrorDocument("an error document in a 200 answer")
    if _local(root.tag) != "ListBucketResult":
        raise MalformedPage(f"a ListObjectsV2 answer is a {_local(root.tag)!r} document")
    return _page(root)


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


_NAMES = ("Contents", "IsTruncated", "KeyCount", "NextContinuationToken", "EncodingType",
          "StartAfter", "Prefix", "Key", "ETag", "StorageClass", "Size", "LastModified",
          "RestoreStatus", "IsRestoreInProgress", "RestoreExpiryDate")


def _page(root: ET.Element) -> dict:
    # full tag (in the root's namespace, as S3 sends them all) -> member name
    ns = root.tag[:len(root.tag) - len(_local(root.tag))]
    names = {ns + name: name for name in _NAMES}
    page: dict = {}
    contents = []
    for el in root:
        name = names.get(el.tag)
        if name == "Contents":
            contents.append(_object(el, names))
        elif name == "IsTruncated":
            page[name] = el.text == "true"
        elif name == "KeyCount":
            page[name] = _int(el.text, name)
        elif name in ("NextContinuationToken", "EncodingType", "StartAfter", "Prefix"):
            page[name] = el.text or ""
    if page.get("EncodingType") == "url":
        for name in ("StartAfter", "Prefix"):
            if name in page:
                page[name] = urllib.parse.unquote_plus(page[name])
        for obj in contents:
            obj["Key"] = urllib.parse.unquote_plus(obj["Key"])
    if contents:
        page["Contents"] = contents
    return page


def _object(el: ET.Element, names: dict[str, str]) -> dict:
    obj: dict = {}
    for field in el:
        name = names.get(field.tag)
        if name == "Key" or name == "ETag" or name == "StorageClass":
            obj[name] = field.text or ""
        elif name == "Size":
            obj[name] = _int(field.text, name)
        elif name == "LastModified":
            obj[name] = _timestamp(field.text)
        elif name == "RestoreStatus":
            obj[name] = _restore(field, names)
    if "Key" not in obj:
        raise MalformedPage("a listed object has no Key")
    return obj


def _int(text: str | None, tag: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise MalformedPage(f"{tag} {text!r} is not a number") from None


def _restore(el: ET.Element, names: dict[str, str]) -> dict:
    status: dict = {}
    for field in el:
        name = names.get(field.tag)
        if name == "IsRestoreInProgress":
            status[name] = field.text == "true"
        elif name == "RestoreExpiryDate":
            status[name] = _timestamp(field.text)
    return status


def _timestamp(text: str | None) -> datetime.datetime:
    """S3's ISO 8601 (``2026-11-26T18:59:24.000Z``) fast; anything else as
    botocore reads it."""
    try:
        when = datetime.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        try:
            return parse_timestamp(text)
        except (TypeError, ValueError):
            raise MalformedPage(f"timestamp {text!r} does not read") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=datetime.timezone.utc)


def _take_page(operation_model=None, response_dict=None, customized_response_dict=None,
               **_kw) -> None:
    """before-parse hook: a 200 ListObjectsV2 answer is parsed here and
    botocore's parser gets an empty body; everything else is left to
    botocore (and to its own check for errors inside a 200 answer, done
    here for this operation: it would parse each page a second time)."""
    if operation_model is None or response_dict is None:
        return
    if operation_model.name != OPERATION:
        return _botocore_handlers._handle_200_error(operation_model, response_dict)
    if response_dict.get("status_code") != 200 or not response_dict.get("body"):
        return
    try:
        page = parse(response_dict["body"])
    except (ET.ParseError, ErrorDocument):
        # cut short, or an error inside a 200: as botocore, a 500 it retries and reports
        response_dict["status_code"] = 500
        return
    except MalformedPage as exc:
        page = exc
    customized_response_dict[PAGE] = page
    response_dict["body"] = b""


def install(client) -> None:
    """Make ``client`` read its ListObjectsV2 answers with ``parse``.

    botocore's own check of S3 200 answers for embedded errors is
    registered on every S3 operation and runs first; it is replaced, on
    this client only, by ``_take_page``, which calls it for every other
    operation.  A botocore without that handler gets the hook all the
    same."""
    events = client.meta.events
    original = getattr(_botocore_handlers, "_handle_200_error", None)
    if original is not None:
        events.unregister(_EVENT, original)
    events.register_first(_EVENT, _take_page if original is not None else _take_list_only)


def _take_list_only(operation_model=None, **kw) -> None:
    if operation_model is not None and operation_model.name == OPERATION:
        _take_page(operation_model=operation_model, **kw)
