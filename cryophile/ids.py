"""Names: vaults (UUIDs), prefixes, ULIDs and backup ids."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import os
import re
import uuid

from .errors import NameTooLongError, UsageError

PREFIX_CHARS = re.compile(r"^[A-Za-z0-9/()!'*._-]+$")
ULID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
MAX_KEY = 1024             # bytes in an S3 object key
# Room kept in every key for fragment numbers: up to 999999 fragments (61 TiB
# at the default 64 MiB).  A fragment past that with a prefix at the limit is
# refused when its key is made (BackupId.fragment_key).
FRAGMENT_DIGITS = 6
MAX_SEGMENT = 255          # NAME_MAX: the spool keeps prefix segments as directories
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
MS = datetime.timedelta(milliseconds=1)
# The last time an archive can carry: its OpenPGP literal data packet keeps the
# time as 32-bit seconds (RFC 4880 5.9), so 2106-02-07T06:28:15Z, whatever
# the ULID's 48-bit milliseconds (until 10889) could hold.
LAST_ARCHIVE_MS = (2 ** 32) * 1000 - 1
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def prefix_limit(fragments: int = 10 ** FRAGMENT_DIGITS - 1, base: str = "") -> int:
    """The longest prefix (bytes) whose keys ``[BASE/]PREFIX/ULID/chunk.N`` stay within
    MAX_KEY for every N up to ``fragments``; ``base`` is the vault URL's path."""
    longest = BackupId("", "", "0" * 26).fragment_key(fragments)      # ULID/chunk.N
    return MAX_KEY - len(longest.encode()) - 1 - (len(base.encode()) + 1 if base else 0)


def parse_vault(text: str) -> str:
    """A vault is a UUID, written in lower case as S3 bucket names must be."""
    try:
        value = uuid.UUID(text)
    except ValueError:
        raise UsageError(f"vault {text!r} is not a UUID (e.g. {uuid.uuid4()})") from None
    if str(value) != text.lower():
        raise UsageError(f"vault {text!r} is not a UUID in canonical form ({value})")
    return str(value)


def parse_prefix(text: str | None, fragments: int = 10 ** FRAGMENT_DIGITS - 1,
                 base: str = "") -> str:
    """A prefix as the user wrote it, checked; ``fragments`` and ``base`` as for
    prefix_limit."""
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
        raise NameTooLongError(f"prefix has a {longest}-byte segment; at most {MAX_SEGMENT} fit in "
                         "a directory name in the spool")
    text = text.rstrip("/")
    limit = prefix_limit(fragments, base)
    if len(text.encode()) > limit:
        where = f"{base}/" if base else ""
        raise NameTooLongError(f"prefix is {len(text.encode())} bytes long; at most {limit} fit in "
                         f"an S3 key ({where}PREFIX/ULID/chunk.N, at most {MAX_KEY} bytes, with "
                         f"room for {10 ** FRAGMENT_DIGITS - 1} fragments)")
    return text


def parse_ulid(text: str) -> str:
    text = text.upper()
    if not ULID_RE.match(text):
        raise UsageError(f"{text!r} is not a ULID (26 characters of Crockford base32)")
    if text[0] > "7":
        raise UsageError(f"ULID {text!r} is out of range")
    if ulid_ms(text) > LAST_ARCHIVE_MS:
        raise UsageError(f"ULID {text!r} is dated {_show_ms(ulid_ms(text))}, after "
                         f"{_show_ms(LAST_ARCHIVE_MS)}: no archive can carry that time "
                         "(OpenPGP keeps it in 32 bits)")
    return text


NUMBER_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")


def parse_timestamp(text: str) -> datetime.datetime:
    """ISO 8601 (or 'YYYY-MM-DD HH:MM:SS'), or seconds since the epoch; UTC if no zone."""
    text = text.strip()
    if NUMBER_RE.fullmatch(text):
        ms = int((decimal.Decimal(text) * 1000).to_integral_value(decimal.ROUND_FLOOR))
        try:
            return EPOCH + ms * MS
        except OverflowError:
            raise UsageError(f"timestamp {text!r} is out of range: seconds since the epoch "
                             "must fall within the years 1 to 9999") from None
    try:
        value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"timestamp {text!r} is not ISO 8601 (years 1 to 9999) or seconds "
                         "since the epoch") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
    return value


def _ms(timestamp: datetime.datetime) -> int:
    """Whole milliseconds since the epoch, exactly (no float rounding)."""
    return (timestamp - EPOCH) // MS


def _show_ms(ms: int) -> str:
    try:
        return (EPOCH + ms * MS).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except OverflowError:
        return "a time after the year 9999"


def new_ulid(timestamp: datetime.datetime | None = None) -> str:
    """A ULID at ``timestamp`` (else now) with 80 fresh random bits: two ULIDs made
    for the same millisecond, in one process or two, never collide."""
    if timestamp is None:
        ms = _ms(datetime.datetime.now(datetime.timezone.utc))
    else:
        ms = _ms(timestamp)
        if ms < 0:
            raise UsageError(f"timestamp {_show_ms(ms)} is before 1970-01-01T00:00:00Z, where "
                             "ULIDs begin")
        if ms > LAST_ARCHIVE_MS:
            raise UsageError(f"timestamp {_show_ms(ms)} is after {_show_ms(LAST_ARCHIVE_MS)}: no "
                             "archive can carry that time (OpenPGP keeps it in 32 bits)")
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def ulid_ms(text: str) -> int:
    """The ULID's 48-bit time: milliseconds since the epoch."""
    ms = 0
    for char in text[:10].upper():
        ms = ms * 32 + CROCKFORD.index(char)
    return ms


def ulid_time(text: str) -> datetime.datetime:
    """The ULID's time; a name past the year 9999 (not a ULID we could have made)
    gives the largest time there is rather than an error."""
    try:
        return EPOCH + ulid_ms(text) * MS
    except OverflowError:
        return datetime.datetime.max.replace(tzinfo=datetime.timezone.utc)


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
        key = f"{self.key}/chunk.{n}"
        if len(key.encode()) > MAX_KEY:
            raise UsageError(f"archive {self} has too many fragments: the key of chunk.{n} "
                             f"would pass {MAX_KEY} bytes (use larger fragments or a "
                             "shorter prefix)")
        return key

    def __str__(self) -> str:
        return f"{self.vault}/{self.key}"

    @classmethod
    def parse(cls, text: str) -> "BackupId":
        parts = text.strip("/").split("/")
        if len(parts) < 2:
            raise UsageError(f"{text!r} is not a backup id (VAULT/PREFIX/ULID)")
        return cls(parse_vault(parts[0]), parse_prefix("/".join(parts[1:-1])),
                   parse_ulid(parts[-1]))


SIZE_RE = re.compile(r"^\s*(\d+)\s*(?:([KMGTP])(iB|B)?|B)?\s*$", re.IGNORECASE)


def parse_size(text: str | int, what: str = "size") -> int:
    """Bytes from '512', '512B', '64MiB' or '64M' (binary: 1024²), '20GB' or '20kB'
    (decimal: 1000³, 1000), as coreutils reads them."""
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise UsageError(f"{what} must be a size like 512, \"64MiB\" or \"1G\", not {text!r}")
    if isinstance(text, int):
        value = text
    else:
        m = SIZE_RE.match(text)
        if not m:
            raise UsageError(f"{what} {text!r} is not a size like 512, 64MiB, 1G or 20GB")
        power = " KMGTP".index((m.group(2) or " ").upper())
        base = 1000 if (m.group(3) or "").upper() == "B" else 1024
        value = int(m.group(1)) * base ** power
    if value <= 0:
        raise UsageError(f"{what} must be greater than zero")
    return value


# Fragment sizes taken from the user.  Below a filesystem block a fragment
# costs more in spool and vault overhead than it carries, and a bare number
# like 512 or 64 has most likely lost its unit; 4 KiB still holds the session
# key packets of several recipients in chunk.1.  Above S3's largest object
# (5 TiB) a fragment could never be frozen.
MIN_FRAGMENT = 4 << 10
MAX_FRAGMENT = 5 << 40


def parse_fragment_size(text: str | int, what: str = "fragment size") -> int:
    """parse_size, within MIN_FRAGMENT … MAX_FRAGMENT."""
    value = parse_size(text, what)
    if not MIN_FRAGMENT <= value <= MAX_FRAGMENT:
        raise UsageError(f"{what} {text!r} is out of range: it must be from 4KiB to 5TiB")
    return value


def human(n: float) -> str:
    """Bytes for people: 512 B, 1.5 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
