"""chunk.0: the completion mark, clear metadata and the encrypted manifest.

Layout (docs/FORMAT.md)::

    cryophile-archive 1\\n
    {clear JSON: what listing and thawing need, no names}\\n
    <OpenPGP message: the manifest JSON, encrypted to the recipients>
"""

from __future__ import annotations

import dataclasses
import io
import json

from .errors import FormatError, IntegrityError
from .ids import BackupId

MAGIC = b"cryophile-archive "
FORMAT_VERSION = 1


@dataclasses.dataclass
class Fragment:
    size: int
    sha256: str


@dataclasses.dataclass
class ClearInfo:
    """What anyone with read access to the vault may see."""

    vault: str
    prefix: str
    ulid: str
    created: str
    size: int                     # plaintext bytes
    stored: int                   # ciphertext bytes, all fragments
    fragment_size: int
    fragments: list[Fragment]
    format: int = FORMAT_VERSION
    # optional (absent in older archives: unknown)
    stream: dict | None = None    # kind, complete, random ids (streams.Stream.clear)
    parent: str | None = None     # ULID given with backup --parent

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["fragments"] = [[f.size, f.sha256] for f in self.fragments]
        for optional in ("stream", "parent"):
            if d[optional] is None:
                del d[optional]
        return d

    @property
    def bid(self) -> BackupId:
        return BackupId(self.vault, self.prefix, self.ulid)

    @property
    def complete(self) -> bool:
        """False for a stream sealed although it did not end as its kind
        must (state ``incomplete``); True otherwise, and for older archives."""
        return not (isinstance(self.stream, dict) and self.stream.get("complete") is False)

    @property
    def kind(self) -> str:
        """zfs, btrfs, tar or unknown (also for older archives)."""
        kind = self.stream.get("kind") if isinstance(self.stream, dict) else None
        return kind if isinstance(kind, str) else "unknown"

    @classmethod
    def from_json(cls, d: dict) -> "ClearInfo":
        try:
            d = dict(d)
            d["fragments"] = [Fragment(int(s), str(h)) for s, h in d["fragments"]]
            return cls(**{k: v for k, v in d.items() if k in _CLEAR_FIELDS})
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"chunk.0 metadata is malformed ({exc})") from None


_CLEAR_FIELDS = frozenset(f.name for f in dataclasses.fields(ClearInfo))   # (once: ls reads 10,000)


def encode(clear: ClearInfo, manifest: dict, pkesks: bytes, session_key: bytes,
           timestamp: int) -> bytes:
    out = io.BytesIO()
    out.write(MAGIC + str(FORMAT_VERSION).encode() + b"\n")
    out.write(json.dumps(clear.to_json(), separators=(",", ":")).encode() + b"\n")
    from .pipeline import openpgp       # (cryptography: not for listing)
    enc = openpgp.Encryptor(session_key, timestamp)
    out.write(pkesks)
    for part in enc.write(json.dumps(manifest, separators=(",", ":")).encode()) + enc.close():
        out.write(part)
    return out.getvalue()


def read_clear(data: bytes) -> tuple[ClearInfo, bytes]:
    """The clear metadata and the encrypted manifest of a chunk.0."""
    first, _, rest = data.partition(b"\n")
    if not first.startswith(MAGIC):
        raise FormatError("chunk.0 is not a cryophile archive mark")
    version = first[len(MAGIC):]
    if version != str(FORMAT_VERSION).encode():
        raise FormatError(f"archive format {version.decode(errors='replace')} is not "
                          f"supported by this version (which reads format {FORMAT_VERSION})")
    line, _, encrypted = rest.partition(b"\n")
    try:
        return ClearInfo.from_json(json.loads(line)), encrypted
    except json.JSONDecodeError as exc:
        raise FormatError(f"chunk.0 metadata is not JSON ({exc})") from None


def check_identity(clear: ClearInfo, bid: BackupId) -> None:
    """chunk.0 must belong to the archive asked for: a directory holding a
    copy of another archive must not restore or list as this one."""
    if clear.bid != bid:
        raise IntegrityError(f"chunk.0 of {bid} belongs to archive {clear.bid}: "
                             "the archive's objects were replaced or moved")


def read_manifest(encrypted: bytes, clear: ClearInfo, unlock) -> dict:
    from .pipeline import openpgp
    src = openpgp.ByteSource([encrypted])
    data = b"".join(bytes(b) for b in openpgp.decrypt(src, unlock))
    manifest = json.loads(data)
    if manifest.get("format") != FORMAT_VERSION:
        raise FormatError(f"manifest format {manifest.get('format')} is not supported")
    mine = [[f.size, f.sha256] for f in clear.fragments]
    if (manifest["fragments"] != mine or manifest["ulid"] != clear.ulid
            or manifest.get("size") != clear.size or manifest.get("created") != clear.created
            or manifest.get("vault") != clear.vault or manifest.get("prefix") != clear.prefix
            or manifest.get("backup_id", str(clear.bid)) != str(clear.bid)):
        raise IntegrityError("chunk.0's clear metadata disagrees with its encrypted manifest")
    return manifest


def load(path: str) -> tuple[ClearInfo, bytes]:
    with open(path, "rb") as f:
        return read_clear(f.read())


def load_sized(path: str) -> tuple[ClearInfo, int]:
    """A chunk.0 file's clear metadata and the archive's bytes as stored:
    every fragment and this chunk.0 (what STORED shows)."""
    with open(path, "rb") as f:
        data = f.read()
    clear = read_clear(data)[0]
    return clear, clear.stored + len(data)
