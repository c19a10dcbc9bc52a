"""Progress of thaws waiting for the vault: the line, and when it is said.
Pure pieces with a fake clock; then `cryophile restore` and `cryophile thaw`
against the moto server behind the fault proxy, with restores that take a
while."""

from __future__ import annotations

import logging
import os
import re

import pytest

from cryophile import thawprogress
from cryophile.ids import BackupId
from cryophile.thawprogress import Tracker, ago, message

BID = BackupId("0b8c3a7e-5a1d-4f7e-9a53-3f1c2d4e5f60", "tank", "01JDQ3V7P5X8M2K4R6T9W0Y1Z2")
H = 3600


def test_the_line():
    assert message(BID, 3, 120, 0, 2 * H + 5, "GLACIER", "Standard") == (
        f"{BID}: 3 of 120 fragments restored, requested 2 h ago "
        "(Standard, typically 3–5 h)")
    assert message(BID, 0, 1, 100, 100, "GLACIER", "Expedited").endswith(
        "0 of 1 fragment restored, requested just now (Expedited, typically 1–5 min)")
    # Deep Archive has no Expedited tier: the store asks for Standard
    assert message(BID, 0, 2, 0, 60, "DEEP_ARCHIVE", "Expedited").endswith(
        "requested 60 s ago (Standard, typically up to 12 h)")
    assert message(BID, 1, 2, 0, 6 * H, "GLACIER", "Standard").endswith(
        "(Standard, typically 3–5 h; longer than usual)")
    assert "longer" not in message(BID, 2, 2, 0, 6 * H, "GLACIER", "Standard")


@pytest.mark.parametrize("seconds, text", [
    (0, "just now"), (9, "just now"), (10, "10 s ago"), (89, "89 s ago"), (90, "1 min ago"),
    (89 * 60, "89 min ago"), (90 * 60, "1 h ago"), (47 * H + 59, "47 h ago"),
    (48 * H, "2 days ago"), (-5, "just now")])
def test_ago(seconds, text):
    assert ago(seconds) == text


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tracker(every: float = 180.0) -> tuple[Tracker, Clock]:
    clock = Clock()
    return Tracker(logging.getLogger("test"), every, clock), clock


def test_said_at_once_then_while_waiting_at_least_every_interval_not_every_poll():
    t, clock = tracker()
    t.requested([(BID, n) for n in (1, 2, 3)])
    assert t.lines() == [], "nothing asked of the vault yet"
    for n in (1, 2, 3):
        t.restoring(BID, n, "GLACIER", "Standard")
    assert t.lines() == [], "a store that restores at once needs no word"
    t.wait(BID, +1)
    (line,) = t.lines()
    assert line.endswith("0 of 3 fragments restored, requested just now "
                         "(Standard, typically 3–5 h)")
    for _ in range(17):                 # polls: no news, no lines
        clock.now += 10
        t.requested([(BID, 1)])
        t.restoring(BID, 1, "GLACIER", "Standard")
        assert t.lines() == []
    clock.now += 10
    (line,) = t.lines()
    assert "0 of 3 fragments restored, requested 3 min ago" in line
    t.restored(BID, 1)           # fragment 2 still being restored: a task waits for it
    assert t.lines() == [], "a change right after a line waits a little"
    clock.now += 30
    (line,) = t.lines()
    assert "1 of 3 fragments restored, requested 3 min ago" in line


def test_changes_are_said_at_most_every_sixth_of_the_interval_and_the_last_always():
    t, clock = tracker(60.0)
    t.requested([(BID, n) for n in (1, 2, 3)])
    for n in (1, 2, 3):
        t.restoring(BID, n, "GLACIER", "Bulk")
    t.wait(BID, +1)
    assert len(t.lines()) == 1
    t.restored(BID, 1)
    assert t.lines() == [], "too soon after the last line"
    clock.now += 10
    assert "1 of 3" in t.lines()[0]
    t.wait(BID, -1)
    t.restored(BID, 2)
    clock.now += 10
    assert t.lines() == [], "nothing waits: fragments arrive as fast as they are fetched"
    t.restored(BID, 3)
    (line,) = t.lines()
    assert "3 of 3 fragments restored" in line and "longer" not in line
    clock.now += 1000
    assert t.lines() == [], "nothing changed, nobody waiting"


def test_an_archive_without_requests_for_an_interval_is_forgotten():
    t, clock = tracker(60.0)
    t.requested([(BID, 1)])
    t.restoring(BID, 1, "GLACIER", "Standard")
    t.lines()
    clock.now += 30
    t.requested([], busy={BID})         # a task still serves it
    clock.now += 50
    t.requested([])
    assert BID in t.archives
    clock.now += 61
    t.requested([])
    assert BID not in t.archives


def test_every_is_shorter_on_a_terminal(monkeypatch):
    class Tty:
        def isatty(self):
            return True
    monkeypatch.setattr(thawprogress.sys, "stderr", Tty())
    assert thawprogress.every() == thawprogress.EVERY_TERMINAL
    monkeypatch.setattr(thawprogress.sys, "stderr", None)
    assert thawprogress.every() == thawprogress.EVERY_LOG


# --- through the commands ------------------------------------------------------

@pytest.fixture(scope="module")
def key(tmp_path_factory):
    from tests.keyrecipes import sqop_recipe
    return sqop_recipe(tmp_path_factory.mktemp("progkey"), "progress")


def frozen(rig, key, nfrags: int) -> tuple[str, bytes]:
    data = os.urandom((nfrags - 1) * 65536 + 100)
    ulid = rig.backup(data, key.cert, "-s", "64KiB", "-C", "none")
    rig.run("freeze", "--once", check=True)
    return ulid, data


PROGRESS = re.compile(r"(\d+) of (\d+) fragments? restored, requested (just now|\d+ s ago) "
                      r"\(Standard, typically 3–5 h\)")


@pytest.mark.timeout(300)
def test_restore_and_thaw_say_how_far_the_vault_is(tmp_path, key, s3proxy, bucket):
    from tests.test_s3_e2e import S3Rig
    rig = S3Rig(tmp_path, bucket, s3proxy.endpoint)
    ulid, data = frozen(rig, key, 3)
    s3proxy.restore_delay = 2.0
    proc = rig.restore(ulid, key.key, check=True)
    assert proc.stdout == data
    said = [(int(a), int(b)) for a, b, _ in PROGRESS.findall(proc.stderr.decode())]
    assert said[0] == (0, 3) and said[-1] == (3, 3), proc.stderr.decode()

    ulid, _ = frozen(rig, key, 2)
    (rig.spool / "thaw" / rig.vault / ulid).mkdir(parents=True)
    for n in (1, 2):
        (rig.spool / "thaw" / rig.vault / ulid / f"chunk.{n}").touch()
    proc = rig.run("thaw", "--once", check=True)
    said = [(int(a), int(b)) for a, b, _ in PROGRESS.findall(proc.stderr.decode())]
    assert said[0] == (0, 2) and said[-1] == (2, 2), proc.stderr.decode()
    assert all(ulid in line for line in proc.stderr.decode().splitlines()
               if "restored, requested" in line)


class Plan:
    def __init__(self, classes, tier="Standard"):
        self.thaw = [type("Item", (), {"storage_class": c})() for c in classes]
        self.restoring, self.tier = [], tier


def test_a_restore_waiting_for_another_thaw_says_what_it_knows():
    """Who holds the thaw, and what has arrived: not what the vault has restored,
    which only the holder sees."""
    clock = Clock()
    w = thawprogress.Waiting(logging.getLogger("test"), BID, Plan(["GLACIER"] * 3), 3, 60.0,
                             clock, holder=lambda: "pid 42 (cryophile thaw)")
    assert w.line(lambda: 0) == (
        f"{BID}: waiting for the thaw held by pid 42 (cryophile thaw): 0 of 3 fragments "
        "here, restore started just now (Standard, typically 3–5 h)")
    clock.now += 5
    assert w.line(lambda: 0) is None, "not at every poll"
    clock.now += 5
    assert "1 of 3 fragments here" in w.line(lambda: 1)
    clock.now += 59
    assert w.line(lambda: 1) is None
    clock.now += 1
    assert w.line(lambda: 1).endswith("1 of 3 fragments here, restore started 70 s ago "
                                      "(Standard, typically 3–5 h)")
    counted = []

    def here() -> int:
        counted.append(clock.now)
        return 1
    clock.now += 2
    assert w.line(here) is None and w.line(here) is None
    assert counted == [clock.now], "counted at most every every/60 seconds"
    silent = thawprogress.Waiting(logging.getLogger("test"), BID, Plan([]), 3, 60.0, clock)
    assert silent.line(lambda: 0) is None, "nothing to thaw: nothing to wait for"


WAITING = re.compile(r"waiting for the thaw held by pid (\d+) \(cryophile [^)]* thaw\): "
                     r"(\d+) of (\d+) fragments? here, restore started (?:just now|\d+ s ago) "
                     r"\(Standard, typically 3–5 h\)")


@pytest.mark.timeout(300)
def test_a_restore_served_by_the_thaw_service_says_how_far_it_is(tmp_path, key, s3proxy,
                                                                  bucket):
    from tests.test_s3_e2e import S3Rig
    rig = S3Rig(tmp_path, bucket, s3proxy.endpoint)
    ulid, data = frozen(rig, key, 3)
    s3proxy.restore_delay = 2.0
    service = rig.popen("thaw")
    try:
        proc = rig.restore(ulid, key.key, check=True)
    finally:
        service.terminate()
        _, service_err = service.communicate(timeout=60)
    assert service.returncode == 0, service_err
    assert proc.stdout == data
    err = proc.stderr.decode()
    assert "waiting for the running `cryophile thaw`" in err, err
    said = [(int(pid), int(a), int(b)) for pid, a, b in WAITING.findall(err)]
    assert said and said[0] == (service.pid, 0, 3), err
    assert not PROGRESS.findall(err), "only the thaw's holder knows what the vault restored"
    said = [(int(a), int(b)) for a, b, _ in PROGRESS.findall(service_err.decode())]
    assert said[0] == (0, 3) and said[-1] == (3, 3), service_err
