"""What `ls` says about an archive as it moves through the queues."""

import os

import trio

from cryophile import keys
from cryophile.catalog import list_archives
from cryophile.freeze import Freezer
from cryophile.ids import BackupId, new_ulid
from cryophile.pipeline.writer import ArchiveWriter
from cryophile.spool import Spool
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
