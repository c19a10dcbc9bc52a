"""Names: vaults (UUIDs), prefixes, ULIDs and backup ids."""

from __future__ import annotations

import dataclasses
import datetime
import re
import uuid

import ulid as _ulid

from .errors import UsageError

PREFIX_CHARS = re.compile(r"^[A-Za-z0-9/()!'*._-]+$")
ULID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
MAX_KEY = 1024
# "ULID/chunk." and room for the separators: see design.md (997 - digits).
PREFIX_BUDGET = 997
MAX_SEGMENT = 255          # NAME_MAX: the spool keeps prefix segments as directories


def parse_vault(text: str) -> str:
    """A vault is a UUID, written in lower case as S3 bucket names must be."""
    try:
        value = uuid.UUID(text)
    except ValueError:
        raise UsageError(f"vault {text!r} is not a UUID (e.g. {uuid.uuid4()})") from None
    if str(value) != text.lower():
        raise UsageError(f"vault {text!r} is not a UUID in canonical form ({value})")
    return str(value)


def parse_prefix(text: str | None, last_fragment: int = 1) -> str:
    if not text:
        return ""
    if text.startswith("/"):
        raise UsageError(f"prefix {text!r} must not start with '/'")
    if not PREFIX_CHARS.match(text):
        raise UsageError(
            f"prefix {text!r} has characters outside A-Z a-z 0-9 / ( ) ! ' * . _ -")
    segments = text.rstrip("/").split("/")
    if any(seg in ("", ".", "..") for seg in segments):
        raise UsageError(f"prefix {text!r} has an empty, '.' or '..' segment")
    longest = max(len(seg.encode()) for seg in segments)
    if longest > MAX_SEGMENT:
        raise UsageError(f"prefix has a {longest}-byte segment; at most {MAX_SEGMENT} fit in "
                         "a directory name in the spool")
    limit = PREFIX_BUDGET - len(str(last_fragment))
    if len(text.encode()) > limit:
        raise UsageError(f"prefix is {len(text)} bytes long; at most {limit} fit in an S3 key")
    return text.rstrip("/")


def parse_ulid(text: str) -> str:
    text = text.upper()
    if not ULID_RE.match(text):
        raise UsageError(f"{text!r} is not a ULID (26 characters of Crockford base32)")
    if text[0] > "7":
        raise UsageError(f"ULID {text!r} is out of range")
    return text


def parse_timestamp(text: str) -> datetime.datetime:
    """ISO 8601 (or 'YYYY-MM-DD HH:MM:SS'), or seconds since the epoch; UTC if no zone."""
    try:
        if re.fullmatch(r"\d+(\.\d+)?", text):
            return datetime.datetime.fromtimestamp(float(text), datetime.timezone.utc)
        value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        raise UsageError(f"timestamp {text!r} is not ISO 8601 or seconds since the epoch") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value


def new_ulid(timestamp: datetime.datetime | None = None) -> str:
    if timestamp is None:
        return str(_ulid.ULID())
    if timestamp.timestamp() < 0:
        raise UsageError("timestamp is before 1970")
    return str(_ulid.ULID.from_datetime(timestamp))


def ulid_time(text: str) -> datetime.datetime:
    return _ulid.ULID.from_str(text).datetime


@dataclasses.dataclass(frozen=True)
class BackupId:
    vault: str
    prefix: str
    ulid: str

    @property
    def key(self) -> str:
        """Path of the archive inside its vault: PREFIX/ULID or ULID."""
        return f"{self.prefix}/{self.ulid}" if self.prefix else self.ulid

    def fragment_key(self, n: int) -> str:
        return f"{self.key}/chunk.{n}"

    def __str__(self) -> str:
        return f"{self.vault}/{self.key}"

    @classmethod
    def parse(cls, text: str) -> "BackupId":
        parts = text.strip("/").split("/")
        if len(parts) < 2:
            raise UsageError(f"{text!r} is not a backup id (VAULT/PREFIX/ULID)")
        return cls(parse_vault(parts[0]), parse_prefix("/".join(parts[1:-1])),
                   parse_ulid(parts[-1]))


SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGTP]?)(i?B?)?\s*$", re.IGNORECASE)


def parse_size(text: str | int, what: str = "size") -> int:
    """'64MiB', '64M', '1G', '512' → bytes (binary multiples)."""
    if isinstance(text, int):
        value = text
    else:
        m = SIZE_RE.match(str(text))
        if not m:
            raise UsageError(f"{what} {text!r} is not a size like 512, 64MiB or 1G")
        value = int(m.group(1)) * 1024 ** " KMGTP".index(m.group(2).upper() or " ")
    if value <= 0:
        raise UsageError(f"{what} must be greater than zero")
    return value
