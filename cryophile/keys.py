"""OpenPGP keys: certificates to encrypt to, secret keys to decrypt with.

pgpy keeps whole messages in memory, so it is used here only to parse keys and
to build or open Public-Key Encrypted Session Key packets (PKESK v3); the
symmetric data is streamed elsewhere. We use pgpy's packet layer, not its
high-level API, because the latter rejects valid keys (e.g. ``sq key
generate`` keys without a User ID).

Concurrency: every pgpy call runs under one lock (see ``_quiet``). Callers in
trio run these functions through ``trio.to_thread.run_sync``; the lock keeps
the warning-filter juggling consistent across threads and costs little, since
key operations are small and rare (once per archive).
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterator

from cryophile.errors import BadPassphraseError, FormatError, KeyringError, NoMatchingKeyError

_PGPY_LOCK = threading.RLock()
log = logging.getLogger("cryophile.keys")
_warned: set[tuple[str, str]] = set()     # (what, path): each warning once per process


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence pgpy's warnings (imghdr, TripleDES, CFB…) on import and on use.

    catch_warnings mutates process-global state, so it is serialized.
    """
    with _PGPY_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


with _quiet():
    import pgpy
    from cryptography.hazmat.primitives import hashes
    from pgpy.constants import KeyFlags, PubKeyAlgorithm, SignatureType, SymmetricKeyAlgorithm
    from pgpy.errors import PGPDecryptionError
    from pgpy.packet import Packet
    from pgpy.packet.packets import PKESessionKeyV3

# The public-key algorithms pgpy's PKESK code can encrypt to and decrypt with.
_PK_ALGOS = {PubKeyAlgorithm.RSAEncryptOrSign, PubKeyAlgorithm.ECDH}
_UID_CERTS = {
    SignatureType.Generic_Cert,
    SignatureType.Persona_Cert,
    SignatureType.Casual_Cert,
    SignatureType.Positive_Cert,
}
_ARMOR = re.compile(rb"-----BEGIN PGP [^-]+-----.*?-----END PGP [^-]+-----", re.S)
_BINARY = re.compile(rb"[\x00-\x08\x0e-\x1f\x80-\xff]")
_WILDCARD = bytes(8)


@dataclass(frozen=True)
class Recipient:
    """One encryption (sub)key a backup is encrypted to."""

    fingerprint: str  # of the encryption (sub)key, hex uppercase
    key_id: bytes  # 8 bytes, as written in the PKESK
    cert_fingerprint: str  # of the primary key: what users recognize
    pgp_key: object = field(compare=False, repr=False)  # pgpy.PGPKey of the (sub)key


# --- reading files -----------------------------------------------------------


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise KeyringError(f"cannot read key file {path}: {exc.strerror or exc}") from None


def _blocks(data: bytes, path: str) -> list[bytes | str]:
    """Binary data is one packet stream; armored files may hold several blocks."""
    if data[:1] and data[0] & 0x80:  # every OpenPGP packet header has bit 7 set
        return [bytearray(data)]
    blocks = [m.group(0).decode("ascii", "replace") for m in _ARMOR.finditer(data)]
    if not blocks:
        raise KeyringError(f"{path} is not OpenPGP data (neither binary nor ASCII-armored)")
    if _BINARY.search(_ARMOR.sub(b"", data)):  # binary keys would be silently lost
        raise KeyringError(f"{path} mixes ASCII-armored and binary data; keep one per file")
    return blocks


def _parse_block(block: bytes | str, path: str) -> list:
    try:
        with _quiet():
            key, others = pgpy.PGPKey.from_blob(block)
    except Exception as exc:  # pgpy raises many kinds on bad input
        detail = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise KeyringError(f"{path} holds no usable OpenPGP key or certificate: {detail}") from None
    # `others` maps (keyid, is_public) -> every primary in the block, `key`
    # included; on junk pgpy may return a key without a key packet.
    keys = list(others.values()) if others else [key]
    return [k for k in keys if k._key is not None]


def _keys_in(path: str) -> list:
    """Every primary key (public or secret) in the file, as pgpy.PGPKey."""
    keys = [k for block in _blocks(_read(path), path) for k in _parse_block(block, path)]
    if not keys:
        raise KeyringError(f"{path} holds no OpenPGP key or certificate")
    return keys


def _warn_once(what: str, path: str, message: str) -> None:
    if (what, path) not in _warned:
        _warned.add((what, path))
        log.warning("%s", message)


def _check_private(path: str) -> None:
    """A secret key file any user can read is worth a warning."""
    try:
        st = os.stat(path)
    except OSError:
        return
    if stat.S_ISREG(st.st_mode) and st.st_mode & stat.S_IROTH:
        _warn_once("readable", path, f"secret key file {path} is readable by every user "
                                     f"(mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 {path}")


def _fpr(key) -> str:
    return str(key.fingerprint).replace(" ", "").upper()


# --- validity of certificates --------------------------------------------------


def _verified(primary, subject, sig) -> bool:
    """Only signatures made by the primary key count: anyone can append packets."""
    if sig.signer != primary.fingerprint.keyid:
        return False
    try:
        with _quiet():
            digest = getattr(hashes, sig.hash_algorithm.name)()
            return primary._key.verify(sig.hashdata(subject), sig.__sig__, digest) is True
    except Exception:  # unsupported algorithm or malformed signature: not valid
        return False


def _sigs(primary, subject, types: set) -> list:
    return [s for s in subject._signatures if s.type in types and _verified(primary, subject, s)]


def _newest(sigs: list):
    return max(sigs, key=lambda s: s.created) if sigs else None


def _expired(key, sig, now: datetime) -> bool:
    # key_expiration counts from the key's creation; 0 or absent means never.
    if sig.is_expired:
        return True
    return bool(sig.key_expiration) and key.created + sig.key_expiration <= now


def _primary_selfsig(cert):
    """The newest valid self-signature of a usable primary key, else None."""
    if _sigs(cert, cert, {SignatureType.KeyRevocation}):
        return None
    sigs = _sigs(cert, cert, {SignatureType.DirectlyOnKey})
    for uid in cert._uids:
        sigs += _sigs(cert, uid, _UID_CERTS)
    newest = _newest(sigs)
    if newest is None or _expired(cert, newest, datetime.now(timezone.utc)):
        return None
    return newest


def _for_storage(key, sig) -> bool:
    # Storage or universal (storage + transport); transport-only keys are for
    # messages in flight, not for backups kept for years.
    return KeyFlags.EncryptStorage in sig.key_flags and key.key_algorithm in _PK_ALGOS


def _usable_subkey(cert, sub, now: datetime) -> bool:
    if _sigs(cert, sub, {SignatureType.SubkeyRevocation}):
        return False
    binding = _newest(_sigs(cert, sub, {SignatureType.Subkey_Binding}))
    return binding is not None and _for_storage(sub, binding) and not _expired(sub, binding, now)


def _encryption_keys(cert) -> list:
    """Encryption-capable subkeys, or the primary if none and it can encrypt."""
    selfsig = _primary_selfsig(cert)
    if selfsig is None:
        return []
    now = datetime.now(timezone.utc)
    subs = [s for s in cert.subkeys.values() if _usable_subkey(cert, s, now)]
    if not subs and _for_storage(cert, selfsig):
        return [cert]
    return subs


def _recipient(cert, key) -> Recipient:
    return Recipient(
        fingerprint=_fpr(key),
        key_id=bytes.fromhex(key.fingerprint.keyid),
        cert_fingerprint=_fpr(cert),
        pgp_key=key,
    )


def load_certificates(paths: list[str], secret_ok: bool = False) -> list[Recipient]:
    """One Recipient per valid storage-encryption (sub)key of every certificate.

    Secret keys work too (their public part is used), with a warning unless
    ``secret_ok``: the backup host should hold only certificates. Raises
    KeyringError for a file that cannot be used or a certificate that cannot
    receive backups.
    """
    found: dict[str, Recipient] = {}
    for path in paths:
        keys = _keys_in(path)
        if any(not k.is_public for k in keys):
            _check_private(path)
            if not secret_ok:
                _warn_once("secret", path, f"{path} holds a secret key: backups need only the "
                           "certificate (sq key extract-cert, gpg --export); keep the secret "
                           "key off the backup host")
        for key in keys:
            with _quiet():
                cert = key if key.is_public else key.pubkey
            keys = _encryption_keys(cert)
            if not keys:
                raise KeyringError(
                    f"certificate {_fpr(cert)} in {path} has no valid encryption subkey"
                    " (expired, revoked, or not for storage encryption)"
                )
            for k in keys:
                found.setdefault(_fpr(k), _recipient(cert, k))
    return list(found.values())


# --- PKESK packets ----------------------------------------------------------------


def make_pkesks(recipients: list[Recipient], session_key: bytes, sym_algo: int = 9) -> bytes:
    """Serialized PKESK v3 packets (headers included), one per recipient."""
    algo = SymmetricKeyAlgorithm(sym_algo)
    if len(session_key) * 8 != algo.key_size:
        raise ValueError(f"session key of {len(session_key)} bytes does not fit {algo.name}")
    return b"".join(_make_pkesk(r, algo, session_key) for r in recipients)


def _make_pkesk(r: Recipient, algo, session_key: bytes) -> bytes:
    with _quiet():
        pkesk = PKESessionKeyV3()
        pkesk.encrypter = bytearray(r.key_id)
        pkesk.pkalg = r.pgp_key.key_algorithm
        pkesk.encrypt_sk(r.pgp_key._key, algo, bytes(session_key))
        return bytes(pkesk)


def _packet_body(packet: bytes) -> tuple[int, bytes]:
    """(tag, body) of one complete packet with an old- or new-format header."""
    try:
        return _split_header(packet)
    except IndexError:
        raise FormatError("truncated OpenPGP packet header") from None


def _split_header(packet: bytes) -> tuple[int, bytes]:
    if len(packet) < 2 or not packet[0] & 0x80:
        raise FormatError("not an OpenPGP packet")
    if packet[0] & 0x40:  # new format: length in 1, 2 or 5 octets
        tag, first = packet[0] & 0x3F, packet[1]
        if first < 192:
            start, length = 2, first
        elif first < 224:
            start, length = 3, ((first - 192) << 8) + packet[2] + 192
        elif first == 255:
            start, length = 6, int.from_bytes(packet[2:6], "big")
        else:
            raise FormatError("partial body length in a session key packet")
    else:  # old format: length type in the low 2 bits
        tag, ltype = (packet[0] >> 2) & 0x0F, packet[0] & 0x03
        if ltype == 3:
            start, length = 1, len(packet) - 1
        else:
            n = 1 << ltype
            start, length = 1 + n, int.from_bytes(packet[1 : 1 + n], "big")
    body = bytes(packet[start : start + length])
    if len(body) != length:
        raise FormatError("truncated OpenPGP packet")
    return tag, body


def parse_pkesk_key_id(packet: bytes) -> bytes:
    """The 8-byte key id a serialized PKESK v3 packet is encrypted to."""
    tag, body = _packet_body(packet)
    if tag != 1:
        raise FormatError(f"expected a session key packet (tag 1), found tag {tag}")
    if len(body) < 10 or body[0] != 3:
        raise FormatError(f"unsupported session key packet version {body[:1].hex() or 'none'}")
    return body[1:9]


def _parse_pkesk(packet: bytes):
    try:
        with _quiet():
            parsed = Packet(bytearray(packet))
    except Exception:  # malformed: treated like a PKESK for another key
        return None
    return parsed if isinstance(parsed, PKESessionKeyV3) else None


# --- secret keys -------------------------------------------------------------------


@dataclass
class _Secret:
    key: object  # pgpy.PGPKey of the secret (sub)key
    fingerprint: str
    cert_fingerprint: str

    @property
    def key_id(self) -> bytes:
        return bytes.fromhex(self.key.fingerprint.keyid)

    @property
    def protected(self) -> bool:
        return bool(self.key._key.protected)


class SecretKeyring:
    """Secret keys for restore; protected keys are unlocked on first use only.

    Thread-safe: concurrent restores (the filesystem) share one keyring, and
    the lock makes a second reader wait for the first prompt, not ask again.
    """

    def __init__(self, secrets: list[_Secret], passphrase: Callable[[str], str] | None):
        self._secrets = secrets
        self._passphrase = passphrase
        self._unlocked: set[str] = set()
        self._lock = threading.Lock()

    def fingerprints(self) -> list[str]:
        return list(dict.fromkeys(s.cert_fingerprint for s in self._secrets))

    def decrypt_session_key(self, pkesks: list[bytes]) -> tuple[int, bytes]:
        """(symmetric algorithm id, session key) from the first PKESK we can open."""
        wanted = [parse_pkesk_key_id(p) for p in pkesks]
        with self._lock:
            # Keys that need no passphrase first: never prompt when we need not.
            for needs_unlock in (False, True):
                for packet, key_id in zip(pkesks, wanted):
                    for secret in self._candidates(key_id):
                        if self._is_locked(secret) == needs_unlock:
                            result = self._try(packet, key_id, secret)
                            if result is not None:
                                return result
        raise NoMatchingKeyError(self._no_match(wanted))

    def _candidates(self, key_id: bytes) -> list[_Secret]:
        if key_id == _WILDCARD:  # hidden recipient: try every key
            return self._secrets
        return [s for s in self._secrets if s.key_id == key_id]

    def _is_locked(self, secret: _Secret) -> bool:
        return secret.protected and secret.fingerprint not in self._unlocked

    def _try(self, packet: bytes, key_id: bytes, secret: _Secret) -> tuple[int, bytes] | None:
        pkesk = _parse_pkesk(packet)
        if pkesk is None or pkesk.pkalg != secret.key.key_algorithm:
            return None
        self._unlock(secret)
        try:
            with _quiet():
                algo, session_key = pkesk.decrypt_sk(secret.key._key)
        except Exception as exc:
            if key_id == _WILDCARD:  # a wrong guess, not a fault
                return None
            raise KeyringError(
                f"cannot decrypt the session key with key {secret.fingerprint}: {exc or type(exc).__name__}"
            ) from None
        return int(algo), bytes(session_key)

    def _unlock(self, secret: _Secret) -> None:
        if not self._is_locked(secret):
            return
        if self._passphrase is None:
            raise BadPassphraseError(
                f"key {secret.fingerprint} is protected by a passphrase:"
                " give it with --pass-fd or run from a terminal"
            )
        passphrase = self._passphrase(_describe(secret))
        try:
            with _quiet():
                secret.key._key.unprotect(passphrase)
        except PGPDecryptionError:
            raise BadPassphraseError(f"wrong passphrase for key {secret.fingerprint}") from None
        except Exception as exc:  # e.g. an S2K pgpy does not know
            raise KeyringError(f"cannot unlock key {secret.fingerprint}: {exc}") from None
        self._unlocked.add(secret.fingerprint)

    def _no_match(self, wanted: list[bytes]) -> str:
        ids = ", ".join(k.hex().upper() if k != _WILDCARD else "hidden recipient" for k in wanted)
        loaded = "; ".join(
            f"{fpr} (keys {', '.join(s.key_id.hex().upper() for s in self._secrets if s.cert_fingerprint == fpr)})"
            for fpr in self.fingerprints()
        )
        return f"no secret key for this archive: it is encrypted to {ids or 'nobody'}; loaded keys: {loaded or 'none'}"


def _describe(secret: _Secret) -> str:
    if secret.fingerprint == secret.cert_fingerprint:
        return f"OpenPGP key {secret.fingerprint}"
    return f"OpenPGP key {secret.cert_fingerprint} (subkey {secret.fingerprint})"


def _decryption_keys(primary) -> list[_Secret]:
    """Every secret (sub)key pgpy can decrypt with.

    Expiry, revocation and flags are ignored on purpose: an old archive stays
    readable after its subkey expired or was revoked.
    """
    cert_fpr = _fpr(primary)
    keys = [primary, *primary.subkeys.values()]
    return [
        _Secret(k, _fpr(k), cert_fpr)
        for k in keys
        if not k.is_public and k.key_algorithm in _PK_ALGOS
    ]


def load_secret_keys(paths: list[str], passphrase: Callable[[str], str] | None) -> SecretKeyring:
    """Secret keys from sq, sqop or gpg files (binary or armored, several per file).

    ``passphrase(description)`` is called only when a protected key is needed.
    """
    secrets: list[_Secret] = []
    for path in paths:
        keys = [k for k in _keys_in(path) if not k.is_public]
        if not keys:
            raise KeyringError(
                f"{path} holds no secret key, only a certificate:"
                " decrypting needs the secret key, not the certificate"
            )
        _check_private(path)
        for key in keys:
            secrets += _decryption_keys(key)
    unique: dict[str, _Secret] = {}
    for secret in secrets:
        unique.setdefault(secret.fingerprint, secret)
    return SecretKeyring(list(unique.values()), passphrase)
