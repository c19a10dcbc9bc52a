"""cryophile prune: the plan printed, kept archives' bases held, minimum
storage durations on S3, a separate prune identity (docs/S3.md)."""

from __future__ import annotations

import os

import pytest

from tests.clirig import archive_dir, make_rig
from tests.test_s3_e2e import S3Rig

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def rig(tmp_path):
    return make_rig(tmp_path)


def backup(rig, recipes, when: str, *args: str) -> str:
    return rig.backup(os.urandom(3000), recipes["gpg"].cert, "-t", when, *args)


def plan_lines(proc) -> dict[str, str]:
    """ULID → the plan line's action and reasons."""
    out = {}
    for line in proc.stdout.decode().splitlines()[:-1]:
        action, bid, _created, size, unit, *why = line.split()
        out[bid.rsplit("/", 1)[1]] = " ".join([action, *why])
    return out


def test_prune_keeps_the_policy_and_holds_bases(rig, recipes):
    full = backup(rig, recipes, "2026-01-01T00:00:00Z", "-p", "tank")
    incr = backup(rig, recipes, "2026-01-02T00:00:00Z", "-p", "tank", "--parent", full)
    other = backup(rig, recipes, "2026-01-03T00:00:00Z", "-p", "tank")
    newest = backup(rig, recipes, "2026-01-04T00:00:00Z", "-p", "tank", "--parent", incr)
    elsewhere = backup(rig, recipes, "2026-01-01T00:00:00Z", "-p", "db")
    rig.run("freeze", "--once", check=True)

    dry = rig.run("prune", f"{rig.vault}", "--keep-last", "1", "-n", check=True)
    assert plan_lines(dry) == {
        elsewhere: "keep last",
        newest: "keep last",
        other: "delete",
        incr: f"held base of {newest}",
        full: f"held base of {incr}",
    }
    assert dry.stdout.decode().splitlines()[-1].startswith("2 kept, 2 held, 1 to delete")
    assert (archive_dir(rig, other, "tank") / "chunk.0").exists()     # dry run: nothing gone

    rig.run("prune", f"{rig.vault}/tank", "--keep-last", "1", check=True)
    assert not archive_dir(rig, other, "tank").exists()
    for ulid in (full, incr, newest):
        assert (archive_dir(rig, ulid, "tank") / "chunk.0").exists()
    assert (archive_dir(rig, elsewhere, "db") / "chunk.0").exists()
    again = rig.run("prune", f"{rig.vault}/tank", "--keep-last", "1", check=True)
    assert "0 to delete" in again.stdout.decode()
    assert rig.run("check", rig.vault).returncode == 0


def test_prune_daily_and_within(rig, recipes):
    ulids = [backup(rig, recipes, f"2026-03-0{d}T{h:02d}:00:00Z") for d in (1, 2, 3)
             for h in (1, 13)]
    rig.run("freeze", "--once", check=True)
    proc = rig.run("prune", rig.vault, "--keep-daily", "2", "--keep-within", "13h", check=True)
    assert plan_lines(proc) == {
        ulids[5]: "keep daily, within 13h", ulids[4]: "keep within 13h",
        ulids[3]: "keep daily", ulids[2]: "delete", ulids[1]: "delete", ulids[0]: "delete"}
    listing = rig.run("ls", rig.vault, check=True).stdout.decode()
    assert [u in listing for u in ulids] == [False, False, False, True, True, True]


def test_queued_archives_are_kept_and_hold_their_bases(rig, recipes):
    base = backup(rig, recipes, "2026-01-01T00:00:00Z")
    old = backup(rig, recipes, "2026-01-02T00:00:00Z")
    rig.run("freeze", "--once", check=True)
    child = backup(rig, recipes, "2026-01-03T00:00:00Z", "--parent", base)   # not frozen
    proc = rig.run("prune", rig.vault, "--keep-last", "1", check=True)
    assert plan_lines(proc) == {child: "keep not yet frozen", old: "keep last",
                                base: f"held base of {child}"}


def test_prune_refuses_without_a_keep_option(rig, recipes):
    backup(rig, recipes, "2026-01-01T00:00:00Z")
    rig.run("freeze", "--once", check=True)
    for args in ([], ["-n"], ["--keep-last", "0"], ["--keep-within", "3w"]):
        proc = rig.run("prune", rig.vault, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert b"Traceback" not in proc.stderr
    proc = rig.run("prune", f"{rig.vault}/01J00000000000000000000000", "--keep-last", "1")
    assert proc.returncode == 2 and b"cryophile rm" in proc.stderr


# --- S3: minimum storage durations ---------------------------------------------------


def test_glacier_archives_are_held_until_their_minimum_duration(
        tmp_path, bucket, s3proxy, s3client, recipes):
    rig = S3Rig(tmp_path, bucket, s3proxy.endpoint, storage_class="DEEP_ARCHIVE")
    old = backup(rig, recipes, "2026-01-01T00:00:00Z")
    new = backup(rig, recipes, "2026-01-02T00:00:00Z")
    rig.run("freeze", "--once", check=True)
    proc = rig.run("prune", "offsite", "--keep-last", "1", check=True)
    lines = plan_lines(proc)
    assert lines[new] == "keep last"
    assert lines[old].startswith("held too young to delete without a charge (DEEP_ARCHIVE: "
                                 "stored 0 of its minimum 180 days, early deletion charge ")
    assert f"{old}/chunk.1" in str(s3client.list_objects_v2(Bucket=bucket)["Contents"])
    proc = rig.run("prune", "offsite", "--keep-last", "1", "--allow-early-delete", "-n",
                   check=True)
    assert plan_lines(proc)[old].startswith("delete DEEP_ARCHIVE: stored 0 of its minimum 180")
    assert "early deletion charges" in proc.stdout.decode().splitlines()[-1]
    rig.run("prune", "offsite", "--keep-last", "1", "--allow-early-delete", check=True)
    keys = [o["Key"] for o in s3client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys and all(k.startswith(new) for k in keys)


def test_zfs_incrementals_hold_their_bases_by_stream_guids(rig, recipes):
    """No --parent: the chain comes from the zfs streams' guids in chunk.0."""
    from tests.streamgen import zfs_substream
    ulids = []
    for day, (to, frm) in enumerate([(11, 0), (22, 11), (33, 0), (44, 22)], 1):
        stream = zfs_substream("<", to, frm, f"tank/home@d{day}", [])
        ulids.append(rig.backup(stream, recipes["gpg"].cert, "-t", f"2026-02-0{day}T00:00:00Z",
                                "-p", "tank/home"))
    rig.run("freeze", "--once", check=True)
    proc = rig.run("prune", rig.vault, "--keep-last", "1", check=True)
    assert plan_lines(proc) == {ulids[3]: "keep last", ulids[2]: "delete",
                                ulids[1]: f"held base of {ulids[3]}",
                                ulids[0]: f"held base of {ulids[1]}"}
    assert rig.run("check", rig.vault).returncode == 0


@pytest.mark.parametrize("where", ["tank", "other"])
def test_prune_refuses_when_a_vault_archive_cannot_say_its_base(rig, recipes, where):
    """An incremental whose chunk.0 does not parse (in the prefix pruned or
    another): its base is unknown and its fragments may still be recovered by
    hand, so nothing is deleted until it is removed."""
    full = backup(rig, recipes, "2026-01-01T00:00:00Z", "-p", "tank")
    backup(rig, recipes, "2026-01-03T00:00:00Z", "-p", "tank")
    incr = backup(rig, recipes, "2026-01-02T00:00:00Z", "-p", where, "--parent", full)
    rig.run("freeze", "--once", check=True)
    mark = archive_dir(rig, incr, where) / "chunk.0"
    mark.write_bytes(b"not a mark")
    for dry in ([], ["-n"]):
        proc = rig.run("prune", f"{rig.vault}/tank", "--keep-last", "1", *dry)
        assert proc.returncode == 9, proc.stderr
        bid = f"{rig.vault}/{where}/{incr}"
        (line,) = proc.stderr.decode().splitlines()
        assert line.startswith(f"cryophile: error: chunk.0 of {bid} in the vault: ")
        assert f"`cryophile rm {bid}` removes the archive" in line
        assert (archive_dir(rig, full, "tank") / "chunk.0").exists()      # its base stays
    rig.run("rm", bid, check=True)                                       # as the error says
    rig.run("prune", f"{rig.vault}/tank", "--keep-last", "1", check=True)
    assert not (archive_dir(rig, full, "tank") / "chunk.0").exists()


def test_the_parent_of_a_backup_being_written_is_held(rig, recipes):
    from tests.test_rm import writing_child
    base = backup(rig, recipes, "2026-01-01T00:00:00Z")
    old = backup(rig, recipes, "2026-01-02T00:00:00Z")
    newest = backup(rig, recipes, "2026-01-03T00:00:00Z")
    rig.run("freeze", "--once", check=True)
    with writing_child(rig, recipes, base) as child:
        proc = rig.run("prune", rig.vault, "--keep-last", "1", check=True)
        assert plan_lines(proc) == {
            child: "keep being written", newest: "keep last", old: "delete",
            base: f"held parent of a backup in progress ({child})"}
        assert (archive_dir(rig, base) / "chunk.0").exists()
    proc = rig.run("prune", rig.vault, "--keep-last", "1", "-n", check=True)
    assert plan_lines(proc)[base] == f"held base of {child}"      # sealed: its chunk.0 says


def test_the_base_of_an_incremental_stream_being_written_is_held(rig, recipes):
    """No --parent: a zfs incremental still coming in names its base by the
    fromguid of its first record, before any chunk.0 says so."""
    from tests.streamgen import zfs_substream
    from tests.test_rm import writing_child
    base = rig.backup(zfs_substream("<", 11, 0, "tank/home@d1", []), recipes["gpg"].cert,
                      "-t", "2026-02-01T00:00:00Z", "-p", "tank/home")
    old = rig.backup(zfs_substream("<", 22, 0, "tank/home@d2", []), recipes["gpg"].cert,
                     "-t", "2026-02-02T00:00:00Z", "-p", "tank/home")
    newest = rig.backup(zfs_substream("<", 33, 0, "tank/home@d3", []), recipes["gpg"].cert,
                        "-t", "2026-02-03T00:00:00Z", "-p", "tank/home")
    rig.run("freeze", "--once", check=True)
    stream = zfs_substream("<", 44, 11, "tank/home@d4", [])
    cut = len(stream) - 40                  # everything but its END record, for now
    with writing_child(rig, recipes, head=stream[:cut], tail=stream[cut:],
                       args=("-p", "tank/home")) as child:
        proc = rig.run("prune", rig.vault, "--keep-last", "1", "-n", check=True)
        assert plan_lines(proc) == {
            child: "keep being written", newest: "keep last", old: "delete",
            base: f"held parent of a backup in progress ({child})"}
        refused = rig.run("rm", f"{rig.vault}/tank/home/{base}")
        assert refused.returncode == 2 and child.encode() in refused.stderr, refused.stderr
    proc = rig.run("prune", rig.vault, "--keep-last", "1", "-n", check=True)
    assert plan_lines(proc)[base] == f"held base of {child}"      # sealed: its chunk.0 says


def test_one_ulid_under_two_prefixes_is_two_archives(rig, recipes):
    """backup --ulid can give archives under two prefixes the same ULID: an
    incremental's base is the one under its own prefix, which prune holds
    and rm refuses to remove, while its twin elsewhere goes as any other."""
    import datetime
    from cryophile.ids import new_ulid
    twin = new_ulid(datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc))
    for prefix in ("a", "b"):
        assert rig.backup(os.urandom(3000), recipes["gpg"].cert, "-u", twin,
                          "-p", prefix) == twin
    child = backup(rig, recipes, "2026-01-02T00:00:00Z", "-p", "b", "--parent", twin)
    newer = backup(rig, recipes, "2026-01-03T00:00:00Z", "-p", "a")
    rig.run("freeze", "--once", check=True)
    dry = rig.run("prune", rig.vault, "--keep-last", "1", "-n", check=True)
    lines = {line.split()[1]: line.split()[0] for line in dry.stdout.decode().splitlines()[:-1]}
    assert lines == {f"{rig.vault}/a/{newer}": "keep", f"{rig.vault}/a/{twin}": "delete",
                     f"{rig.vault}/b/{child}": "keep", f"{rig.vault}/b/{twin}": "held"}
    gone = rig.run("rm", f"{rig.vault}/b/{twin}")
    assert gone.returncode != 0 and f"base of {child}" in gone.stderr.decode()
    rig.run("prune", rig.vault, "--keep-last", "1", check=True)
    assert not archive_dir(rig, twin, "a").exists()
    assert (archive_dir(rig, twin, "b") / "chunk.0").exists()
    chain = rig.run("chain", "--json", f"{rig.vault}/b/{child}", check=True)
    assert '"prefix": "b"' in chain.stdout.decode() and '"prefix": "a"' not in \
        chain.stdout.decode()
    assert rig.run("check", rig.vault).returncode == 0


def test_ls_prune_and_the_mount_count_the_same_stored_bytes(rig, recipes):
    """Stored bytes are what the vault holds (and bills): every fragment and
    chunk.0, queued in the spool or frozen, in ls, prune's plan and the
    mount's user.cryophile.stored alike."""
    import json
    from cryophile.ids import BackupId, human
    from cryophilefs.vaults import Archive
    ulid = backup(rig, recipes, "2026-01-01T00:00:00Z", "-p", "tank")

    def stored() -> int:
        rows = json.loads(rig.run("ls", "--json", rig.vault, check=True).stdout)
        return {r["ulid"]: r["stored"] for r in rows}[ulid]

    def held(where: str) -> int:
        return sum(p.stat().st_size for p in archive_dir(rig, ulid, "tank", where).iterdir()
                   if p.name.startswith("chunk."))
    def planned() -> list[str]:
        return rig.run("prune", rig.vault, "--keep-last", "1", "-n", check=True
                       ).stdout.decode().splitlines()[0].split()[3:5]
    assert stored() == held("freeze")                   # queued
    assert planned() == human(held("freeze")).split()
    rig.run("freeze", "--once", check=True)
    assert stored() == held("vault")                    # frozen
    assert planned() == human(held("vault")).split()
    mark = (archive_dir(rig, ulid, "tank") / "chunk.0").read_bytes()
    assert Archive.from_mark(BackupId(rig.vault, "tank", ulid), mark).stored == held("vault")


@pytest.mark.expect_log          # the writer says it sealed the stream incomplete
def test_an_archive_sealed_incomplete_is_no_last_backup(rig, recipes):
    """A newer stream the mount sealed incomplete (its writer died) does not
    take the place of the last whole backup: it counts for no rule."""
    from cryophile import keys
    from cryophile.ids import BackupId, new_ulid
    from cryophile.pipeline.writer import ArchiveWriter
    from cryophile.spool import Spool
    from tests.test_catalog import _tar_cut_short
    whole = backup(rig, recipes, "2026-01-01T00:00:00Z", "-p", "tank")
    spool = Spool(str(rig.spool))
    cut = BackupId(rig.vault, "tank", new_ulid())
    writer = ArchiveWriter(spool, cut, keys.load_certificates([str(recipes["gpg"].cert)]),
                           "lz4", 4096)
    writer.write(_tar_cut_short())
    writer.close(incomplete="mark")
    rig.run("freeze", "--once", check=True)
    proc = rig.run("prune", f"{rig.vault}/tank", "--keep-last", "1", check=True)
    assert plan_lines(proc) == {whole: "keep last", cut.ulid: "delete incomplete"}
    assert (archive_dir(rig, whole, "tank") / "chunk.0").exists()
    assert not archive_dir(rig, cut.ulid, "tank").exists()


def test_prune_refuses_when_a_queued_archive_cannot_say_its_base(rig, recipes):
    full = backup(rig, recipes, "2026-01-01T00:00:00Z", "-p", "tank")
    rig.run("freeze", "--once", check=True)
    backup(rig, recipes, "2026-01-03T00:00:00Z", "-p", "tank")
    rig.run("freeze", "--once", check=True)
    incr = backup(rig, recipes, "2026-01-02T00:00:00Z", "-p", "tank", "--parent", full)
    mark = archive_dir(rig, incr, "tank", where="freeze") / "chunk.0"
    mark.write_bytes(b"not a mark\n")           # damaged in the spool, not yet frozen
    proc = rig.run("prune", f"{rig.vault}/tank", "--keep-last", "1")
    assert proc.returncode == 9, proc.stderr
    bid = f"{rig.vault}/tank/{incr}"
    assert proc.stderr.decode().splitlines() == [
        f"cryophile: error: chunk.0 of {bid} in the freeze queue: chunk.0 is not a cryophile "
        f"archive mark (`cryophile rm {bid}` removes the archive)"]
    assert (archive_dir(rig, full, "tank") / "chunk.0").exists()       # its base stays
    rig.run("rm", bid, check=True)                                       # as the error says
    rig.run("prune", f"{rig.vault}/tank", "--keep-last", "1", check=True)
