"""The command line itself: global options anywhere, a closed pipe ends quietly."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest
from hypothesis import given, strategies as st

from cryophile.cli import main as cli_main
from cryophile.cli.common import positive_int

from tests.clirig import make_rig
from tests.test_cli_roundtrip import mixed

OUTPUT_CLOSED = 141       # 128 + SIGPIPE, as a shell reports `cmd | head`


@pytest.fixture
def rig(tmp_path):
    return make_rig(tmp_path)


def cryophile(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cryophile", *args], capture_output=True,
                          env={**os.environ, "CRYOPHILE_LOG_STYLE": "never"}, timeout=120, **kw)


def test_global_options_after_the_command(rig):
    before = cryophile("-S", str(rig.spool), "-c", str(rig.config), "status")
    after = cryophile("status", "-S", str(rig.spool), "-c", str(rig.config))
    assert before.returncode == after.returncode == 0, after.stderr
    assert after.stdout == before.stdout and str(rig.spool).encode() in after.stdout


def test_after_the_command_wins_and_counts_add_up(rig, tmp_path, recipes):
    other = tmp_path / "other"
    proc = cryophile("-S", "/nonexistent/spool", "-c", str(rig.config), "status",
                     "-S", str(other))
    assert proc.returncode == 0, proc.stderr
    assert str(other).encode() in proc.stdout
    unknown = ["restore", "-v", rig.vault, "-u", "01ARZ3NDEKTSV4RRFFQ69G5FAV",
               "-k", str(recipes["sq"].key)]
    debug = cryophile("-S", str(rig.spool), *unknown, "-c", str(rig.config), "-d")
    assert debug.returncode == 7 and b"Traceback" in debug.stderr    # -d after the command
    rig.backup(b"x", recipes["sq"].cert)
    quiet = cryophile("freeze", "--once", "-q", "-S", str(rig.spool), "-c", str(rig.config))
    assert quiet.returncode == 0 and quiet.stderr == b""              # no "frozen …"
    rig.backup(b"x", recipes["sq"].cert)
    both = cryophile("-q", "freeze", "--once", "-d", "-S", str(rig.spool), "-c", str(rig.config))
    assert both.returncode == 0 and b"frozen" in both.stderr          # -q -d: the default


@given(st.text(max_size=12) | st.integers(-10**20, 10**20).map(str))
def test_positive_int_takes_whole_numbers_of_one_or_more(text):
    try:
        n = int(text)
    except ValueError:
        n = None
    if n is not None and n >= 1:
        assert positive_int(text) == n
    else:
        with pytest.raises(argparse.ArgumentTypeError, match="whole number of 1 or more"):
            positive_int(text)


@pytest.mark.parametrize("args", [["prune", "V", "--keep-daily", "0"],
                                  ["thaw", "--plan", "V", "--days", "x"],
                                  ["restore", "V/P/01ARZ3NDEKTSV4RRFFQ69G5FAV", "--days", "-1"]])
def test_counts_below_one_are_usage_errors(args):
    proc = cryophile(*args)
    assert proc.returncode == 2, proc.stderr
    assert b"whole number of 1 or more" in proc.stderr and b"Traceback" not in proc.stderr


@pytest.mark.parametrize("args", [["restore", "-v", "V", "--before", "garbage"],
                                  ["ls", "--since", "garbage"], ["ls", "--until", "2026-13-01"]])
def test_bad_times_are_usage_errors(args):
    proc = cryophile(*args)
    assert proc.returncode == 2, proc.stderr
    assert b"is not ISO 8601" in proc.stderr and b"Traceback" not in proc.stderr


def test_a_negative_pass_fd_is_a_usage_error(rig, recipes):
    ulid = rig.backup(b"x", recipes["sq_pw"].cert)
    proc = rig.restore(ulid, recipes["sq_pw"].key, "-P", "-1")
    assert proc.returncode == 2 and b"Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.decode().splitlines() == [
        "cryophile: error: --pass-fd -1: a file descriptor is 0 or more"]


def test_options_given_only_before_survive_the_command(rig):
    proc = cryophile("-q", "-c", str(rig.config), "status")
    assert proc.returncode == 0, proc.stderr
    assert str(rig.spool).encode() in proc.stdout        # the configuration's spool


def test_global_options_after_the_restore_target(rig, recipes, tmp_path):
    ulid = rig.backup(b"x", recipes["sq"].cert)
    target = ["restore", f"{rig.vault}/{ulid}", "-k", str(recipes["sq"].key)]
    debug = rig.run(*target, "-d", "-o", str(tmp_path / "a"), check=True)
    assert f"restored {rig.vault}/{ulid}: 1 bytes" in debug.stderr.decode()
    quiet = rig.run(*target, "-q", "-o", str(tmp_path / "b"), check=True, pre=["-d"])
    assert quiet.stderr == b""                  # -d before, -q after the target: the default
    logged = tmp_path / "restore.log"
    proc = rig.run(*target, "-o", str(tmp_path / "c"), "--log-file", str(logged), "-d", "-d",
                   check=True)
    assert proc.stderr == b"" and f"restored {rig.vault}/{ulid}" in logged.read_text()
    assert (tmp_path / "a").read_bytes() == (tmp_path / "c").read_bytes() == b"x"


# the words each command needs before the global options can come last
LEAST = {"backup": ["-v", "V"], "thaw": ["--plan", "V"], "restore": ["V/P/01ARZ3NDEKTSV4RRFFQ69G5FAV"],
         "ls": ["V"], "chain": ["V/P/01ARZ3NDEKTSV4RRFFQ69G5FAV"],
         "rm": ["V/P/01ARZ3NDEKTSV4RRFFQ69G5FAV"], "prune": ["V"], "check": ["V"]}


@pytest.mark.parametrize("command", list(cli_main.COMMANDS))
def test_every_command_takes_global_options_last(command):
    args = cli_main.parser().parse_args(
        [command, *LEAST.get(command, []), "-d", "-q", "-q", "--log-file", "L", "-S", "S"])
    if getattr(args, "prepare", None):
        args.prepare(args)
    assert (args.debug_after, args.quiet_after, args.log_file, args.spool) == (1, 2, "L", "S")


def closed_pipe_run(cmd: list[str]) -> subprocess.CompletedProcess:
    """Run with stdout a pipe whose reader is already gone."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run(cmd, stdout=w, stderr=subprocess.PIPE, timeout=120,
                              env={**os.environ, "CRYOPHILE_LOG_STYLE": "never"})
    finally:
        os.close(w)


def test_ls_into_a_closed_pipe_ends_quietly(rig, recipes):
    rig.backup(b"x", recipes["sq"].cert)
    proc = closed_pipe_run(rig.command("ls"))
    assert (proc.returncode, proc.stderr) == (OUTPUT_CLOSED, b"")


def test_restore_into_a_closed_pipe_ends_quietly(rig, recipes):
    ulid = rig.backup(mixed(300000, 5), recipes["sq"].cert, "-s", "64KiB")
    proc = closed_pipe_run(rig.command("restore", "-v", rig.vault, "-u", ulid, "-k",
                                       str(recipes["sq"].key)))
    assert (proc.returncode, proc.stderr) == (OUTPUT_CLOSED, b"")


def test_restore_piped_to_head(rig, recipes):
    data = mixed(3 << 20, 9)
    ulid = rig.backup(data, recipes["sq"].cert)
    cmd = " ".join(rig.command("restore", "-v", rig.vault, "-u", ulid, "-k",
                               str(recipes["sq"].key)))
    proc = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd} | head -c 10"],
                          capture_output=True, timeout=120,
                          env={**os.environ, "CRYOPHILE_LOG_STYLE": "never"})
    assert proc.stdout == data[:10]
    assert (proc.returncode, proc.stderr) == (OUTPUT_CLOSED, b"")


# --- where secret keys are ---------------------------------------------------------

def test_backup_with_a_secret_key_warns_and_works(rig, recipes):
    proc = rig.run("backup", "-v", rig.vault, "-k", str(recipes["sq"].key), input=b"x",
                   check=True)
    assert proc.stderr.decode().splitlines() == [
        f"cryophile: warning: {recipes['sq'].key} holds a secret key: backups need only the "
        "certificate (sq key extract-cert, gpg --export); keep the secret key off the backup "
        "host"]
    ulid = proc.stdout.decode().strip()
    assert rig.restore(ulid, recipes["sq"].key, check=True).stdout == b"x"


def test_restore_with_a_world_readable_key_warns(rig, recipes, tmp_path):
    ulid = rig.backup(b"x", recipes["sq"].cert)
    key = tmp_path / "open.key"
    key.write_bytes(recipes["sq"].key.read_bytes())
    key.chmod(0o644)
    proc = rig.restore(ulid, key, check=True)
    assert proc.stdout == b"x"
    assert proc.stderr.decode().splitlines() == [
        f"cryophile: warning: secret key file {key} is readable by every user (mode 0644): "
        f"chmod 600 {key}"]


def test_a_run_imports_only_its_command():
    """The top-level --help of a run that builds one command (the others stand
    in) is the same as with every command built; the stand-ins' help is the
    commands' own."""
    whole = cli_main.parser()
    for name in cli_main.COMMANDS:
        one = cli_main.parser(["-d", name, "--help"])
        assert one.format_help() == whole.format_help(), name
    code = ("import sys; from cryophile.cli import main; main.parser(['backup']); "
            "print(sorted(m for m in sys.modules if m.startswith(('boto3', 'trio', 'shtab', "
            "'cryophile.cli.'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True).stdout
    assert eval(loaded) == ["cryophile.cli.backup", "cryophile.cli.common", "cryophile.cli.main"]


@pytest.mark.parametrize("word", ["--version", "--help"])
def test_version_and_help_import_no_command(word):
    """They print and exit while parsing: no command module, and nothing of
    trio, boto3, pgpy or logging's set-up, is worth importing for them."""
    code = ("import sys; from cryophile.cli import main\n"
            f"try: main.main([{word!r}])\n"
            "except SystemExit: pass\n"
            "print(sorted(m for m in sys.modules if m.startswith(('boto', 'trio', 'pgpy', "
            "'tqdm', 'logging', 'cryophile'))), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert eval(proc.stderr) == ["cryophile", "cryophile.cli", "cryophile.cli.main",
                                 "cryophile.errors", "cryophile.options"]
    assert proc.stdout.startswith("cryophile " if word == "--version" else "usage: cryophile")


def test_completion_script_covers_every_command():
    proc = cryophile("--print-completion", "bash")
    assert proc.returncode == 0, proc.stderr
    for name in cli_main.COMMANDS:
        assert name.encode() in proc.stdout
    assert b"--fragment-size" in proc.stdout and b"--keep-within" in proc.stdout
