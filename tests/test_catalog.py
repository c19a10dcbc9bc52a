"""What `ls` says about an archive as it moves through the queues."""

import os

import pytest
import trio
from hypothesis import given, strategies as st

from cryophile import errors, keys, manifest
from cryophile.catalog import list_archives
from cryophile.freeze import Freezer
from cryophile.ids import BackupId, new_ulid
from cryophile.pipeline.writer import ArchiveWriter
from cryophile.spool import Spool
from cryophile.store.base import State
from cryophile.store.local import LocalStore

VAULT = "0b8c3a7e-5a1d-4f7e-9a53-3f1c2d4e5f60"


def states(spool, store):
    return {e.bid.ulid: e.state for e in list_archives(spool, store, VAULT)}


def test_states_from_writing_to_local(tmp_path, recipes):
    spool = Spool(str(tmp_path / "spool"))
    spool.ensure()
    store = LocalStore(str(tmp_path / "vault"))
    recipients = keys.load_certificates([str(recipes["gpg"].cert)])
    bids = [BackupId(VAULT, "tank", new_ulid()) for _ in range(3)]
    writers = [ArchiveWriter(spool, bid, recipients, "none", 4096) for bid in bids]
    for w in writers:
        w.write(os.urandom(20000))
    writers[0].close()
    writers[1].close()
    os.unlink(spool.path("freeze", bids[1], 1))        # as if freeze took it
    got = states(spool, store)
    assert got == {bids[0].ulid: "queued", bids[1].ulid: "freezing", bids[2].ulid: "writing"}

    writers[2].close()
    trio.run(Freezer(spool, lambda v: store, lambda v: "STANDARD",
                     select=lambda b: b != bids[1]).run, True)
    got = states(spool, store)
    assert got[bids[0].ulid] == "local" and got[bids[2].ulid] == "local"
    assert got[bids[1].ulid] == "freezing"
    entry = next(e for e in list_archives(spool, store, VAULT) if e.bid == bids[0])
    assert entry.size == 20000 and entry.fragments >= 5


def test_a_starting_backup_is_never_taken_for_a_dead_one(tmp_path, recipes, monkeypatch):
    """Another process (freeze, a mount) cleaning dead backups at the moment a
    backup creates its directory must not remove it."""
    spool = Spool(str(tmp_path / "spool"))
    spool.ensure()
    recipients = keys.load_certificates([str(recipes["gpg"].cert)])
    bid = BackupId(VAULT, "tank", new_ulid())
    real_open = os.open
    cleaned = []

    def open_and_race(path, *args, **kw):
        if str(path).endswith(".lock"):
            cleaned.extend(Spool(spool.root).clean_dead_backups())
        return real_open(path, *args, **kw)
    monkeypatch.setattr(os, "open", open_and_race)
    writer = ArchiveWriter(spool, bid, recipients, "none", 4096)
    monkeypatch.setattr(os, "open", real_open)
    writer.write(b"x" * 10000)
    writer.close()
    assert cleaned == []
    assert os.path.exists(spool.path("freeze", bid, 0))
    assert not os.path.exists(os.path.join(spool.dir("freeze", bid), "ABANDONED"))


def test_status_shows_the_queues(tmp_path, recipes):
    from tests.clirig import make_rig
    rig = make_rig(tmp_path)
    ulid = rig.backup(os.urandom(50_000), recipes["gpg"].cert, "-s", "16KiB", "-C", "none")
    out = rig.run("status", check=True).stdout.decode()
    freeze = next(line for line in out.splitlines() if line.startswith("freeze "))
    assert freeze.split()[1:3] == ["1", "4"], out
    assert f"{ulid}: 4 fragment(s), sealed" in out
    assert "thaw daemon: not running" in out and "freeze daemon: not running" in out
    rig.run("freeze", "--once", check=True)
    out = rig.run("status", check=True).stdout.decode()
    assert next(line for line in out.splitlines() if line.startswith("freeze ")).split()[1] == "0"


def test_a_sealed_backup_is_never_taken_for_a_dead_one(tmp_path, recipes):
    """A backup directory seen without its lock after chunk.0 was queued (it
    is being removed) belongs to a complete archive: nothing may be dropped."""
    spool = Spool(str(tmp_path / "spool"))
    spool.ensure()
    recipients = keys.load_certificates([str(recipes["gpg"].cert)])
    bid = BackupId(VAULT, "", new_ulid())
    writer = ArchiveWriter(spool, bid, recipients, "none", 4096)
    writer.write(os.urandom(10000))
    writer.close()
    os.makedirs(spool.dir("backup", bid))             # as if caught mid-removal
    assert spool.clean_dead_backups() == []
    assert not os.path.exists(spool.dir("backup", bid))
    assert os.path.exists(spool.path("freeze", bid, 0))
    assert not os.path.exists(os.path.join(spool.dir("freeze", bid), "ABANDONED"))


def _tar_cut_short() -> bytes:
    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("file")
        info.size = 30000
        tf.addfile(info, io.BytesIO(os.urandom(30000)))
    return buf.getvalue()[:20000]


@pytest.mark.expect_log
def test_a_stream_cut_short_is_sealed_incomplete_or_refused(tmp_path, recipes):
    """The writer's two answers to a stream that did not end as its kind must:
    the mount seals it marked incomplete, the CLI abandons it."""
    spool = Spool(str(tmp_path / "spool"))
    spool.ensure()
    store = LocalStore(str(tmp_path / "vault"))
    recipients = keys.load_certificates([str(recipes["gpg"].cert)])
    marked, refused, whole = (BackupId(VAULT, "tank", new_ulid()) for _ in range(3))
    writer = ArchiveWriter(spool, marked, recipients, "lz4", 4096)
    writer.write(_tar_cut_short())
    writer.close(incomplete="mark")
    assert (writer.stream.kind, writer.stream.complete) == ("tar", False)
    clear = manifest.load(spool.path("freeze", marked, 0))[0]
    assert clear.stream == {"kind": "tar", "complete": False} and not clear.complete

    writer = ArchiveWriter(spool, refused, recipients, "lz4", 4096)
    writer.write(_tar_cut_short())
    with pytest.raises(errors.IncompleteStreamError, match="tar stream that is not whole"):
        writer.close(incomplete="refuse")
    writer.abort()                                   # what callers do on any error: harmless
    assert spool.fragments("freeze", refused) == []

    writer = ArchiveWriter(spool, whole, recipients, "lz4", 4096)
    writer.write(b"not a stream of a known kind")
    writer.close(incomplete="refuse")
    assert states(spool, store) == {marked.ulid: "incomplete", refused.ulid: "abandoned",
                                    whole.ulid: "queued"}
    trio.run(Freezer(spool, lambda v: store, lambda v: "STANDARD").run, True)
    got = {e.bid.ulid: (e.state, e.kind) for e in list_archives(spool, store, VAULT)}
    assert got == {marked.ulid: ("incomplete", "tar"), whole.ulid: ("local", "unknown")}


@pytest.mark.expect_log
def test_a_dead_backup_is_listed_dead_then_abandoned(tmp_path, recipes):
    spool = Spool(str(tmp_path / "spool"))
    spool.ensure()
    store = LocalStore(str(tmp_path / "vault"))
    recipients = keys.load_certificates([str(recipes["gpg"].cert)])
    bid = BackupId(VAULT, "", new_ulid())
    writer = ArchiveWriter(spool, bid, recipients, "none", 4096)
    writer.write(os.urandom(20000))
    assert states(spool, store) == {bid.ulid: "writing"}
    writer.lock.release()                            # its process died
    assert states(spool, store) == {bid.ulid: "dead"}
    assert spool.clean_dead_backups() == [bid]
    assert states(spool, store) == {bid.ulid: "abandoned"}


@pytest.mark.timeout(120)
def test_a_killed_backup_shows_dead_in_ls_and_status(tmp_path, recipes):
    import signal
    import subprocess
    import time
    from tests.clirig import make_rig
    rig = make_rig(tmp_path)
    proc = subprocess.Popen(rig.command("backup", "-v", rig.vault, "-k",
                                        str(recipes["gpg"].cert), "-s", "4KiB", "-C", "none"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        proc.stdin.write(os.urandom(3 << 20))
        proc.stdin.flush()
        backup_dir = rig.spool / "backup" / rig.vault
        for _ in range(600):
            if backup_dir.exists() and list(backup_dir.iterdir()):
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()
        proc.stderr.close()
    ls = rig.run("ls", rig.vault, check=True).stdout.decode()
    assert " dead " in ls and "writing" not in ls, ls
    status = rig.run("status", check=True).stdout.decode()
    assert ", dead" in status, status


@given(st.lists(st.sampled_from(list(State)), min_size=1, max_size=6),
       st.sampled_from(["GLACIER", "DEEP_ARCHIVE"]))
def test_a_listed_state_is_judged_over_every_fragment(states, sclass):
    """With restore status in the listing (Amazon S3): thawed only when every
    fragment is readable, thawing while any is being restored, else frozen."""
    import types
    from cryophile.catalog import _listed_state
    from cryophile.store.base import ObjectInfo
    clear = types.SimpleNamespace(fragments=[types.SimpleNamespace(size=10) for _ in states])
    objs = {n: ObjectInfo(f"chunk.{n}", 10, s, sclass) for n, s in enumerate(states, 1)}
    objs[0] = ObjectInfo("chunk.0", 5, State.AVAILABLE, "STANDARD")
    expected = ("thawed" if set(states) == {State.AVAILABLE} else
                "thawing" if State.RESTORING in states else "frozen")
    assert _listed_state(objs, clear) == (expected, sclass)


def test_load_sized_counts_every_fragment_and_the_mark(tmp_path, recipes):
    spool = Spool(str(tmp_path / "spool"))
    spool.ensure()
    bid = BackupId(VAULT, "tank", new_ulid())
    writer = ArchiveWriter(spool, bid, keys.load_certificates([str(recipes["gpg"].cert)]),
                           "none", 4096)
    writer.write(os.urandom(20000))
    writer.close()
    clear, stored = manifest.load_sized(spool.path("freeze", bid, 0))
    assert clear == manifest.load(spool.path("freeze", bid, 0))[0]
    assert stored == sum(os.path.getsize(spool.path("freeze", bid, n))
                         for n in spool.fragments("freeze", bid))
