"""cryophile check: fragments present, sized, classed as chunk.0 says, chains
unbroken; --read-data hashes them (no secret key); --decrypt goes through the
MDC.  One line per problem, the worst exit code, --json."""

from __future__ import annotations

import json
import os

import pytest

from tests.clirig import archive_dir, make_rig, passphrase_fd
from tests.test_s3_e2e import S3Rig

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def rig(tmp_path):
    return make_rig(tmp_path)


def backup(rig, recipes, data: bytes, *args: str) -> str:
    return rig.backup(data, recipes["gpg"].cert, "-s", "4KiB", *args)


def frozen(rig, recipes, n: int = 2, *args: str) -> list[str]:
    ulids = [backup(rig, recipes, os.urandom(20_000), "-p", "tank", *args) for _ in range(n)]
    rig.run("freeze", "--once", check=True)
    return ulids


def check(rig, *args: str, **kw):
    proc = rig.run("check", *args, input=None, **kw)
    assert b"Traceback" not in proc.stderr, proc.stderr
    return proc


def decrypt_args(recipes):
    return ["--read-data", "--decrypt", "-k", str(recipes["gpg"].key)]


def test_healthy_vault_checks_clean_at_every_depth(rig, recipes):
    a, b = frozen(rig, recipes)
    for target in (rig.vault, f"{rig.vault}/tank", f"{rig.vault}/tank/{a}"):
        for extra in ([], ["--read-data"], decrypt_args(recipes)):
            proc = check(rig, target, *extra)
            assert proc.returncode == 0, (target, extra, proc.stdout, proc.stderr)
            assert proc.stdout == b""
    doc = json.loads(check(rig, rig.vault, "--json", check=True).stdout)
    assert doc == {"checked": [f"{rig.vault}/tank/{a}", f"{rig.vault}/tank/{b}"],
                   "problems": [], "exit": 0}


def test_missing_and_truncated_fragments_exit_8(rig, recipes):
    a, b = frozen(rig, recipes)
    (archive_dir(rig, a, "tank") / "chunk.2").unlink()
    path = archive_dir(rig, b, "tank") / "chunk.3"
    path.write_bytes(path.read_bytes()[:-10])
    proc = check(rig, rig.vault)
    assert proc.returncode == 8, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert lines == [f"{rig.vault}/tank/{a}: chunk.2 is missing",
                     f"{rig.vault}/tank/{b}: chunk.3 has {path.stat().st_size} bytes, "
                     f"chunk.0 records {path.stat().st_size + 10}"]
    doc = json.loads(check(rig, rig.vault, "--json").stdout)
    assert doc["exit"] == 8 and [p["key"] for p in doc["problems"]] == [
        f"tank/{a}/chunk.2", f"tank/{b}/chunk.3"]


def test_a_flipped_byte_is_found_by_read_data_only(rig, recipes):
    (a,) = frozen(rig, recipes, 1)
    path = archive_dir(rig, a, "tank") / "chunk.2"
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    assert check(rig, rig.vault).returncode == 0          # sizes are right
    proc = check(rig, rig.vault, "--read-data")
    assert proc.returncode == 9, proc.stderr
    assert proc.stdout.decode() == (f"{rig.vault}/tank/{a}: chunk.2 fails its SHA-256 check: "
                                    "it is damaged\n")
    assert not list((rig.spool).glob(".check-*"))


def test_decrypt_finds_what_hashes_cannot(rig, recipes):
    """chunk.0's clear hashes rewritten to match a changed fragment: only the
    encrypted manifest (and the MDC) can tell."""
    (a,) = frozen(rig, recipes, 1)
    adir = archive_dir(rig, a, "tank")
    frag = adir / "chunk.1"
    data = bytearray(frag.read_bytes())
    data[-1] ^= 1
    frag.write_bytes(bytes(data))
    import hashlib
    mark = (adir / "chunk.0").read_bytes()
    magic, clear, rest = mark.split(b"\n", 2)
    info = json.loads(clear)
    info["fragments"][0][1] = hashlib.sha256(bytes(data)).hexdigest()
    (adir / "chunk.0").write_bytes(magic + b"\n" + json.dumps(info).encode() + b"\n" + rest)
    assert check(rig, rig.vault, "--read-data").returncode == 0
    proc = check(rig, rig.vault, *decrypt_args(recipes))
    assert proc.returncode == 9, proc.stderr
    assert b"does not decrypt" in proc.stdout
    assert not list((rig.spool).glob(".check-*"))


def test_decrypt_with_a_passphrase_and_the_wrong_key(rig, recipes):
    frozen(rig, recipes, 1)
    extra, fds, close = passphrase_fd("nope")
    try:
        proc = rig.run("check", rig.vault, "--read-data", "--decrypt", "-k",
                       str(recipes["sqop"].key), *extra, pass_fds=fds, input=None)
    finally:
        for fd in close:
            os.close(fd)
    assert proc.returncode == 5, proc.stderr       # no matching secret key: not "damaged"


def test_stray_and_orphaned_objects(rig, recipes):
    a, b = frozen(rig, recipes)
    adir = archive_dir(rig, a, "tank")
    (adir / "chunk.9").write_bytes(b"x")
    (archive_dir(rig, b, "tank") / "chunk.0").unlink()      # as an interrupted rm leaves it
    proc = check(rig, rig.vault)
    assert proc.returncode == 9, proc.stderr
    out = proc.stdout.decode()
    assert f"{rig.vault}/tank/{a}: chunk.9 is not one of the" in out
    assert f"{rig.vault}/tank/{b}: " in out and "without chunk.0" in out


def test_an_archive_still_being_frozen_is_no_problem(rig, recipes):
    (a,) = frozen(rig, recipes, 1)
    b = backup(rig, recipes, os.urandom(20_000), "-p", "tank")
    queued = rig.spool / "freeze" / rig.vault / "tank" / b
    bdir = archive_dir(rig, b, "tank")
    bdir.mkdir(parents=True)
    (bdir / "chunk.1").write_bytes((queued / "chunk.1").read_bytes())   # half uploaded
    assert check(rig, rig.vault).returncode == 0


def test_a_broken_chain_exits_8(rig, recipes):
    base = backup(rig, recipes, os.urandom(5000), "-p", "tank")
    child = backup(rig, recipes, os.urandom(5000), "-p", "tank", "--parent", base)
    rig.run("freeze", "--once", check=True)
    assert check(rig, rig.vault).returncode == 0
    assert check(rig, f"{rig.vault}/tank/{child}").returncode == 0     # its base is looked up
    rig.run("rm", "--force", f"{rig.vault}/tank/{base}", check=True)      # breaks it
    proc = check(rig, rig.vault)
    assert proc.returncode == 8, proc.stderr
    assert proc.stdout.decode() == (f"{rig.vault}/tank/{child}: chain broken: needs archive "
                                    f"{base} (its --parent), which is not in the vault\n")


def test_nothing_to_check_and_bad_options(rig, recipes):
    assert check(rig, rig.vault).returncode == 7
    assert check(rig, f"{rig.vault}/01J00000000000000000000000").returncode == 7
    assert check(rig, rig.vault, "--decrypt").returncode == 2
    assert check(rig, rig.vault, "-k", str(recipes["gpg"].key)).returncode == 2


# --- S3 ----------------------------------------------------------------------------


def test_s3_storage_classes_and_read_data_thaws(tmp_path, bucket, s3proxy, s3client, recipes):
    rig = S3Rig(tmp_path, bucket, s3proxy.endpoint, storage_class="GLACIER")
    s3proxy.restore_delay = 0.5
    ulid = backup(rig, recipes, os.urandom(20_000), "-p", "tank")
    rig.run("freeze", "--once", check=True)
    assert check(rig, "offsite").returncode == 0
    proc = check(rig, f"offsite/tank/{ulid}", *decrypt_args(recipes))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert s3proxy.requests("POST", "restore")                # thawed, not just read
    key = f"tank/{ulid}/chunk.2"
    s3client.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": key},
                         StorageClass="STANDARD_IA")
    proc = check(rig, "offsite")
    assert proc.returncode == 10, proc.stderr
    assert proc.stdout.decode() == (f"{bucket}/tank/{ulid}: chunk.2 is in storage class "
                                    "STANDARD_IA, expected GLACIER\n")


def test_a_base_still_queued_in_the_spool_is_no_broken_chain(rig, recipes):
    base = backup(rig, recipes, os.urandom(5000), "-p", "tank")
    child = backup(rig, recipes, os.urandom(5000), "-p", "tank", "--parent", base)
    rig.run("freeze", "--once", check=True)
    queued = rig.spool / "freeze" / rig.vault / "tank" / base
    queued.mkdir(parents=True)
    for name in ("chunk.0", "chunk.1"):
        (queued / name).write_bytes((archive_dir(rig, base, "tank") / name).read_bytes())
    import shutil
    shutil.rmtree(archive_dir(rig, base, "tank"))           # as if not yet frozen
    assert check(rig, f"{rig.vault}/tank/{child}").returncode == 0
    shutil.rmtree(queued)
    assert check(rig, f"{rig.vault}/tank/{child}").returncode == 8


@pytest.mark.expect_log          # the writer says it sealed the stream incomplete
def test_an_archive_sealed_incomplete_is_a_problem_exit_14(rig, recipes):
    """A stream the mount sealed incomplete (its writer died) is intact in the
    vault but not a whole backup: check says so, worst after storage."""
    from cryophile import keys
    from cryophile.ids import BackupId, new_ulid
    from cryophile.pipeline.writer import ArchiveWriter
    from cryophile.spool import Spool
    from tests.test_catalog import _tar_cut_short
    (whole,) = frozen(rig, recipes, 1)
    cut = BackupId(rig.vault, "tank", new_ulid())
    writer = ArchiveWriter(Spool(str(rig.spool)), cut,
                           keys.load_certificates([str(recipes["gpg"].cert)]), "lz4", 4096)
    writer.write(_tar_cut_short())
    writer.close(incomplete="mark")
    rig.run("freeze", "--once", check=True)
    for extra in ([], ["--read-data"], decrypt_args(recipes)):
        proc = check(rig, rig.vault, *extra)
        assert proc.returncode == 14, (extra, proc.stdout, proc.stderr)
        (line,) = proc.stdout.decode().splitlines()
        assert line.startswith(f"{cut}: sealed incomplete: its tar stream was cut short")
    assert check(rig, f"{rig.vault}/tank/{whole}").returncode == 0
    (archive_dir(rig, whole, "tank") / "chunk.1").unlink()     # worse problems come first
    doc = json.loads(check(rig, rig.vault, "--json").stdout)
    assert doc["exit"] == 8
    assert sorted(p["kind"] for p in doc["problems"]) == ["incomplete", "missing"]
