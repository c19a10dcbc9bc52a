"""Behaviour on a terminal: progress on stderr, a passphrase prompt, and no
binary output to a terminal.  `script` gives the command a pseudo-terminal."""

import os
import re
import shlex
import subprocess

from tests.clirig import make_rig
from tests.keyrecipes import PASSWORD


def on_tty(cmd: list[str], answer: bytes = b"", after: bytes = b"") -> tuple[int, str]:
    """Run ``cmd`` on a terminal; type ``answer`` once the screen shows ``after``
    (typing earlier would be flushed by the password prompt)."""
    line = " ".join(shlex.quote(c) for c in cmd)
    proc = subprocess.Popen(["script", "-qec", line, "/dev/null"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, bufsize=0,
                            env={**os.environ, "CRYOPHILE_LOG_STYLE": "never"})
    screen = b""
    if answer:
        while after not in screen:
            block = proc.stdout.read(4096)
            assert block, f"the prompt never came: {screen!r}"
            screen += block
        proc.stdin.write(answer)
    rest, _ = proc.communicate(timeout=120)
    return proc.returncode, (screen + rest).decode(errors="replace")


def test_progress_shows_on_a_terminal_only(tmp_path, recipes):
    rig = make_rig(tmp_path)
    data = tmp_path / "data"
    data.write_bytes(os.urandom(3 << 20))
    code, screen = on_tty(rig.command("backup", "-v", rig.vault, "-k", str(recipes["gpg"].cert),
                                      "-i", str(data)))
    assert code == 0, screen
    assert "backup: 100%" in screen and "3.00M/3.00M" in screen    # a file: its size is known
    line = " ".join(shlex.quote(c) for c in rig.command("backup", "-v", rig.vault, "-k",
                                                         str(recipes["gpg"].cert)))
    code, screen = on_tty(["sh", "-c", f"cat {shlex.quote(str(data))} | {line}"])
    assert code == 0, screen
    assert "backup: 3.00MiB" in screen and "%" not in screen    # a pipe: no total
    piped = rig.run("backup", "-v", rig.vault, "-k", str(recipes["gpg"].cert), "-i", str(data))
    assert piped.returncode == 0 and piped.stderr == b""


def test_restore_refuses_a_terminal_and_asks_for_the_passphrase(tmp_path, recipes):
    rig = make_rig(tmp_path)
    recipe = recipes["gpg_pw"]
    ulid = rig.backup(b"secret data", recipe.cert)
    code, screen = on_tty(rig.command("restore", "-v", rig.vault, "-u", ulid, "-k",
                                      str(recipe.key)))
    assert code == 2 and "refusing to write an archive to a terminal" in screen
    out = tmp_path / "out"
    code, screen = on_tty(rig.command("restore", "-v", rig.vault, "-u", ulid, "-k",
                                      str(recipe.key), "-o", str(out)),
                          answer=f"{PASSWORD}\n".encode(), after=b"Passphrase for")
    assert code == 0, screen
    assert "Passphrase for" in screen
    assert out.read_bytes() == b"secret data"


def test_backup_refuses_to_read_a_terminal(tmp_path, recipes):
    rig = make_rig(tmp_path)
    code, screen = on_tty(rig.command("backup", "-v", rig.vault, "-k", str(recipes["gpg"].cert)))
    assert code == 2 and "refusing to read a backup from a terminal" in screen
    assert not list(rig.spool.glob("freeze/**/chunk.0"))


def test_bars_with_percentage_for_restore_freeze_and_thaw_on_a_terminal_only(tmp_path, recipes):
    rig = make_rig(tmp_path)
    data = os.urandom(3 << 20)
    ulid = rig.backup(data, recipes["gpg"].cert, "-s", "1MiB")
    code, screen = on_tty(rig.command("freeze", "--once"))
    assert code == 0, screen
    assert re.search(rf"freeze {ulid}: 100%\|.*\| 3\.\d\dM/3\.\d\dM \[", screen), screen

    out = tmp_path / "out"
    code, screen = on_tty(rig.command("restore", "-v", rig.vault, "-u", ulid, "-k",
                                      str(recipes["gpg"].key), "-o", str(out)))
    assert code == 0, screen
    assert re.search(r"restore: 100%\|.*\| 3\.00M/3\.00M \[\d\d:\d\d<", screen), screen
    assert out.read_bytes() == data
    out.unlink()
    code, screen = on_tty(rig.command("restore", "-v", rig.vault, "-u", ulid, "-k",
                                      str(recipes["gpg"].key), "-o", str(out), pre=("-q",)))
    assert code == 0 and "%" not in screen and "restore" not in screen, screen
    out.unlink()
    piped = rig.run("restore", "-v", rig.vault, "-u", ulid, "-k", str(recipes["gpg"].key),
                    "-o", str(out))
    assert piped.returncode == 0 and piped.stderr == b""

    for n in (1, 2):
        request = rig.spool / "thaw" / rig.vault / ulid / f"chunk.{n}"
        request.parent.mkdir(parents=True, exist_ok=True)
        request.touch()
    code, screen = on_tty(rig.command("thaw", "--once"))
    assert code == 0, screen
    assert re.search(r"thaw: 100%\|.*\| 2\.\d\dM/2\.\d\dM \[", screen), screen
    assert len(list((rig.spool / "restore").rglob("chunk.[12]"))) == 2


def test_check_read_data_shows_progress_on_a_terminal(tmp_path, recipes):
    rig = make_rig(tmp_path)
    ulid = rig.backup(os.urandom(3 << 20), recipes["gpg"].cert, "-s", "1MiB")
    rig.run("freeze", "--once", check=True)
    code, screen = on_tty(rig.command("check", f"{rig.vault}/{ulid}", "--read-data"))
    assert code == 0, screen
    assert "check: 100%" in screen, screen
    piped = rig.run("check", rig.vault, "--read-data")
    assert piped.returncode == 0 and "check:" not in piped.stderr.decode()
