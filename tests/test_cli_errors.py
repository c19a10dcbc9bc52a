"""Bad input: one clear line on stderr, a distinct exit code, no traceback (unless -d),
and nothing half-made left looking complete."""

from __future__ import annotations

import contextlib
import os
import subprocess

import pytest

from tests.clirig import archive_dir, fragments, make_rig, restore_with
from tests.test_cli_roundtrip import mixed

USAGE, CONFIG, KEY, NO_MATCH, PASSPHRASE, NOT_FOUND, FRAGMENT, INTEGRITY = 2, 3, 4, 5, 6, 7, 8, 9
SPOOL, DISK_FULL = 11, 12


@pytest.fixture
def rig(tmp_path):
    return make_rig(tmp_path)


def failed(proc: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """Assert exit ``code`` and one line on stderr holding every needle (case-insensitive)."""
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == code, (proc.returncode, err)
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("cryophile: "), err
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, err)
    return lines[0]


def no_complete_archive(rig) -> None:
    """Nothing in the spool or the vault looks like a complete archive."""
    for top in (rig.spool, rig.vaults):
        if top.exists():
            assert list(top.rglob("chunk.0")) == [], list(top.rglob("*"))
    for q in ("backup", "freeze"):
        d = rig.spool / q
        if d.exists():
            assert list(d.rglob("chunk.*")) == [], list(d.rglob("*"))


def backup(rig, cert, *args, data: bytes = b"data", pre=()):
    return rig.run("backup", "-v", rig.vault, "-k", str(cert), *args, input=data, pre=pre)


# --- backup arguments -----------------------------------------------------------

@pytest.mark.parametrize("args, needles", [
    (["-v", "not-a-uuid"], ["not-a-uuid", "UUID"]),
    (["-p", "tank/../etc"], ["tank/../etc", ".."]),
    (["-p", "tank/my home"], ["tank/my home", "characters"]),
    (["-p", "/tank"], ["/tank", "start"]),
    (["-p", "/".join(["a" * 200] * 4 + ["a" * 181])], ["985", "at most 984", "1024"]),
    (["-p", "a" * 256], ["256", "255"]),
    (["-t", "2021-01-01", "-u", "01ARZ3NDEKTSV4RRFFQ69G5FAV"], ["-t", "-u"]),
    (["-C", "brotli"], ["brotli", "none, lz4 or zstd"]),
    (["-s", "0"], ["fragment size", "zero"]),
    (["-s", "lots"], ["lots", "fragment size"]),
    (["-s", "-5"], ["-5", "fragment size"]),
    (["-s", "1"], ["fragment size", "'1'", "4KiB"]),
    (["-s", "4095"], ["fragment size", "4KiB to 5TiB"]),
    (["-s", "6T"], ["fragment size", "'6T'", "5TiB"]),
    (["-t", "yesterday"], ["yesterday", "timestamp"]),
    (["-u", "not-a-ulid"], ["ULID"]),
], ids=["vault", "dotdot", "space", "leading-slash", "too-long", "long-segment", "t-and-u", "compression",
        "fragment-0", "fragment-junk", "fragment-negative", "fragment-1", "fragment-below-4KiB",
        "fragment-above-5TiB", "timestamp", "ulid"])
def test_bad_backup_arguments(rig, recipes, args, needles):
    cmd = ["backup", "-v", rig.vault, "-k", str(recipes["sq"].cert), *args]
    if args[0] == "-v":
        cmd = ["backup", "-k", str(recipes["sq"].cert), *args]
    failed(rig.run(*cmd, input=b"data"), USAGE, *needles)
    no_complete_archive(rig)


def test_prefix_at_the_length_limit_works(rig, recipes):
    """984 bytes: PREFIX/ULID/chunk.999999 is exactly 1024 bytes."""
    prefix = "/".join(["a" * 200] * 4 + ["a" * 180])
    assert len(prefix) == 984
    ulid = backup(rig, recipes["sq"].cert, "-p", prefix).stdout.decode().strip()
    assert (archive_dir(rig, ulid, prefix, where="freeze") / "chunk.0").exists()
    assert len(f"{prefix}/{ulid}/chunk.999999") == 1024


def test_bad_vault_in_restore(rig, recipes):
    proc = rig.run("restore", "-v", "x", "-u", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "-k",
                   str(recipes["sq"].key), input=None)
    failed(proc, USAGE, "UUID")


def test_missing_config(rig, recipes):
    failed(backup(rig, recipes["sq"].cert, pre=["-c", str(rig.root / "none.toml")]), CONFIG,
           "none.toml")


def test_bad_config(rig, recipes):
    rig.config.write_text("[vault.x]\nurl = 3\n")
    failed(backup(rig, recipes["sq"].cert), CONFIG, str(rig.config))


# --- keys -------------------------------------------------------------------------

def test_certificate_without_encryption_subkey(rig, gpg, tmp_path):
    fpr = gpg.new_key("Signer <s@example.org>", "ed25519", None)
    cert = tmp_path / "signonly.pgp"
    cert.write_bytes(gpg("--export", fpr))
    line = failed(backup(rig, cert), KEY, "encrypt")
    assert fpr[-16:].lower() in line.lower() or str(cert) in line
    no_complete_archive(rig)


def test_certificate_file_missing(rig):
    failed(backup(rig, rig.root / "nocert.pgp"), KEY, "nocert.pgp")
    no_complete_archive(rig)


def test_secret_key_matching_no_recipient(rig, recipes, gpg):
    ulid = rig.backup(b"secret", recipes["gpg"].cert)
    listing = subprocess.run(["gpg", "--batch", "--list-packets"], capture_output=True,
                             env=gpg.env, input=fragments(archive_dir(
                                 rig, ulid, where="freeze"))[0].read_bytes())
    wanted = listing.stdout.decode().split("keyid ")[1].split()[0]
    line = failed(restore_with(rig, ulid, recipes["sq"]), NO_MATCH, wanted)
    assert "no secret key" in line


@pytest.mark.parametrize("name", ["gpg_pw", "sqop_pw"])
def test_wrong_passphrase(rig, recipes, name):
    ulid = rig.backup(b"secret", recipes[name].cert)
    out = rig.root / "out"
    proc = restore_with(rig, ulid, recipes[name], "-o", str(out), passphrase="wrong")
    failed(proc, PASSPHRASE, "passphrase")
    assert not out.exists()


def test_passphrase_needed_but_no_terminal(rig, recipes):
    ulid = rig.backup(b"secret", recipes["gpg_pw"].cert)
    proc = subprocess.run(rig.command("restore", "-v", rig.vault, "-u", ulid, "-k",
                                      str(recipes["gpg_pw"].key)),
                          capture_output=True, start_new_session=True, stdin=subprocess.DEVNULL)
    failed(proc, PASSPHRASE, "pass-fd")


# --- archives ---------------------------------------------------------------------

def test_unknown_ulid(rig, recipes):
    rig.backup(b"x", recipes["sq"].cert)
    rig.run("freeze", "--once", check=True)
    proc = rig.restore("01ARZ3NDEKTSV4RRFFQ69G5FAV", recipes["sq"].key)
    failed(proc, NOT_FOUND, "01ARZ3NDEKTSV4RRFFQ69G5FAV")


@pytest.fixture
def frozen(rig, recipes):
    data = mixed(40000, 31)
    ulid = rig.backup(data, recipes["sq"].cert, "-s", "4KiB", "-C", "none")
    rig.run("freeze", "--once", check=True)
    return rig, ulid, data, archive_dir(rig, ulid)


def restore_fails(rig, recipes, ulid, code, *needles) -> str:
    out = rig.root / "restored"
    line = failed(rig.restore(ulid, recipes["sq"].key, "-o", str(out)), code, *needles)
    assert not out.exists()
    assert [p for p in rig.root.iterdir() if p.name.startswith(".restored")] == []
    return line


def test_missing_fragment(frozen, recipes):
    rig, ulid, data, d = frozen
    (d / "chunk.3").unlink()
    restore_fails(rig, recipes, ulid, FRAGMENT, "chunk.3", "missing")


def test_truncated_fragment(frozen, recipes):
    rig, ulid, data, d = frozen
    p = d / "chunk.4"
    p.write_bytes(p.read_bytes()[:-100])
    restore_fails(rig, recipes, ulid, FRAGMENT, "chunk.4", "truncated")


def test_truncated_last_fragment(frozen, recipes):
    rig, ulid, data, d = frozen
    p = fragments(d)[-1]
    p.write_bytes(p.read_bytes()[:-1])
    restore_fails(rig, recipes, ulid, FRAGMENT, p.name)


@pytest.mark.parametrize("where", [1, 5, -1])
def test_flipped_byte_in_fragment(frozen, recipes, where):
    rig, ulid, data, d = frozen
    p = fragments(d)[where if where < 0 else where - 1]
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    p.write_bytes(raw)
    line = restore_fails(rig, recipes, ulid, INTEGRITY, "not to be trusted")
    assert p.name in line
    # to stdout, the same exit code and message
    failed(rig.restore(ulid, recipes["sq"].key), INTEGRITY, "not to be trusted")


@pytest.mark.parametrize("where", ["clear", "manifest", "last"])
def test_flipped_byte_in_chunk0(frozen, recipes, where):
    rig, ulid, data, d = frozen
    p = d / "chunk.0"
    raw = bytearray(p.read_bytes())
    header_end = raw.index(b"\n", raw.index(b"\n") + 1)
    pos = {"clear": raw.index(b'"size"') + 8, "manifest": (header_end + len(raw)) // 2,
           "last": len(raw) - 1}[where]
    raw[pos] ^= 0x01
    p.write_bytes(raw)
    restore_fails(rig, recipes, ulid, INTEGRITY)


def test_damaged_fragment_then_repaired(frozen, recipes):
    """A damaged copy in the restore queue is dropped, so a later restore refetches it."""
    rig, ulid, data, d = frozen
    p = d / "chunk.2"
    good = p.read_bytes()
    p.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))
    restore_fails(rig, recipes, ulid, INTEGRITY, "not to be trusted")
    p.write_bytes(good)
    assert rig.restore(ulid, recipes["sq"].key, check=True).stdout == data


# --- output and spool -------------------------------------------------------------

@pytest.mark.parametrize("target", ["/proc/cryophile-nonexistent/out", "FILE/out", "DIR"])
def test_output_not_writable(frozen, recipes, target):
    rig, ulid, data, d = frozen
    (rig.root / "afile").write_bytes(b"x")
    (rig.root / "adir").mkdir()
    target = target.replace("FILE", str(rig.root / "afile")).replace("DIR", str(rig.root / "adir"))
    proc = rig.restore(ulid, recipes["sq"].key, "-o", target)
    failed(proc, SPOOL, "output")
    assert (rig.root / "afile").read_bytes() == b"x"
    assert list((rig.root / "adir").iterdir()) == []
    assert [p.name for p in rig.root.iterdir() if ".cryophile-" in p.name] == []


def test_spool_not_writable(rig, recipes):
    (rig.root / "file").write_bytes(b"")
    bad = rig.root / "file" / "spool"
    line = failed(backup(rig, recipes["sq"].cert, pre=["-S", str(bad)]), SPOOL, str(bad))
    assert f"{rig.root / 'file'}: not a directory; move it away or choose another spool" \
        in line.lower()
    proc = rig.run("freeze", "--once", pre=["-S", str(bad)])
    failed(proc, SPOOL, str(bad), "not a directory", "-S DIR")


def test_spool_where_no_directory_can_be_made(rig, recipes):
    """Not "its parent keeps disappearing": the errno, where, and what to do."""
    bad = "/proc/cryophile-nonexistent/spool"
    failed(backup(rig, recipes["sq"].cert, pre=["-S", bad]), SPOOL,
           f"cannot create {bad}", "/proc/cryophile-nonexistent: no such file or directory",
           "makes no new directories: choose another spool (-S DIR)")


@contextlib.contextmanager
def tmpfs(where, options: str):
    """A small tmpfs mounted on ``where`` (made here) for the test's length."""
    where.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                           capture_output=True)
    assert mount.returncode == 0, f"cannot mount a tmpfs (tests run as root): {mount.stderr}"
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_spool_on_a_read_only_filesystem(rig, recipes, tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1M") as ro:
        failed(backup(rig, recipes["sq"].cert, pre=["-S", str(ro / "spool")]), SPOOL,
               f"{ro / 'spool'}: read-only file system", "remount it read-write", "-S DIR")


def test_disk_full(rig, recipes, tmp_path):
    # a bound above the disk's size: nothing waits or freezes before the disk is full
    rig.config.write_text('spool_max = "64MiB"\n' + rig.config.read_text())
    with tmpfs(tmp_path / "small", "size=2M") as small:
        spool = small / "spool"
        proc = backup(rig, recipes["sq"].cert, "-C", "none", "-s", "256KiB",
                      data=os.urandom(10 << 20), pre=["-S", str(spool)])
        failed(proc, DISK_FULL, "no space left", "set spool_max")
        assert list(spool.rglob("chunk.*")) == []
        assert not list((spool / "backup").iterdir())
        # the next freeze leaves nothing behind in freeze/ either
        rig.run("freeze", "--once", pre=["-S", str(spool)], check=True)
        assert list((spool / "freeze").rglob("*")) == []
        assert not (rig.vaults / rig.vault).exists() or \
            list((rig.vaults / rig.vault).rglob("*")) == []
        # and with room again, backups work
        ulid = backup(rig, recipes["sq"].cert, pre=["-S", str(spool)]).stdout.decode().strip()
        assert (spool / "freeze" / rig.vault / ulid / "chunk.0").exists()


# --- tracebacks -------------------------------------------------------------------

def test_debug_shows_traceback(rig, recipes):
    plain = rig.restore("01ARZ3NDEKTSV4RRFFQ69G5FAV", recipes["sq"].key)
    assert plain.returncode == NOT_FOUND and b"Traceback" not in plain.stderr
    debug = rig.run("restore", "-v", rig.vault, "-u", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "-k",
                    str(recipes["sq"].key), input=None, pre=["-d"])
    assert debug.returncode == NOT_FOUND
    assert b"Traceback" in debug.stderr


@pytest.mark.expect_log          # the writer says it sealed the stream incomplete
@pytest.mark.parametrize("output", [False, True])
def test_restore_of_an_archive_sealed_incomplete(rig, recipes, tmp_path, output):
    """A stream the mount sealed incomplete (its writer died) comes back as it
    was written, with a warning first (a `| zfs receive` failing on it may end
    the restore) and exit 14: never exit 0, which a script takes for whole."""
    from cryophile import keys
    from cryophile.ids import BackupId, new_ulid
    from cryophile.pipeline.writer import ArchiveWriter
    from cryophile.spool import Spool
    from tests.test_catalog import _tar_cut_short
    rig.write_config()
    spool = Spool(str(rig.spool))
    spool.ensure()
    bid = BackupId(rig.vault, "", new_ulid())
    data = _tar_cut_short()
    writer = ArchiveWriter(spool, bid, keys.load_certificates([str(recipes["gpg"].cert)]),
                           "lz4", 4096)
    writer.write(data)
    writer.close(incomplete="mark")
    rig.run("freeze", "--once", check=True)
    out = tmp_path / "out.tar"
    proc = rig.restore(bid.ulid, recipes["gpg"].key, *(["-o", str(out)] if output else []))
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 14, err
    warning, error = err.splitlines()
    assert warning.startswith("cryophile: warning: ") and "sealed incomplete" in warning
    assert error.startswith("cryophile: error: ") and "not a whole stream" in error
    assert (out.read_bytes() if output else proc.stdout) == data
    # --latest passes it over, and says so
    failed(rig.run("restore", "-v", rig.vault, "--latest", "-k", str(recipes["gpg"].key),
                   input=None), NOT_FOUND, "no archive sealed", "passed over: 1 incomplete")


@pytest.mark.timeout(60)
def test_ctrl_c_while_the_command_line_is_read(tmp_path):
    """Ctrl-C while a command's module is imported and its options parsed
    (before it begins anything) ends with one line and 130, not a traceback:
    a real SIGINT, delivered from inside the parser."""
    import sys
    script = (
        "import os, signal, sys\n"
        "from cryophile.cli import main\n"
        "real = main.parser\n"
        "def parser(*a):\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    return real(*a)\n"
        "main.parser = parser\n"
        "sys.argv = ['cryophile', '-S', sys.argv[1], 'status']\n"
        "main.run()\n")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "spool")],
                          capture_output=True, timeout=60)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.decode() == "cryophile: error: interrupted\n"


def test_thaw_plan_of_a_prefix_without_archives(rig, recipes):
    """A mistyped prefix is not an empty plan ("nothing to thaw", exit 0)."""
    backup(rig, recipes["gpg"].cert, "-p", "tank")
    rig.run("freeze", "--once", check=True)
    failed(rig.run("thaw", "--plan", f"{rig.vault}/tnak"), NOT_FOUND,
           f"no archive under {rig.vault}/tnak")
    assert rig.run("thaw", "--plan", f"{rig.vault}/tank").returncode == 0
