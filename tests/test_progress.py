"""Progress bars: on a terminal only, never with -q, fed by the stores' meters."""

import io
import logging
import os

import pytest

from cryophile import log, progress, throttle


@pytest.fixture
def tty():
    master, slave = os.openpty()
    stream = os.fdopen(slave, "w", encoding="utf-8")
    yield stream, master
    stream.close()
    os.close(master)


def screen(master: int) -> str:
    os.set_blocking(master, False)
    out = b""
    try:
        while True:
            out += os.read(master, 65536)
    except (BlockingIOError, OSError):
        pass
    return out.decode(errors="replace")


def test_no_bar_on_a_pipe_or_with_quiet(tty, monkeypatch):
    stream, master = tty
    assert not progress.Bar("x", 10, stream=io.StringIO()).shown
    monkeypatch.setattr(progress, "quiet", True)
    assert not progress.Bar("x", 10, stream=stream).shown
    monkeypatch.setattr(progress, "quiet", False)
    bar = progress.Bar("restore", 4 << 20, stream=stream)
    assert bar.shown and bar in progress.ACTIVE
    bar.add(1 << 20)
    bar.add(3 << 20)
    bar.finish()
    bar.finish()                                # twice: harmless
    assert bar not in progress.ACTIVE
    assert "restore: 100%" in screen(master)


def test_transfers_follow_the_meters_and_the_total_is_a_floor(tty, monkeypatch):
    stream, master = tty
    monkeypatch.setattr(progress, "showing", lambda stream=None: True)
    monkeypatch.setattr("sys.stderr", stream)
    bar = progress.Transfers("thaw", "download")
    assert bar.add in throttle.METERS["download"]
    bar.grow(1000)
    throttle.downloaded(600)
    throttle.downloaded(600)                    # more than announced
    assert (bar.tqdm.n, bar.tqdm.total) == (1200, 1200)
    bar.finish()
    assert throttle.METERS["download"] == []
    throttle.downloaded(10)                     # nobody listens: fine
    assert "thaw: 100%" in screen(master)


def test_a_paced_upload_is_metered_once(monkeypatch):
    seen = []
    monkeypatch.setitem(throttle.METERS, "upload", [seen.append])
    throttle.configure(None, None)
    body = throttle.paced_upload(io.BytesIO(b"x" * 1000))
    body.read()
    body.seek(0)
    body.read(10)
    assert sum(seen) == 1000


def test_a_log_line_clears_the_bar_first(tty, monkeypatch):
    stream, master = tty
    monkeypatch.setattr(progress, "quiet", False)
    handler = log._StreamHandler(stream)
    handler.setFormatter(log.Formatter("cryophile", False))
    bar = progress.Bar("freeze", 100, stream=stream)
    try:
        bar.add(50)
        screen(master)
        handler.emit(logging.LogRecord("cryophile", logging.INFO, __file__, 1, "frozen x",
                                       None, None))
        stream.flush()
        text = screen(master)
        # the bar is wiped, the line written, the bar drawn again after it
        assert text.index("cryophile: frozen x") < text.rindex("freeze:  50%"), text
    finally:
        bar.finish()
