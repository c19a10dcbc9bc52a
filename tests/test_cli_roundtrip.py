"""Byte-identical round trips through the real `cryophile` command on a local vault:
backup → freeze --once → restore, plus the in-process pipeline and its seek index."""

from __future__ import annotations

import datetime
import io
import os
import random
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryophile import ids, keys, manifest
from cryophile.pipeline import compress, openpgp, reader, writer
from cryophile.spool import Spool
from tests.clirig import archive_dir, fragments, make_rig, restore_with

FRAG = 4096


@pytest.fixture
def rig(tmp_path):
    return make_rig(tmp_path)


def mixed(n: int, seed: int = 0) -> bytes:
    """Partly compressible, partly random bytes."""
    rnd = random.Random(seed)
    out = bytearray()
    while len(out) < n:
        if rnd.random() < 0.5:
            out += rnd.randbytes(rnd.randint(1, 5000))
        else:
            out += bytes([rnd.randrange(256)]) * rnd.randint(1, 5000)
    return bytes(out[:n])


def roundtrip(rig, recipe, data: bytes, *backup_args: str, freeze: bool = True,
              to_file: bool = True) -> str:
    ulid = rig.backup(data, recipe.cert, *backup_args)
    if freeze:
        rig.run("freeze", "--once", check=True)
        assert not (rig.spool / "freeze" / rig.vault / ulid).exists()
        assert (archive_dir(rig, ulid) / "chunk.0").exists()
    proc = restore_with(rig, ulid, recipe, check=True)
    assert proc.stdout == data
    if to_file:
        out = rig.root / f"out-{ulid}"
        restore_with(rig, ulid, recipe, "-o", str(out), check=True)
        assert out.read_bytes() == data
    return ulid


# --- sizes ---------------------------------------------------------------------

SIZES = [0, 1, 4097, 65536 + 7]


@pytest.mark.parametrize("codec", ["none", "lz4", "zstd"])
def test_sizes_and_compressions(rig, recipes, codec):
    sq = recipes["sq"]
    made = {size: rig.backup(mixed(size, size), sq.cert, "-s", "4KiB", "-C", codec,
                             *(["--allow-empty"] if size == 0 else []))
            for size in SIZES}
    rig.run("freeze", "--once", check=True)
    for size, ulid in made.items():
        assert (archive_dir(rig, ulid) / "chunk.0").exists()
        assert not (rig.spool / "freeze" / rig.vault / ulid).exists()
        if size == 0:
            assert len(fragments(archive_dir(rig, ulid))) == 1
        assert restore_with(rig, ulid, sq, check=True).stdout == mixed(size, size)
    out = rig.root / "out"
    restore_with(rig, made[SIZES[-1]], sq, "-o", str(out), check=True)
    assert out.read_bytes() == mixed(SIZES[-1], SIZES[-1])
    assert [p.name for p in rig.root.iterdir() if p.name.startswith(".out")] == []


def test_message_length_around_fragment_size(rig, recipes):
    """Messages of fragment size -1, exact, +1 (and twice that) split and restore right."""
    sq = recipes["sq"]
    probe = rig.backup(b"x" * 1000, sq.cert, "-C", "none", "-s", "4KiB")
    overhead = sum(p.stat().st_size for p in fragments(archive_dir(rig, probe, where="freeze")))
    overhead -= 1000
    for target in (FRAG - 1, FRAG, FRAG + 1, 2 * FRAG - 1, 2 * FRAG, 2 * FRAG + 1):
        data = os.urandom(target - overhead)
        ulid = rig.backup(data, sq.cert, "-C", "none", "-s", "4KiB")
        frags = fragments(archive_dir(rig, ulid, where="freeze"))
        assert sum(p.stat().st_size for p in frags) == target
        assert len(frags) == -(-target // FRAG)
        assert all(p.stat().st_size == FRAG for p in frags[:-1])
        assert restore_with(rig, ulid, sq, check=True).stdout == data
    rig.run("freeze", "--once", check=True)
    listing = rig.run("ls", rig.vault, check=True).stdout.decode().splitlines()[1:]
    assert len(listing) == 7 and all(" local " in line for line in listing)


def test_many_fragments(rig, recipes):
    data = os.urandom(1200 << 10)
    ulid = roundtrip(rig, recipes["sq"], data, "-s", "4KiB", "-C", "zstd", to_file=False)
    assert len(fragments(archive_dir(rig, ulid))) > 300


# --- keys ----------------------------------------------------------------------

RECIPES = ["sq", "sq_rsa", "sqop", "sqop_binary", "sqop_pw", "gpg", "gpg_rsa", "gpg_pw", "sq_pw"]


def test_every_key_recipe(rig, recipes):
    made = {name: rig.backup(mixed(20000, i), recipes[name].cert, "-s", "4KiB")
            for i, name in enumerate(RECIPES)}
    rig.run("freeze", "--once", check=True)
    for i, name in enumerate(RECIPES):
        proc = restore_with(rig, made[name], recipes[name])
        assert proc.returncode == 0, (name, proc.stderr)
        assert proc.stdout == mixed(20000, i), name


def test_two_recipients_either_key_restores(rig, recipes):
    data = mixed(30000, 4)
    a, b = recipes["gpg"], recipes["sqop_pw"]
    ulid = rig.backup(data, a.cert, "-k", str(b.cert), "-s", "4KiB")
    rig.run("freeze", "--once", check=True)
    assert restore_with(rig, ulid, a, check=True).stdout == data
    assert restore_with(rig, ulid, b, check=True).stdout == data
    proc = restore_with(rig, ulid, recipes["sq"])
    assert proc.returncode == 5


@pytest.mark.parametrize("pair", [("gpg", "sqop_binary"), ("sq", "sqop")],
                         ids=["binary", "armored"])
def test_keyring_file_with_two_certs(rig, recipes, pair):
    data = mixed(10000, 5)
    ring = rig.root / "ring.pgp"
    ring.write_bytes(b"".join(recipes[n].cert.read_bytes() for n in pair))
    ulid = rig.backup(data, ring, "-s", "4KiB")
    for n in pair:
        assert restore_with(rig, ulid, recipes[n], check=True).stdout == data


# --- input, ids, names ---------------------------------------------------------

def test_input_file(rig, recipes):
    data = mixed(50000, 6)
    src = rig.root / "input"
    src.write_bytes(data)
    proc = rig.run("backup", "-v", rig.vault, "-k", str(recipes["sq"].cert), "-i", str(src),
                   "-s", "4KiB", input=None, check=True)
    ulid = proc.stdout.decode().strip()
    assert restore_with(rig, ulid, recipes["sq"], check=True).stdout == data


def test_input_fifo(rig, recipes):
    data = mixed(3 << 20, 7)
    fifo = rig.root / "fifo"
    os.mkfifo(fifo)

    def feed():
        with open(fifo, "wb") as f:
            for i in range(0, len(data), 65536):
                f.write(data[i:i + 65536])
    t = threading.Thread(target=feed)
    t.start()
    proc = rig.run("backup", "-v", rig.vault, "-k", str(recipes["sq"].cert), "-i", str(fifo),
                   "-s", "256KiB", input=None, check=True, timeout=60)
    t.join()
    ulid = proc.stdout.decode().strip()
    rig.run("freeze", "--once", check=True)
    assert restore_with(rig, ulid, recipes["sq"], check=True).stdout == data


def test_timestamp_gives_ulid_at_that_time(rig, recipes):
    ulid = rig.backup(b"t", recipes["sq"].cert, "-t", "2021-03-04T05:06:07Z")
    assert ids.ulid_time(ulid) == datetime.datetime(2021, 3, 4, 5, 6, 7,
                                                    tzinfo=datetime.timezone.utc)
    ulid2 = rig.backup(b"t", recipes["sq"].cert, "-t", "1600000000")
    assert ids.ulid_time(ulid2).timestamp() == 1600000000
    listing = rig.run("ls", rig.vault, check=True).stdout.decode()
    assert "2021-03-04T05:06:07" in listing


def test_ulid_used_as_given(rig, recipes):
    given_ulid = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
    data = b"given"
    assert rig.backup(data, recipes["sq"].cert, "-u", given_ulid) == given_ulid
    rig.run("freeze", "--once", check=True)
    assert (archive_dir(rig, given_ulid) / "chunk.0").exists()
    assert restore_with(rig, given_ulid, recipes["sq"], check=True).stdout == data
    again = rig.run("backup", "-v", rig.vault, "-k", str(recipes["sq"].cert), "-u", given_ulid)
    assert again.returncode != 0   # the vault already holds it (or at least: no overwrite)
    assert restore_with(rig, given_ulid, recipes["sq"], check=True).stdout == data


def test_name_shows_in_ls_with_key(rig, recipes):
    sq = recipes["sq"]
    ulid = rig.backup(b"named", sq.cert, "--name", "tank/home@monday")
    plain = rig.run("ls", rig.vault, check=True).stdout.decode()
    assert ulid in plain and "tank/home@monday" not in plain
    named = rig.run("ls", "-k", str(sq.key), rig.vault, check=True).stdout.decode()
    assert "tank/home@monday" in named
    rig.run("freeze", "--once", check=True)
    named = rig.run("ls", "-k", str(sq.key), rig.vault, check=True).stdout.decode()
    assert "tank/home@monday" in named
    # the name is not in the clear in the vault
    for p in archive_dir(rig, ulid).iterdir():
        assert b"tank/home@monday" not in p.read_bytes()


def test_restore_from_spool_before_freeze(rig, recipes):
    data = mixed(40000, 8)
    ulid = roundtrip(rig, recipes["sq"], data, "-s", "4KiB", freeze=False)
    assert not archive_dir(rig, ulid).exists()
    assert (archive_dir(rig, ulid, where="freeze") / "chunk.0").exists()
    # restore did not take the fragments away from the freeze queue
    rig.run("freeze", "--once", check=True)
    assert restore_with(rig, ulid, recipes["sq"], check=True).stdout == data


def test_prefix_roundtrip_and_ls(rig, recipes):
    sq = recipes["sq"]
    data = mixed(9000, 9)
    a = rig.backup(data, sq.cert, "-p", "tank/home", "-s", "4KiB")
    b = rig.backup(b"other", sq.cert, "-p", "tank/var")
    listing = rig.run("ls", check=True).stdout.decode()
    assert f"{rig.vault}/tank/home/{a}" in listing and f"{rig.vault}/tank/var/{b}" in listing
    assert "queued" in listing
    rig.run("freeze", "--once", check=True)
    assert (archive_dir(rig, a, "tank/home") / "chunk.0").exists()
    listing = rig.run("ls", f"{rig.vault}/tank/home", check=True).stdout.decode()
    lines = listing.splitlines()
    assert lines[0].split()[:5] == ["ARCHIVE", "CREATED", "SIZE", "FRAGS", "STATE"]
    assert len(lines) == 2 and f"tank/home/{a}" in lines[1] and "local" in lines[1]
    assert "8.8 KiB" in lines[1]
    proc = restore_with(rig, a, sq, "-p", "tank/home", check=True)
    assert proc.stdout == data


# --- configuration and logging -------------------------------------------------

def test_config_defaults_and_alias(tmp_path, recipes):
    sq = recipes["sq"]
    rig = make_rig(tmp_path, name="offsite", keyring=[str(sq.cert)], compression="zstd",
                   fragment_size="4KiB")
    data = b"A" * 10000 + os.urandom(12000)
    proc = rig.run("backup", "-v", "offsite", input=data, check=True)
    ulid = proc.stdout.decode().strip()
    frags = fragments(archive_dir(rig, ulid, where="freeze"))
    assert all(p.stat().st_size == 4096 for p in frags[:-1]) and len(frags) > 2
    rig.run("freeze", "--once", check=True)
    # zstd frames: the disaster-recovery recipe needs zstd -d
    clear, encrypted = manifest.load(str(archive_dir(rig, ulid) / "chunk.0"))
    ring = keys.load_secret_keys([str(sq.key)], None)
    body = manifest.read_manifest(encrypted, clear, ring.decrypt_session_key)
    assert body["compression"] == "zstd" and body["fragment_size"] == 4096
    proc = rig.run("restore", "-v", "offsite", "-u", ulid, "-k", str(sq.key), input=None,
                   check=True)
    assert proc.stdout == data
    assert ulid in rig.run("ls", "offsite", check=True).stdout.decode()


def test_missing_config_file_fails(rig):
    proc = rig.run("ls", pre=["-c", str(rig.root / "nope.toml")])
    assert proc.returncode == 3
    err = proc.stderr.decode()
    assert "nope.toml" in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_log_levels(rig, recipes):
    sq = recipes["sq"]
    ulid = rig.backup(b"log", sq.cert)
    debug = rig.run("freeze", "--once", env={"CRYOPHILE_LOG": "debug"}, check=True)
    assert "debug" in debug.stderr.decode()
    assert "frozen" in debug.stderr.decode()
    ulid2 = rig.backup(b"log2", sq.cert)
    quiet = rig.run("freeze", "--once", pre=["-q"], check=True)
    assert quiet.stderr == b""
    normal_ulid = rig.backup(b"log3", sq.cert)
    normal = rig.run("freeze", "--once", check=True)
    assert "frozen" in normal.stderr.decode() and "debug" not in normal.stderr.decode()
    d = rig.run("freeze", "--once", pre=["-d"], check=True)
    assert d.returncode == 0
    for u in (ulid, ulid2, normal_ulid):
        assert (archive_dir(rig, u) / "chunk.0").exists()


# --- the pipeline in-process ---------------------------------------------------

@pytest.fixture(scope="module")
def sq_keys(recipes):
    sq = recipes["sq"]
    return (keys.load_certificates([str(sq.cert)]),
            keys.load_secret_keys([str(sq.key)], None))


VAULT = "0b8c3a7e-5a1d-4f7e-9a53-3f1c2d4e5f60"


def write_archive(root: str, recipients, data: bytes, codec: str, fragment_size: int,
                  pieces: int = 1):
    spool = Spool(root)
    spool.ensure()
    bid = ids.BackupId(VAULT, "p", ids.new_ulid())
    w = writer.ArchiveWriter(spool, bid, recipients, codec, fragment_size, name="n")
    step = max(1, -(-len(data) // pieces))
    for i in range(0, len(data), step):
        w.write(data[i:i + step])
    w.close()
    return spool, bid


@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=3000),
                      st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=50),
                                st.integers(1, 200))),
       codec=st.sampled_from(compress.CODECS),
       fragment_size=st.one_of(st.integers(1, 64), st.integers(65, 9000)),
       pieces=st.integers(1, 5))
def test_pipeline_property(sq_keys, data, codec, fragment_size, pieces):
    recipients, ring = sq_keys
    if fragment_size < 16:
        data = data[:400]
    with tempfile.TemporaryDirectory() as root:
        spool, bid = write_archive(root, recipients, data, codec, fragment_size, pieces)
        clear, encrypted = manifest.load(spool.path("freeze", bid, 0))
        body = manifest.read_manifest(encrypted, clear, ring.decrypt_session_key)
        assert body["size"] == clear.size == len(data)
        assert body["name"] == "n" and body["compression"] == codec
        assert all(f.size == fragment_size for f in clear.fragments[:-1])
        out = io.BytesIO()
        n = reader.restore(clear, body, ring.decrypt_session_key,
                           lambda k: spool.path("freeze", bid, k), out)
        assert n == len(data) and out.getvalue() == data
        assert not os.path.exists(spool.dir("backup", bid))


@pytest.mark.parametrize("codec", ["lz4", "zstd", "none"])
def test_seek_index(sq_keys, tmp_path, monkeypatch, codec):
    """Every index entry lets a reader start there with only the later fragments."""
    monkeypatch.setattr(compress, "FRAME_SIZE", 256 << 10)
    monkeypatch.setattr(writer, "INDEX_INTERVAL", 256 << 10)
    recipients, ring = sq_keys
    data = mixed(6 << 20, 11)
    fragment_size = (1 << 20) + 12345
    spool, bid = write_archive(str(tmp_path), recipients, data, codec, fragment_size, pieces=7)
    clear, encrypted = manifest.load(spool.path("freeze", bid, 0))
    body = manifest.read_manifest(encrypted, clear, ring.decrypt_session_key)
    frags = [Path(spool.path("freeze", bid, n)).read_bytes()
             for n in range(1, len(clear.fragments) + 1)]
    assert len(frags) >= 4
    whole = b"".join(frags)
    pkesks, _ = openpgp.read_session_packets(openpgp.ByteSource([whole]))
    algo, key = ring.decrypt_session_key(pkesks)
    layout = openpgp.Layout(body["seipd_start"], body["stream_size"])
    assert layout.message_size == len(whole)
    index = body["index"]
    assert index[0][:2] == [0, 0]
    plain_offsets = [e[0] for e in index]
    assert plain_offsets == sorted(plain_offsets)
    # a seek point starts inside every fragment
    starts = set()
    for plain_off, stream_off, iv in index:
        m = layout.ciphertext_to_message(layout.resume_block(stream_off))
        starts.add(m // fragment_size)
    assert starts >= set(range(len(frags) - 1))
    assert len(index) >= len(data) // (256 << 10) // 2
    for plain_off, stream_off, iv in index:
        m = layout.ciphertext_to_message(layout.resume_block(stream_off))
        first, within = divmod(m, fragment_size)
        blocks = [frags[first][within:], *frags[first + 1:]]
        stream = openpgp.decrypt_from(openpgp.ByteSource(blocks), layout, key, stream_off,
                                      bytes.fromhex(iv))
        plain = b"".join(compress.decompress(body["compression"], (bytes(b) for b in stream)))
        assert plain == data[plain_off:], (plain_off, stream_off)
