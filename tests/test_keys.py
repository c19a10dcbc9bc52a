"""cryophile.keys against real keys made by sq, sqop and gpg.

Keys are generated once per module. The interop tests prove the PKESK packets
are standard: gpg and sq decrypt messages we assemble, and we open the session
keys of messages gpg and sq encrypt.
"""

import hashlib
import os
import re
import subprocess

import pytest
try:
    from cryptography.hazmat.decrepit.ciphers.modes import CFB  # the primitives one is deprecated
except ImportError:     # cryptography < 43
    from cryptography.hazmat.primitives.ciphers.modes import CFB
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from cryophile.errors import BadPassphraseError, FormatError, KeyringError, NoMatchingKeyError
from tests.keyrecipes import PAST, Gpg, Recipe, run
from cryophile.keys import (
    Recipient,
    SecretKeyring,
    load_certificates,
    load_secret_keys,
    make_pkesks,
    parse_pkesk_key_id,
)

@pytest.fixture(scope="module")
def aging(tmp_path_factory, gpg) -> dict:
    """A certificate with an expired, a revoked and a valid subkey; one with only
    an expired subkey; one that can only sign."""
    d = tmp_path_factory.mktemp("aging")
    past = ("--faked-system-time", PAST)
    fpr = gpg.new_key("Dave <d@example.org>", "ed25519", None, "", *past)
    gpg(*past, "--quick-add-key", fpr, "cv25519", "encr", "1d")
    gpg("--quick-add-key", fpr, "cv25519", "encr", "never")
    gpg("--quick-add-key", fpr, "cv25519", "encr", "never")
    gpg.revoke_subkey(fpr, 2)
    eve = gpg.new_key("Eve <e@example.org>", "ed25519", None, "", *past)
    gpg(*past, "--quick-add-key", eve, "cv25519", "encr", "1d")
    signer = gpg.new_key("Sig <s@example.org>", "ed25519", None)
    return {
        "dave": gpg.export(d, "dave", fpr),
        "dave_subkeys": gpg.subkeys(fpr),
        "eve": gpg.export(d, "eve", eve),
        "eve_fpr": eve,
        "signer": gpg.export(d, "signer", signer),
        "signer_fpr": signer,
    }


# --- helpers: OpenPGP packets --------------------------------------------------


def first_packet(data: bytes) -> tuple[int, bytes]:
    """(tag, whole packet) of the first packet; it must not use partial lengths."""
    head = data[0]
    if head & 0x40:
        tag, first = head & 0x3F, data[1]
        if first < 192:
            hlen, blen = 2, first
        elif first < 224:
            hlen, blen = 3, ((first - 192) << 8) + data[2] + 192
        else:
            assert first == 255, "partial length"
            hlen, blen = 6, int.from_bytes(data[2:6], "big")
    else:
        tag, n = (head >> 2) & 0x0F, 1 << (head & 3)
        hlen, blen = 1 + n, int.from_bytes(data[1 : 1 + n], "big")
    return tag, data[: hlen + blen]


def pkesk_prefix(data: bytes) -> list[bytes]:
    """The PKESK packets at the start of a message (what follows may be streamed)."""
    out = []
    while data:
        tag, packet = first_packet(data)
        if tag != 1:
            break
        out.append(packet)
        data = data[len(packet) :]
    return out


def split_pkesks(blob: bytes) -> list[bytes]:
    pkesks = pkesk_prefix(blob)
    assert sum(map(len, pkesks)) == len(blob)
    return pkesks


def new_packet(tag: int, body: bytes) -> bytes:
    assert len(body) < 8384
    if len(body) < 192:
        return bytes([0xC0 | tag, len(body)]) + body
    n = len(body) - 192
    return bytes([0xC0 | tag, (n >> 8) + 192, n & 0xFF]) + body


def message(recipients: list[Recipient], plaintext: bytes) -> bytes:
    """PKESKs + SEIPD v1 (AES-256, MDC) holding a binary literal data packet."""
    session_key = os.urandom(32)
    prefix = os.urandom(16)
    prefix += prefix[-2:]
    literal = new_packet(11, b"b\x00" + bytes(4) + plaintext)
    inner = prefix + literal + b"\xd3\x14"
    inner += hashlib.sha1(inner).digest()
    enc = Cipher(algorithms.AES(session_key), CFB(bytes(16))).encryptor()
    seipd = new_packet(18, b"\x01" + enc.update(inner) + enc.finalize())
    return make_pkesks(recipients, session_key) + seipd


def secrets(recipe: Recipe, calls: list | None = None) -> SecretKeyring:
    def ask(description: str) -> str:
        if calls is not None:
            calls.append(description)
        return recipe.passphrase

    return load_secret_keys([str(recipe.key)], ask if recipe.passphrase else None)


ALL = ["sq", "sq_rsa", "sq_pw", "sqop", "sqop_binary", "sqop_pw", "gpg", "gpg_rsa", "gpg_pw"]


# --- round trips ------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_round_trip(recipes, name):
    recipe = recipes[name]
    [r] = load_certificates([str(recipe.cert)])
    assert len(r.key_id) == 8 and r.fingerprint.endswith(r.key_id.hex().upper())
    assert re.fullmatch(r"[0-9A-F]{40}", r.cert_fingerprint) and r.cert_fingerprint != r.fingerprint
    session_key = os.urandom(32)
    blob = make_pkesks([r], session_key)
    assert parse_pkesk_key_id(blob) == r.key_id
    calls = []
    ring = secrets(recipe, calls)
    assert calls == [] and ring.fingerprints() == [r.cert_fingerprint]  # unlock is lazy
    assert ring.decrypt_session_key(split_pkesks(blob)) == (9, session_key)
    assert ring.decrypt_session_key(split_pkesks(blob)) == (9, session_key)
    if recipe.passphrase:  # asked once, naming the key
        assert len(calls) == 1 and r.cert_fingerprint in calls[0]


def test_armored_and_binary_agree(recipes):
    assert recipes["sqop"].cert.read_bytes().startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert recipes["sqop_binary"].cert.read_bytes()[0] & 0x80
    for name in ("sqop", "sqop_binary"):
        [r] = load_certificates([str(recipes[name].cert)])
        assert r.cert_fingerprint in secrets(recipes[name]).fingerprints()


@pytest.mark.expect_log
def test_secret_key_works_as_certificate(recipes, caplog):
    for name in ("sq", "gpg", "sqop_pw"):
        assert load_certificates([str(recipes[name].key)]) == load_certificates([str(recipes[name].cert)])
        assert f"{recipes[name].key} holds a secret key" in caplog.text


@pytest.mark.expect_log     # a secret key given as a certificate warns
def test_keyrings_with_several_certificates(recipes, gpg, tmp_path):
    both = [recipes["gpg"].cert, recipes["gpg_rsa"].cert]
    fprs = {load_certificates([str(p)])[0].fingerprint for p in both}
    binary = tmp_path / "ring.pgp"
    binary.write_bytes(b"".join(p.read_bytes() for p in both))
    armored = tmp_path / "ring.asc"  # gpg --armor --export a b: one armor block
    armored.write_bytes(gpg("--armor", "--export", "b@example.org", "r@example.org"))
    two_blocks = tmp_path / "two.asc"  # cat a.asc b.asc: two armor blocks
    two_blocks.write_bytes(recipes["sqop"].cert.read_bytes() + recipes["sqop_pw"].key.read_bytes())
    for ring in (binary, armored):
        assert {r.fingerprint for r in load_certificates([str(ring)])} == fprs
    assert len(load_certificates([str(two_blocks)])) == 2
    # duplicates removed
    assert len(load_certificates([str(binary), str(armored), str(recipes["gpg"].cert)])) == 2


@pytest.mark.parametrize(
    "names",
    [("sq", "sqop"), ("gpg", "gpg_rsa")],  # armored blocks one after another; binary concatenated
)
def test_secret_keyring_with_several_keys(recipes, tmp_path, names):
    ring_file = tmp_path / "secrets.pgp"
    ring_file.write_bytes(b"".join(recipes[n].key.read_bytes() for n in names))
    ring = load_secret_keys([str(ring_file)], None)
    for name in names:
        [r] = load_certificates([str(recipes[name].cert)])
        blob = make_pkesks([r], b"k" * 32)
        assert ring.decrypt_session_key(split_pkesks(blob)) == (9, b"k" * 32)
    assert len(ring.fingerprints()) == 2


def test_armor_mixed_with_binary_is_refused(recipes, tmp_path):
    mixed = tmp_path / "mixed.pgp"
    mixed.write_bytes(recipes["sq"].key.read_bytes() + recipes["gpg"].key.read_bytes())
    with pytest.raises(KeyringError, match="mixed.pgp"):
        load_secret_keys([str(mixed)], None)


def test_two_recipients_either_key_decrypts(recipes):
    recipients = load_certificates([str(recipes["sq"].cert), str(recipes["gpg_rsa"].cert)])
    session_key = os.urandom(32)
    pkesks = split_pkesks(make_pkesks(recipients, session_key))
    assert [parse_pkesk_key_id(p) for p in pkesks] == [r.key_id for r in recipients]
    for name in ("sq", "gpg_rsa"):
        assert secrets(recipes[name]).decrypt_session_key(pkesks) == (9, session_key)


def test_no_passphrase_asked_when_an_open_key_fits(recipes):
    recipients = load_certificates([str(recipes["gpg_pw"].cert), str(recipes["sq"].cert)])
    pkesks = split_pkesks(make_pkesks(recipients, b"s" * 32))
    ring = load_secret_keys([str(recipes["gpg_pw"].key), str(recipes["sq"].key)], None)
    assert ring.decrypt_session_key(pkesks) == (9, b"s" * 32)


def test_wildcard_key_id(recipes):
    [r] = load_certificates([str(recipes["sq"].cert)])
    blob = make_pkesks([r], b"w" * 32)
    assert blob[1] < 192  # one-octet length: the key id sits at bytes 3..10
    hidden = blob[:3] + bytes(8) + blob[11:]
    assert parse_pkesk_key_id(hidden) == bytes(8)
    ring = load_secret_keys([str(recipes["gpg"].key), str(recipes["sq"].key)], None)
    assert ring.decrypt_session_key([hidden]) == (9, b"w" * 32)


# --- failures -------------------------------------------------------------------------


def test_wrong_key_names_the_key_ids(recipes):
    recipients = load_certificates([str(recipes["sq"].cert), str(recipes["sqop"].cert)])
    pkesks = split_pkesks(make_pkesks(recipients, os.urandom(32)))
    ring = secrets(recipes["gpg"])
    with pytest.raises(NoMatchingKeyError) as e:
        ring.decrypt_session_key(pkesks)
    msg = str(e.value)
    assert e.value.exit_code == 5 and "\n" not in msg
    for r in recipients:
        assert r.key_id.hex().upper() in msg
    assert ring.fingerprints()[0] in msg


@pytest.mark.parametrize("name", ["gpg_pw", "sqop_pw"])
def test_wrong_passphrase(recipes, name):
    [r] = load_certificates([str(recipes[name].cert)])
    pkesks = split_pkesks(make_pkesks([r], os.urandom(32)))
    ring = load_secret_keys([str(recipes[name].key)], lambda description: "not it")
    with pytest.raises(BadPassphraseError, match="wrong passphrase for key") as e:
        ring.decrypt_session_key(pkesks)
    assert e.value.exit_code == 6
    with pytest.raises(BadPassphraseError, match="--pass-fd"):
        load_secret_keys([str(recipes[name].key)], None).decrypt_session_key(pkesks)


def test_certificate_is_not_a_secret_key(recipes):
    path = str(recipes["sq"].cert)
    with pytest.raises(KeyringError, match="holds no secret key") as e:
        load_secret_keys([path], None)
    assert path in str(e.value) and e.value.exit_code == 4
    assert "restore" not in str(e.value)     # ls -k, check --decrypt and the mount ask too


def test_expired_and_revoked_subkeys_are_not_used(aging):
    subkeys = aging["dave_subkeys"]
    assert sorted(subkeys.values()) == ["e", "r", "u"]  # gpg agrees on what we built
    [r] = load_certificates([str(aging["dave"].cert)])
    assert subkeys[r.fingerprint] == "u"


@pytest.mark.parametrize("which", ["eve", "signer"])
def test_no_usable_encryption_subkey(aging, which):
    path = str(aging[which].cert)
    with pytest.raises(KeyringError, match="has no valid encryption subkey") as e:
        load_certificates([path])
    assert aging[f"{which}_fpr"] in str(e.value) and path in str(e.value)


def test_unreadable_and_garbage_files(tmp_path):
    missing = str(tmp_path / "missing.pgp")
    with pytest.raises(KeyringError, match="missing.pgp"):
        load_certificates([missing])
    for name, data in [("text.asc", b"hello world\n"), ("bin.pgp", b"\xff" * 64), ("empty", b"")]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(KeyringError, match=name) as e:
            load_certificates([str(tmp_path / name)])
        assert "\n" not in str(e.value)


def test_parse_pkesk_key_id_formats():
    body = b"\x03" + bytes(range(1, 9)) + b"\x12" + b"ct"
    new, old = bytes([0xC1, len(body)]) + body, bytes([0x84, len(body)]) + body
    old2 = bytes([0x85, 0, len(body)]) + body
    assert {parse_pkesk_key_id(p) for p in (new, old, old2)} == {bytes(range(1, 9))}
    for bad in (b"", b"\xc1", b"\xc1\xc5", new[:-1], b"\xcb\x01x", bytes([0xC1, 11, 6]) + bytes(10)):
        with pytest.raises(FormatError):
            parse_pkesk_key_id(bad)


def test_session_key_size_is_checked(recipes):
    [r] = load_certificates([str(recipes["sq"].cert)])
    with pytest.raises(ValueError):
        make_pkesks([r], b"short")


# --- interop: the packets are standard OpenPGP --------------------------------------


@pytest.mark.parametrize("name", ["gpg", "gpg_rsa", "sqop"])
def test_gpg_decrypts_our_message(recipes, name, tmp_path):
    plaintext = os.urandom(500)
    msg = tmp_path / "msg.pgp"
    msg.write_bytes(message(load_certificates([str(recipes[name].cert)]), plaintext))
    g = Gpg(tmp_path / "gnupg")  # a fresh home: only this key
    try:
        g("--import", str(recipes[name].key))
        assert g("--decrypt", str(msg)) == plaintext
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env=g.env, capture_output=True)


@pytest.mark.parametrize("name", ["sq", "sq_rsa", "gpg", "gpg_rsa", "sqop"])
def test_sq_decrypts_our_message(recipes, name, tmp_path):
    plaintext = b"cryophile interop\n" * 20
    msg = tmp_path / "msg.pgp"
    msg.write_bytes(message(load_certificates([str(recipes[name].cert)]), plaintext))
    assert run("sq", "decrypt", "--recipient-key", str(recipes[name].key), str(msg)) == plaintext


def session_key_of(text: str) -> tuple[int, bytes]:
    algo, key = re.search(r"(\d+):([0-9A-Fa-f]+)", text).groups()
    return int(algo), bytes.fromhex(key)


@pytest.mark.parametrize("name", ["gpg", "gpg_rsa"])
def test_we_open_gpg_messages(recipes, gpg, name, tmp_path):
    src = tmp_path / "plain"
    src.write_bytes(b"x" * 100)
    out = gpg("--encrypt", "--recipient-file", str(recipes[name].cert), "--output", "-", str(src))
    pkesks = pkesk_prefix(out)
    shown = subprocess.run(
        ["gpg", "--batch", "--decrypt", "--show-session-key"], input=out, env=gpg.env, capture_output=True
    )
    assert shown.returncode == 0, shown.stderr
    expected = session_key_of(re.search(rb"session key: '([^']+)'", shown.stderr).group(1).decode())
    assert secrets(recipes[name]).decrypt_session_key(pkesks) == expected


@pytest.mark.parametrize("name", ["sq", "sq_rsa"])
def test_we_open_sq_messages(recipes, name, tmp_path):
    src = tmp_path / "plain"
    src.write_bytes(b"y" * 100)
    out = run("sq", "encrypt", "--recipient-cert", str(recipes[name].cert), "--binary", str(src))
    dumped = subprocess.run(
        ["sq", "decrypt", "--recipient-key", str(recipes[name].key), "--dump-session-key"],
        input=out, capture_output=True,
    )
    assert dumped.returncode == 0, dumped.stderr
    assert b"Encrypted using AES-256" in dumped.stderr
    expected = bytes.fromhex(re.search(rb"Session key: ([0-9A-Fa-f]+)", dumped.stderr).group(1).decode())
    assert secrets(recipes[name]).decrypt_session_key(pkesk_prefix(out)) == (9, expected)



def test_encryption_capable_primary_is_used(gpg, tmp_path):
    gpg("--quick-gen-key", "Prim <prim@example.org>", "rsa2048", "encr", "never")
    recipe = gpg.export(tmp_path, "prim", gpg.fingerprint("prim@example.org"))
    [r] = load_certificates([str(recipe.cert)])
    assert r.fingerprint == r.cert_fingerprint
    blob = make_pkesks([r], b"p" * 32)
    assert secrets(recipe).decrypt_session_key(split_pkesks(blob)) == (9, b"p" * 32)


@pytest.mark.expect_log     # a secret key given as a certificate warns
def test_transport_only_subkey_is_not_for_backups(tmp_path):
    key = tmp_path / "transport.key"
    run("sq", "key", "generate", "--can-encrypt", "transport", "--cannot-authenticate",
        "--cannot-sign", "--export", str(key))
    with pytest.raises(KeyringError, match="has no valid encryption subkey"):
        load_certificates([str(key)])


# --- warnings about where secret keys are ---------------------------------------------

def _copy(path, tmp_path, mode: int):
    copy = tmp_path / path.name
    copy.write_bytes(path.read_bytes())
    copy.chmod(mode)
    return copy


@pytest.mark.expect_log
def test_world_readable_secret_key_warns_once(recipes, tmp_path, caplog):
    key = _copy(recipes["sq"].key, tmp_path, 0o644)
    load_secret_keys([str(key)], None)
    load_secret_keys([str(key)], None)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"secret key file {key} is readable by every user (mode 0644): "
                        f"chmod 600 {key}"]


def test_private_secret_key_and_readable_certificate_are_quiet(recipes, tmp_path, caplog):
    load_secret_keys([str(_copy(recipes["sq"].key, tmp_path, 0o640))], None)
    load_certificates([str(_copy(recipes["sq"].cert, tmp_path, 0o644))])
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_mount_takes_secret_keys_without_warning(recipes, tmp_path, caplog):
    load_certificates([str(_copy(recipes["sq"].key, tmp_path, 0o600))], secret_ok=True)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
