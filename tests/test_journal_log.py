"""Logging into the journal: when stderr is the stream systemd connected to
journald (JOURNAL_STREAM names its device and inode), each line carries its
syslog priority (sd-daemon(3)) and none of our own timestamps or prefixes."""

import logging
import os
import subprocess
import sys

import pytest

from cryophile import log


def stream_id(path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def test_to_journal_only_for_the_very_stream(tmp_path):
    ours, other = tmp_path / "ours", tmp_path / "other"
    with open(ours, "w") as f:
        other.touch()
        assert log.to_journal(f, {"JOURNAL_STREAM": stream_id(ours)})
        assert not log.to_journal(f, {"JOURNAL_STREAM": stream_id(other)})   # inherited
        assert not log.to_journal(f, {})
        for junk in ("", "garbage", "1:", ":2", "1:2:3", "x:y"):
            assert not log.to_journal(f, {"JOURNAL_STREAM": junk})
    assert not log.to_journal(object(), {"JOURNAL_STREAM": "1:2"})


def record(level: int, msg: str, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("cryophile.freeze", level, __file__, 1, msg, None, exc_info)


@pytest.mark.parametrize("level, prefix", [
    (logging.CRITICAL, "<2>"), (logging.ERROR, "<3>"), (logging.WARNING, "<4>"),
    (logging.INFO, "<6>"), (logging.DEBUG, "<7>"), (log.TRACE, "<7>")])
def test_journal_lines_carry_their_priority(level, prefix):
    text = log.JournalFormatter().format(record(level, "two\nlines"))
    assert text.split("\n")[0].startswith(prefix)
    assert all(line.startswith(prefix) for line in text.split("\n"))
    assert "Z " not in text and "cryophile:" not in text and "\033" not in text


def test_a_traceback_is_prefixed_line_by_line():
    try:
        raise ValueError("boom")
    except ValueError:
        text = log.JournalFormatter().format(record(logging.ERROR, "failed", sys.exc_info()))
    lines = text.split("\n")
    assert lines[0] == "<3>failed" and len(lines) > 3
    assert all(line.startswith("<3>") for line in lines)
    assert lines[-1] == "<3>ValueError: boom"


def run_with_stderr(tmp_path, env: dict) -> str:
    err = tmp_path / "stderr"
    with open(err, "w") as f:
        journal = {"JOURNAL_STREAM": stream_id(err)} if env.pop("journal", False) else {}
        subprocess.run([sys.executable, "-m", "cryophile", "-c", str(tmp_path / "absent.toml"),
                        "status"], stderr=f, stdout=subprocess.DEVNULL, timeout=60,
                       env={**os.environ, "CRYOPHILE_LOG_STYLE": "always", **journal, **env})
    return err.read_text()


def test_a_command_under_systemd_logs_priorities(tmp_path):
    text = run_with_stderr(tmp_path, {"journal": True})
    assert text.startswith("<3>configuration file ") and "does not exist" in text, text
    assert "\033" not in text
    plain = run_with_stderr(tmp_path, {"JOURNAL_STREAM": "1:1"})
    assert plain.startswith("cryophile: \033[31merror: configuration file "), plain
