"""`cryophile status` as JSON and as a Prometheus textfile, against real spools:
fragments queued by real backups, frozen by real freezes, thaw failures
recorded by a real thaw, daemons that really hold their locks."""

import fcntl
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cryophile import health
from tests.otheruser import unreachable
from cryophile.spool import Spool, flock_held
from tests.clirig import make_rig
from tests.fsrig import wait_until


def status(rig) -> dict:
    return json.loads(rig.run("status", "--json", check=True).stdout)


def queued(rig, queue: str) -> list:
    return [p for p in (rig.spool / queue).rglob("chunk.*") if p.name != "chunk.0"]


def test_json_counts_real_queued_and_frozen_fragments(tmp_path, recipes):
    rig = make_rig(tmp_path)
    before = time.time()
    ulid = rig.backup(os.urandom(50_000), recipes["gpg"].cert, "-s", "16KiB", "-C", "none")
    s = status(rig)
    frags = queued(rig, "freeze")
    assert len(frags) == 4
    assert s["queues"]["freeze"] == {"archives": 1, "fragments": 4,
                                     "bytes": sum(p.stat().st_size for p in frags)}
    assert s["queues"]["backup"] == {"archives": 0, "fragments": 0, "bytes": 0}
    assert s["queues"]["thaw"]["bytes"] is None
    assert 0 <= s["oldest_unfrozen_age"] <= time.time() - before + 1
    assert s["last_freeze"] == {}
    assert s["thaw_requests"] == 0 and s["thaw_failures"] == []
    assert s["daemons"] == {"thaw": {"running": False, "pid": None, "command": None},
                            "freeze": {"running": False, "pids": []}}
    assert s["archives"] == [{"queue": "freeze", "archive": f"{rig.vault}/{ulid}",
                              "fragments": 4, "state": "sealed"}]
    assert s["spool"] == str(rig.spool)

    rig.run("freeze", "--once", check=True)
    s = status(rig)
    assert s["queues"]["freeze"] == {"archives": 0, "fragments": 0, "bytes": 0}
    assert s["oldest_unfrozen_age"] is None
    last = s["last_freeze"][rig.vault]
    assert last["archive"] == f"{rig.vault}/{ulid}"
    assert before <= last["time"] <= time.time()
    text = rig.run("status", check=True).stdout.decode()
    assert f"last freeze into {rig.vault}: " in text and ulid in text


def test_a_thaw_failure_record_is_reported(tmp_path, recipes):
    rig = make_rig(tmp_path)
    ulid = rig.backup(os.urandom(50_000), recipes["gpg"].cert, "-s", "16KiB", "-C", "none")
    rig.run("freeze", "--once", check=True)
    (rig.vaults / rig.vault / ulid / "chunk.2").unlink()      # lost from the vault
    request = rig.spool / "thaw" / rig.vault / ulid / "chunk.2"
    request.parent.mkdir(parents=True)
    request.touch()
    assert status(rig)["thaw_requests"] == 1
    proc = rig.run("thaw", "--once")
    assert proc.returncode == 8, proc.stderr
    s = status(rig)
    assert s["thaw_requests"] == 0
    [failure] = s["thaw_failures"]
    assert failure["archive"] == f"{rig.vault}/{ulid}" and failure["fragment"] == 2
    assert "missing" in failure["error"]
    assert "thaw failed" in rig.run("status", check=True).stdout.decode()
    families = parse(rig, tmp_path / "metrics.prom")
    assert value(families, "cryophile_thaw_failures") == 1


def start(rig, *args) -> subprocess.Popen:
    return subprocess.Popen(rig.command(*args), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 0


@pytest.mark.timeout(120)
def test_status_names_the_daemons_holding_the_locks(tmp_path):
    rig = make_rig(tmp_path)
    rig.spool.mkdir()
    thaw, freeze = start(rig, "thaw"), start(rig, "freeze")
    try:
        wait_until(lambda: (lambda d: d["thaw"]["running"] and d["freeze"]["running"])(
            status(rig)["daemons"]), timeout=60)
        daemons = status(rig)["daemons"]
        assert daemons["thaw"]["pid"] == thaw.pid
        assert "thaw" in daemons["thaw"]["command"]
        assert thaw.pid not in daemons["freeze"]["pids"]
        assert freeze.pid in daemons["freeze"]["pids"]
        text = rig.run("status", check=True).stdout.decode()
        assert f"thaw daemon: running (pid {thaw.pid}: " in text
        assert f"freeze daemon: running (pid {freeze.pid})" in text
        families = parse(rig, tmp_path / "metrics.prom")
        assert value(families, "cryophile_daemon_up", daemon="thaw") == 1
        assert value(families, "cryophile_daemon_pid", daemon="thaw") == thaw.pid
        assert value(families, "cryophile_daemon_up", daemon="freeze") == 1
    finally:
        stop(thaw)
        stop(freeze)
    daemons = status(rig)["daemons"]
    assert not daemons["thaw"]["running"] and daemons["thaw"]["pid"] is None
    assert not daemons["freeze"]["running"]


def parse(rig, path) -> dict:
    """Write the textfile with `status --prometheus` and parse it with
    prometheus_client's own parser: {name: [(labels, value)]}."""
    proc = rig.run("status", "--prometheus", str(path), check=True)
    assert proc.stdout == b"" and proc.stderr == b""
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    families = {}
    for family in text_string_to_metric_families(path.read_text()):
        assert family.type == "gauge" and family.documentation
        for sample in family.samples:
            assert sample.labels["spool"] == str(rig.spool)
            families.setdefault(sample.name, []).append((sample.labels, sample.value))
    return families


def value(families: dict, name: str, **labels) -> float:
    [found] = [v for lab, v in families[name] if all(lab.get(k) == x for k, x in labels.items())]
    return found


def test_prometheus_file_parses_and_carries_the_queues(tmp_path, recipes):
    rig = make_rig(tmp_path)
    ulid = rig.backup(os.urandom(50_000), recipes["gpg"].cert, "-s", "16KiB", "-C", "none")
    out = tmp_path / "textfile" / "cryophile.prom"
    out.parent.mkdir()
    out.write_text("stale\n")
    families = parse(rig, out)
    assert value(families, "cryophile_queue_fragments", queue="freeze") == 4
    assert value(families, "cryophile_queue_archives", queue="freeze") == 1
    assert value(families, "cryophile_queue_bytes", queue="freeze") == \
        sum(p.stat().st_size for p in queued(rig, "freeze"))
    assert "cryophile_queue_bytes" in families and \
        not [lab for lab, _ in families["cryophile_queue_bytes"] if lab["queue"] == "thaw"]
    assert value(families, "cryophile_oldest_unfrozen_fragment_age_seconds") >= 0
    assert "cryophile_last_freeze_timestamp_seconds" not in families
    assert abs(value(families, "cryophile_status_timestamp_seconds") - time.time()) < 600
    rig.run("freeze", "--once", check=True)
    families = parse(rig, out)
    assert value(families, "cryophile_queue_fragments", queue="freeze") == 0
    assert value(families, "cryophile_oldest_unfrozen_fragment_age_seconds") == 0
    frozen = value(families, "cryophile_last_freeze_timestamp_seconds", vault=rig.vault)
    assert frozen == status(rig)["last_freeze"][rig.vault]["time"]
    assert ulid not in out.read_text()


def test_prometheus_into_a_missing_directory_is_one_line(tmp_path):
    rig = make_rig(tmp_path)
    proc = rig.run("status", "--prometheus", str(tmp_path / "nowhere" / "x.prom"))
    assert proc.returncode == 11
    assert len(proc.stderr.decode().strip().splitlines()) == 1, proc.stderr


def test_record_frozen_keeps_the_last_and_ignores_junk(tmp_path):
    from cryophile.ids import BackupId
    spool = Spool(str(tmp_path / "spool"))
    vault = "0b8c3a7e-5a1d-4f7e-9a53-3f1c2d4e5f60"
    health.record_frozen(spool, BackupId(vault, "a", "01JD0000000000000000000000"), when=5.0)
    health.record_frozen(spool, BackupId(vault, "b", "01JD0000000000000000000001"), when=7.0)
    assert health.last_frozen(spool) == {
        vault: {"time": 7.0, "archive": f"{vault}/b/01JD0000000000000000000001"}}
    (tmp_path / "spool" / "frozen" / "junk").write_text("{not json")
    assert list(health.last_frozen(spool)) == [vault]


HOLD_SHARED = """
import fcntl, os, sys, time
fcntl.flock(os.open(sys.argv[1], os.O_RDWR), fcntl.LOCK_SH)
time.sleep(120)
"""


def test_lock_pids_finds_shared_and_exclusive_holders(tmp_path):
    path = tmp_path / "lock"
    path.touch()
    assert health.lock_pids(str(path)) == []
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        # the child itself holds the lock: flock(1) would fork its command, and
        # killed before that fork closed the lock's descriptor (the CPU busy),
        # it left the lock held, in its name, after it died
        child = subprocess.Popen([sys.executable, "-c", HOLD_SHARED, str(path)])
        try:
            wait_until(lambda: child.pid in health.lock_pids(str(path)), timeout=60)
            assert os.getpid() in health.lock_pids(str(path))
        finally:
            child.kill()
            child.wait(timeout=30)
    finally:
        os.close(fd)
    assert health.lock_pids(str(path)) == []
    assert health.lock_pids(str(tmp_path / "absent")) == []


def hold(path) -> subprocess.Popen:
    """A child holding a shared flock on ``path``, once it shows in /proc/locks."""
    child = subprocess.Popen([sys.executable, "-c", HOLD_SHARED, str(path)])
    wait_until(lambda: child.pid in locking_pids(), timeout=60)
    return child


def locking_pids() -> set[int]:
    with open("/proc/locks") as f:
        return {int(line.split()[4]) for line in f if line.split()[1] == "FLOCK"}


def release(child: subprocess.Popen) -> None:
    child.kill()
    child.wait(timeout=30)


def test_lock_pids_ignores_the_same_inode_on_another_device(tmp_path):
    path = tmp_path / "lock"
    path.touch()
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        ino = os.stat(path).st_ino
        locks = tmp_path / "locks"
        locks.write_text(f"1: FLOCK  ADVISORY  READ {os.getpid()} fe:7f:{ino} 0 EOF\n")
        assert health.lock_pids(str(path), locks=str(locks)) == []
        assert health.lock_pids(str(path)) == [os.getpid()]
    finally:
        os.close(fd)


FORK_AND_DIE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
if os.fork() == 0:
    os.close(1)         # the test sees the pipe close once the parent is gone too
    sys.stdin.read()    # holds the lock until the test closes our stdin
    os._exit(0)
print(os.getpid(), flush=True)
"""


@pytest.mark.timeout(120)
def test_lock_pids_does_not_name_a_dead_locker_whose_child_holds_the_lock(tmp_path):
    # /proc/locks keeps naming the process that took a flock; after it died
    # the lock lives on in a child that inherited the descriptor
    path = tmp_path / "lock"
    path.touch()
    proc = subprocess.Popen([sys.executable, "-c", FORK_AND_DIE, str(path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        dead = int(proc.stdout.readline())
        proc.wait(timeout=60)
        assert proc.stdout.read() == b""
        assert dead in locking_pids()
        assert flock_held(str(path))
        assert health.lock_pids(str(path)) == []
    finally:
        proc.stdin.close()          # the child reads EOF and exits
        proc.stdout.close()
        wait_until(lambda: not flock_held(str(path)), timeout=60)


def root_with(*tools: str):
    import shutil
    missing = os.geteuid() != 0 or not all(shutil.which(t) for t in tools)
    return pytest.mark.skipif(missing, reason=f"needs root and {', '.join(tools)}")


@root_with("mkfs.btrfs", "losetup")
@pytest.mark.timeout(180)
def test_lock_pids_tells_btrfs_subvolumes_apart(tmp_path):
    # every subvolume has its own st_dev, /proc/locks shows the filesystem's
    # device for all of them, and each subvolume numbers its files from 257
    from tests.producers import Btrfs
    fs = Btrfs(tmp_path)
    try:
        for vol in ("a", "b"):
            fs.btrfs("subvolume", "create", str(fs.mnt / vol))
            (fs.mnt / vol / "lock").touch()
        (fs.mnt / "top").touch()
        a, b, top = fs.mnt / "a" / "lock", fs.mnt / "b" / "lock", fs.mnt / "top"
        assert os.stat(a).st_ino == os.stat(b).st_ino
        assert os.stat(a).st_dev != os.stat(b).st_dev
        child = hold(a)
        try:
            assert health.lock_pids(str(a)) == [child.pid]
            assert health.lock_pids(str(b)) == []
            assert health.lock_pids(str(top)) == []
        finally:
            release(child)
        child = hold(top)
        try:
            assert health.lock_pids(str(top)) == [child.pid]
            assert health.lock_pids(str(a)) == []
        finally:
            release(child)
    finally:
        fs.close()


LOCK_PIDS = "import sys; from cryophile import health; print(health.lock_pids(sys.argv[1]))"


@pytest.mark.skipif(bool(unreachable()), reason=unreachable() or "-")
@pytest.mark.timeout(120)
def test_lock_pids_names_another_users_holder_where_inodes_are_unique():
    # status run by a monitoring user cannot read the daemon's open files;
    # on a filesystem with one inode numbering (st_dev is the lock's device)
    # /proc/locks alone is exact
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o755)      # (the test's own directory, open to the other user)
        path = os.path.join(d, "lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            proc = subprocess.run(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                 sys.executable, "-c", LOCK_PIDS, path],
                capture_output=True, text=True, timeout=60,
                env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(health.__file__))})
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout.split() == [f"[{os.getpid()}]"]
        finally:
            os.close(fd)


@root_with("mount", "umount")
@pytest.mark.timeout(120)
def test_lock_pids_on_tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True,
                   timeout=60)
    try:
        path = mnt / "lock"
        path.touch()
        child = hold(path)
        try:
            assert health.lock_pids(str(path)) == [child.pid]
        finally:
            release(child)
        assert health.lock_pids(str(path)) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=60)


def test_the_lock_record_names_pid_and_command(tmp_path):
    path = tmp_path / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, b"x" * 500)
        health.record_holder(fd)
    finally:
        os.close(fd)
    holder = health.read_holder(str(path))
    assert holder["pid"] == os.getpid() and holder["command"]
    assert len(path.read_text().splitlines()) == 1
    path.write_text("garbage")
    assert health.read_holder(str(path)) == {}


def test_a_stale_holder_record_is_not_believed(tmp_path):
    spool = Spool(str(tmp_path / "spool"))
    spool.ensure()
    lock = spool.queue("thaw") + "/.daemon"
    with open(lock, "w") as f:
        f.write(json.dumps({"pid": 1, "command": "an earlier holder", "since": 0}) + "\n")
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)          # held, by someone who recorded nothing
        thaw = health.daemons(spool)["thaw"]
        assert thaw == {"running": True, "pid": os.getpid(), "command": None}
    finally:
        os.close(fd)
    assert health.daemons(spool)["thaw"] == {"running": False, "pid": None, "command": None}


def test_a_spool_that_does_not_exist_is_said_so(tmp_path):
    """A typo in -S must not look like an empty, healthy spool."""
    rig = make_rig(tmp_path)
    proc = rig.run("status", pre=["-S", str(tmp_path / "typo")], check=True)
    first = proc.stdout.decode().splitlines()[0]
    assert first.startswith(f"spool {tmp_path / 'typo'} (does not exist"), first
    assert not (tmp_path / "typo").exists()
    rig.spool.mkdir(parents=True)
    proc = rig.run("status", check=True)                 # one that exists: no remark
    assert "does not exist" not in proc.stdout.decode()


@pytest.mark.skipif(bool(unreachable()), reason=unreachable() or "-")
@pytest.mark.timeout(120)
def test_status_of_a_spool_it_cannot_read_is_an_error_not_an_empty_queue():
    # a monitoring user without access to a vault's queue must not be told
    # that nothing waits to be frozen
    import tempfile
    vault = "0b8c3a7e-5a1d-4f7e-9a53-3f1c2d4e5f60"
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o755)      # (the test's own directory, open to the other user)
        archive = os.path.join(d, "spool", "freeze", vault, "01JD0000000000000000000000")
        os.makedirs(archive)
        open(os.path.join(archive, "chunk.1"), "wb").close()
        for sub in ("spool", "spool/freeze"):
            os.chmod(os.path.join(d, sub), 0o755)
        os.chmod(os.path.join(d, "spool", "freeze", vault), 0o700)
        for args in ([], ["--json"]):
            proc = subprocess.run(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                 sys.executable, "-m", "cryophile", "-S", os.path.join(d, "spool"), "status",
                 *args], capture_output=True, text=True, timeout=60,
                env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(health.__file__))})
            assert proc.returncode == 11, proc
            assert proc.stderr.splitlines() == [
                f"cryophile: error: cannot read {d}/spool/freeze/{vault}: Permission denied "
                "(check ownership and permissions)"]
            assert proc.stdout == ""
