"""ls shows what it can: a damaged chunk.0, thaw failures, thaws in progress."""

from __future__ import annotations

import json
import os

import pytest

from tests.clirig import archive_dir, make_rig

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def rig(tmp_path):
    return make_rig(tmp_path)


def damage_manifest(mark) -> None:
    """Flip a byte inside the encrypted manifest (the clear part stays readable)."""
    data = bytearray(mark.read_bytes())
    data[-30] ^= 0x55
    mark.write_bytes(bytes(data))


@pytest.mark.expect_log
def test_ls_with_the_key_survives_one_damaged_chunk0(rig, recipes):
    ulids = [rig.backup(f"archive {i}".encode(), recipes["gpg"].cert, "--name", f"n{i}")
             for i in range(3)]
    rig.run("freeze", "--once", check=True)
    damage_manifest(archive_dir(rig, ulids[1]) / "chunk.0")
    proc = rig.run("ls", "--json", "-k", str(recipes["gpg"].key), rig.vault)
    print(proc.stderr.decode())
    assert proc.returncode == 9, proc.stderr
    rows = {r["ulid"]: r for r in json.loads(proc.stdout)}
    assert rows[ulids[0]]["name"] == "n0" and rows[ulids[2]]["name"] == "n2"
    err = proc.stderr.decode().strip().splitlines()
    assert len(err) == 1 and ulids[1] in err[0], err
    assert rows[ulids[1]]["state"] == "damaged" and rows[ulids[1]]["name"] is None


@pytest.mark.expect_log
def test_ls_shows_the_others_when_a_chunk0_does_not_parse(rig, recipes):
    """Without the key too: the archive is left out, with one warning and a
    non-zero exit; a damaged chunk.0 still queued in the spool alike."""
    frozen = [rig.backup(b"frozen %d" % i, recipes["gpg"].cert) for i in range(2)]
    rig.run("freeze", "--once", check=True)
    queued = [rig.backup(b"queued %d" % i, recipes["gpg"].cert) for i in range(2)]
    (archive_dir(rig, frozen[0]) / "chunk.0").write_bytes(b"not a mark")
    (archive_dir(rig, queued[0], where="freeze") / "chunk.0").write_bytes(b"not a mark")
    proc = rig.run("ls", "-H", rig.vault)
    assert proc.returncode == 9, proc.stderr
    listed = [line.split("\t")[0] for line in proc.stdout.decode().splitlines()]
    assert listed == [frozen[1], queued[1]]
    err = proc.stderr.decode().strip().splitlines()
    assert len(err) == 2 and all("skipping" in e for e in err), err


@pytest.mark.expect_log
def test_a_fragment_thaw_gave_up_on_makes_the_archive_damaged(rig, recipes):
    from cryophile import restorequeue
    from cryophile.ids import BackupId
    from cryophile.spool import Spool
    ulids = [rig.backup(os.urandom(20_000), recipes["gpg"].cert, "-s", "4KiB")
             for _ in range(2)]
    rig.run("freeze", "--once", check=True)
    frag = archive_dir(rig, ulids[0]) / "chunk.2"
    data = bytearray(frag.read_bytes())
    data[10] ^= 1                                   # same size: the listing cannot tell
    frag.write_bytes(bytes(data))
    assert states(rig) == {ulids[0]: "local", ulids[1]: "local"}
    restorequeue.request(Spool(str(rig.spool)), BackupId(rig.vault, "", ulids[0]), [2])
    assert rig.run("thaw", "--once").returncode == 9
    assert list((rig.spool / "thaw" / rig.vault / ulids[0]).glob("chunk.2.failed"))
    assert states(rig) == {ulids[0]: "damaged", ulids[1]: "local"}


def states(rig) -> dict[str, str]:
    rows = json.loads(rig.run("ls", "--json", rig.vault, check=True).stdout)
    return {r["ulid"]: r["state"] for r in rows}


# --- S3 without restore status in listings (moto) -----------------------------------


@pytest.mark.parametrize("delay", [0.0, 600.0], ids=["at-once", "slow"])
def test_a_thaw_in_progress_is_thawing_not_frozen(tmp_path, bucket, s3proxy, recipes, delay):
    """Listings carry no restore status: the spool's requests and the ledger
    say thawing; a HEAD of such an archive says thawed once it is readable
    (moto restores at once; through the proxy the restore takes its delay)."""
    from cryophile import restorequeue
    from cryophile.ids import BackupId
    from cryophile.spool import Spool
    from tests.test_s3_e2e import S3Rig
    rig = S3Rig(tmp_path, bucket, s3proxy.endpoint, storage_class="GLACIER")
    ulids = [rig.backup(os.urandom(20_000), recipes["gpg"].cert, "-p", "db", "-s", "8KiB")
             for _ in range(3)]
    rig.run("freeze", "--once", check=True)
    assert set(states(rig).values()) == {"frozen"}
    spool = Spool(str(rig.spool))
    restorequeue.request(spool, BackupId(bucket, "db", ulids[0]), [1, 2, 3], warm=True)
    assert states(rig) == {ulids[0]: "thawing", ulids[1]: "frozen", ulids[2]: "frozen"}
    s3proxy.restore_delay = delay
    rig.run("thaw", "--once", check=True)             # sends the restores, drops the requests
    assert not list((rig.spool / "thaw" / bucket).rglob("chunk.*"))
    assert [r for r in s3proxy.requests("POST") if "restore" in r.query]
    assert states(rig) == {ulids[0]: "thawed" if not delay else "thawing",
                           ulids[1]: "frozen", ulids[2]: "frozen"}


def test_thawed_only_once_every_fragment_is_readable(tmp_path, bucket, s3proxy, s3client,
                                                      recipes):
    """A thaw asked for whose first fragment alone is restored is still
    thawing (the mount says the same): thawed needs every fragment."""
    from cryophile import restorequeue
    from cryophile.ids import BackupId
    from cryophile.spool import Spool
    from tests.test_s3_e2e import S3Rig
    rig = S3Rig(tmp_path, bucket, s3proxy.endpoint, storage_class="GLACIER")
    ulid = rig.backup(os.urandom(20_000), recipes["gpg"].cert, "-p", "db", "-s", "8KiB")
    rig.run("freeze", "--once", check=True)
    bid = BackupId(bucket, "db", ulid)
    restorequeue.request(Spool(str(rig.spool)), bid, [1, 2, 3], warm=True)
    s3client.restore_object(Bucket=bucket, Key=bid.fragment_key(1),
                            RestoreRequest={"Days": 1})          # moto: at once
    assert states(rig) == {ulid: "thawing"}
    for n in (2, 3):
        s3client.restore_object(Bucket=bucket, Key=bid.fragment_key(n),
                                RestoreRequest={"Days": 1})
    assert states(rig) == {ulid: "thawed"}


def test_ls_of_an_archive_as_ls_prints_it(tmp_path, recipes):
    """ls VAULT/PREFIX/ULID lists that archive alone (a ULID is not taken for a
    prefix holding nothing); one that does not exist is exit 7, not silence."""
    from tests.clirig import make_rig
    rig = make_rig(tmp_path)
    one = rig.backup(b"one", recipes["gpg"].cert, "-p", "tank")
    two = rig.backup(b"two", recipes["gpg"].cert, "-p", "tank")
    rows = json.loads(rig.run("ls", "--json", f"{rig.vault}/tank/{one}", check=True).stdout)
    assert [r["ulid"] for r in rows] == [one]
    rows = json.loads(rig.run("ls", "--json", f"{rig.vault}/tank", check=True).stdout)
    assert sorted(r["ulid"] for r in rows) == sorted([one, two])
    missing = rig.run("ls", f"{rig.vault}/tank/{two[:-1]}{'0' if two[-1] != '0' else '1'}")
    assert missing.returncode == 7 and missing.stderr.count(b"\n") == 1, missing.stderr


# --- failure records that no longer hold ---------------------------------------------


def _flip(path, at: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 1
    path.write_bytes(bytes(data))


def _later(path, seconds: float = 5.0) -> None:
    st = path.stat()
    os.utime(path, (st.st_atime, st.st_mtime + seconds))


@pytest.mark.expect_log
def test_a_record_the_vault_no_longer_matches_is_stale(rig, recipes):
    """Thaw gave up on a damaged fragment (or one missing): once the vault holds
    another object there (repaired, uploaded since), ls, check and the mount's
    state drop the record instead of calling the archive damaged."""
    from cryophile import restorequeue
    from cryophile.ids import BackupId
    from cryophile.spool import Spool
    from cryophile.store.local import LocalStore
    from cryophilefs import vaults
    ulids = [rig.backup(os.urandom(20_000), recipes["gpg"].cert, "-s", "4KiB")
             for _ in range(2)]
    rig.run("freeze", "--once", check=True)
    spool = Spool(str(rig.spool))
    bids = [BackupId(rig.vault, "", u) for u in ulids]
    damaged, gone = archive_dir(rig, ulids[0]) / "chunk.2", archive_dir(rig, ulids[1]) / "chunk.3"
    good, kept = damaged.read_bytes(), gone.read_bytes()
    _flip(damaged)
    gone.unlink()
    restorequeue.request(spool, bids[0], [2])
    restorequeue.request(spool, bids[1], [3])
    assert rig.run("thaw", "--once").returncode != 0
    assert sorted(restorequeue.records(spool, bids[0])) == [2]
    assert restorequeue.records(spool, bids[1])[3][1] == {"absent": True}
    assert states(rig) == {ulids[0]: "damaged", ulids[1]: "damaged"}
    store = LocalStore(str(rig.vaults / rig.vault))
    archive = vaults.Archive.from_mark(bids[0], (archive_dir(rig, ulids[0]) / "chunk.0")
                                       .read_bytes())
    assert vaults.state(spool, store, archive)[0] == "damaged"     # the mount's view
    proc = rig.run("check", rig.vault)         # the record stands for the damaged one
    assert proc.returncode == 9 and f"{ulids[0]}: chunk.2: a thaw gave up" in proc.stdout.decode()

    damaged.write_bytes(good)                  # repaired: another object than thaw saw
    _later(damaged)
    gone.write_bytes(kept)                     # uploaded since
    assert vaults.state(spool, store, archive)[0] == "local"
    assert not restorequeue.records(spool, bids[0])
    assert states(rig) == {ulids[0]: "local", ulids[1]: "local"}
    assert not restorequeue.records(spool, bids[1])
    assert rig.run("check", rig.vault).returncode == 0


def test_check_read_data_settles_a_record_of_an_intact_archive(tmp_path, bucket, s3proxy,
                                                              recipes):
    """A download damaged on the way (the vault's object intact) left a record:
    ls says damaged, check confirms the record without reading; check
    --read-data reads the fragment back whole and drops it."""
    from cryophile import errors, restorequeue
    from cryophile.ids import BackupId
    from cryophile.spool import Spool
    from cryophile.store.s3 import S3Store
    from tests.test_s3_e2e import S3Rig
    rig = S3Rig(tmp_path, bucket, s3proxy.endpoint, storage_class="GLACIER")
    ulid = rig.backup(os.urandom(20_000), recipes["gpg"].cert, "-p", "db", "-s", "8KiB")
    rig.run("freeze", "--once", check=True)
    spool, bid = Spool(str(rig.spool)), BackupId(bucket, "db", ulid)
    store = S3Store(bucket, endpoint_url=s3proxy.endpoint)
    restorequeue.record_failure(spool, bid, 2, errors.IntegrityError(
        "db/…/chunk.2 fails verification after 3 downloads"),
        restorequeue.look(store, bid.fragment_key(2)))      # as thaw records it
    assert states(rig) == {ulid: "damaged"}
    proc = rig.run("check", f"{bucket}/db")
    assert proc.returncode == 9 and b"chunk.2: a thaw gave up" in proc.stdout, proc.stdout
    assert states(rig) == {ulid: "damaged"}
    proc = rig.run("check", "--read-data", f"{bucket}/db/{ulid}")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert not restorequeue.records(spool, bid)
    assert states(rig)[ulid] != "damaged"


@pytest.mark.expect_log
def test_ls_with_a_key_that_opens_no_archive_says_so(rig, recipes):
    """Names show as - for archives the key does not open, with one warning
    saying how many and which key they want, not silence."""
    ulids = [rig.backup(b"gpg %d" % i, recipes["gpg"].cert, "--name", f"g{i}")
             for i in range(2)]
    other = rig.backup(b"sq", recipes["sq"].cert, "--name", "s")
    rig.run("freeze", "--once", check=True)
    proc = rig.run("ls", "--json", "-k", str(recipes["sq"].key), rig.vault)
    assert proc.returncode == 0, proc.stderr
    rows = {r["ulid"]: r["name"] for r in json.loads(proc.stdout)}
    assert rows == {ulids[0]: None, ulids[1]: None, other: "s"}
    (line,) = proc.stderr.decode().strip().splitlines()
    assert "open 1 of the 3 archive(s)" in line and "secret key" in line, line
    proc = rig.run("ls", "-k", str(recipes["gpg_rsa"].key), rig.vault)
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stderr.decode().strip().splitlines()
    assert "open none of the 3 archive(s)" in line, line
    proc = rig.run("ls", "-k", str(recipes["gpg"].key), "-k", str(recipes["sq"].key), rig.vault)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
