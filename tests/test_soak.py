"""A seeded, bounded crash/fault soak of backup, freeze, thaw, restore and the mount
(see tests/soakrig.py for the rig, the model and the knobs).

Prints ``soak: N trials, M failures`` and fails with the list of failures, each
with its seed and trial number: rerun one with CRYOPHILE_SOAK_SEED=S
CRYOPHILE_SOAK_TRIALS=T+1 (and CRYOPHILE_SOAK_KINDS=KIND to skip the others).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.clirig import thaw_daemon_running
from tests.fsrig import fskeys  # noqa: F401
from tests.soakrig import (
    BACKUP_BOUND, DAEMON_BOUND, FREEZE_BOUND, LS_BOUND, MOUNT_BOUND, NOT_COMPLETE,
    READER, RESTORE_BOUND, WRITER, Archive, Budget, KiB, Listed, MiB, Mount, Proc, Run,
    Site, fuse_available, help_text, make_data, run, sha,
)
from cryophile import ids

BUDGET = Budget.from_env()
MAX_ARCHIVES = 10          # per site; then it is swept and replaced

# Trial kinds left out by default while they still find a known, reported bug
# (kind -> the bug); CRYOPHILE_SOAK_HELD_BACK=1 or CRYOPHILE_SOAK_KINDS runs them.
HELD_BACK: dict[str, str] = {}


class Soak:
    def __init__(self, tmp, keys, s3client, proxy, show=print):
        self.show = show        # progress lines (to the terminal with -s)
        self.tmp = tmp
        self.cert, self.key = keys
        self.proxy, self.s3client = proxy, s3client
        (tmp / "inputs").mkdir()
        self.local = Site("local", tmp, self.cert, self.key)
        self.s3 = Site("s3", tmp, self.cert, self.key, s3=(s3client, proxy))
        self.sites = [self.local, self.s3]
        self.model: list[Archive] = []
        self.failures: list[str] = []
        self.trial = 0
        self.kind = "setup"
        self.fuse = fuse_available()
        backup_help = help_text(self.local.argv("backup", "--help"))
        self.has_command = "COMMAND" in backup_help
        self.has_allow_empty = "--allow-empty" in backup_help
        self.kinds = {
            "backup": self.t_backup,
            "backup_kill": self.t_backup_kill,
            "producer_fails": self.t_producer_fails,
            "empty_input": self.t_empty_input,
            "reuse_ulid": self.t_reuse_ulid,
            "freeze_kill": self.t_freeze_kill,
            "freeze_faults": self.t_freeze_faults,
            "two_freeze_daemons": self.t_two_freeze_daemons,
            "backup_and_freeze_kill": self.t_backup_and_freeze_kill,
            "restore_kill": self.t_restore_kill,
            "concurrent_restores": self.t_concurrent_restores,
            "thaw_daemon_kill": self.t_thaw_daemon_kill,
            "damage": self.t_damage,
        }
        if self.fuse:
            self.kinds["mount_write_kill"] = self.t_mount_write_kill
            self.kinds["mount_read"] = self.t_mount_read

    # --- bookkeeping -------------------------------------------------------------

    def say(self, text: str) -> None:
        self.show(f"soak: trial {self.trial} [{self.kind}] {text}")

    def fail(self, text: str) -> None:
        entry = f"seed {BUDGET.seed} trial {self.trial} [{self.kind}]: {text}"
        self.failures.append(entry)
        self.show(f"soak: FAILURE {entry}")

    def ended(self, r: Run) -> bool:
        """Checks every command: within its bound, no traceback.  True if it ended
        by itself (not killed by the test, not past its bound)."""
        if r.overran:
            self.fail(f"{r.what} did not end within its bound of {r.bound:.0f} s "
                      f"(killed); stderr: {r.last_line()!r}")
            return False
        if r.killed:
            return False
        if b"Traceback" in r.stderr:
            self.fail(f"{r.what} printed a traceback ending in {_exception(r.stderr)!r}")
        return True

    def new_input(self, rng: random.Random, size: int) -> tuple[bytes, object]:
        data = make_data(rng, size)
        path = self.tmp / "inputs" / f"{self.trial}-{rng.randrange(1 << 30)}"
        path.write_bytes(data)
        return data, path

    def add(self, site: Site, data: bytes, path, status: str, complete_input: bool,
            ulid: str | None, prefix: str = "", name: str = "") -> Archive:
        a = Archive(site, self.trial, name, path, sha(data), len(data), status,
                    complete_input, ulid, prefix)
        self.model.append(a)
        return a

    def archives(self, site: Site, sealed: bool = True, damaged: bool = False) -> list[Archive]:
        return [a for a in self.model if a.site is site and a.ulid
                and (not sealed or a.status == "sealed")
                and (damaged or not a.damaged) and not a.reported]

    def pick_site(self, rng: random.Random, s3_only: bool = False) -> Site:
        return self.s3 if s3_only else rng.choice(self.sites)

    # --- the backup command --------------------------------------------------------

    def backup_args(self, rng: random.Random, site: Site, size: int) -> tuple[list[str], str]:
        prefix = rng.choice(["", "", "tank/home", "pool/db(1)"])
        args = ["-C", rng.choice(["none", "lz4", "zstd"])]
        if site.is_s3 and size > 5 * MiB:
            args = ["-C", "none", "-s", "6MiB"]         # one fragment past part_size
        else:
            frag = rng.choice(["64KiB", "256KiB", "1MiB"] + ([] if site.is_s3 else ["8KiB"]))
            args += ["-s", frag]
        if prefix:
            args += ["-p", prefix]
        return args, prefix

    def size(self, rng: random.Random, site: Site) -> int:
        r = rng.random()
        if r < 0.3:
            return rng.randint(1, 64 * KiB)
        if r < 0.7:
            return rng.randint(64 * KiB, MiB)
        if site.is_s3 and r < 0.85:
            return rng.randint(5 * MiB + 256 * KiB, 7 * MiB)     # multipart
        return rng.randint(MiB, 3 * MiB)

    def start_backup(self, rng: random.Random, site: Site, data: bytes,
                     stall_at: int | None = None, ulid: str | None = None,
                     extra: tuple[str, ...] = ()) -> tuple[Proc, str, str]:
        ulid = ulid or ids.new_ulid()
        args, prefix = self.backup_args(rng, site, len(data))
        argv = site.argv("backup", "-v", site.vault, "-u", ulid, "--name",
                         f"soak-{self.trial}", *args, *extra)
        return Proc(f"backup {site.name} {ulid}", argv, BACKUP_BOUND, data=data,
                    stall_at=stall_at), ulid, prefix

    def backup(self, rng: random.Random, site: Site, size: int | None = None) -> Archive | None:
        """A backup that should just work: sealed in the model if it exits 0."""
        data, path = self.new_input(rng, self.size(rng, site) if size is None else size)
        proc, ulid, prefix = self.start_backup(rng, site, data)
        r = proc.finish()
        if not self.ended(r):
            return None
        if r.rc != 0:
            self.fail(f"backup of {len(data)} bytes exited {r.rc}: {r.last_line()!r}")
            return self.add(site, data, path, "failed", True, ulid, prefix)
        if r.stdout.decode().strip() != ulid:
            self.fail(f"backup printed {r.stdout[:100]!r}, not its ULID {ulid}")
        return self.add(site, data, path, "sealed", True, ulid, prefix)

    # --- trials: backup --------------------------------------------------------------

    def t_backup(self, rng):
        site = self.pick_site(rng)
        self.backup(rng, site)
        return [site]

    def t_backup_kill(self, rng):
        site = self.pick_site(rng)
        data, path = self.new_input(rng, self.size(rng, site))
        stall = rng.randrange(len(data)) if rng.random() < 0.6 else None
        proc, ulid, prefix = self.start_backup(rng, site, data, stall_at=stall)
        if stall is not None:
            proc.stalled.wait(BACKUP_BOUND)
            delay = rng.uniform(0, 1.5)
        else:
            delay = rng.uniform(0, 3.0)
        proc.wait(delay)
        proc.kill()
        r = proc.finish()
        self.say(f"{site.name}: backup of {len(data)} bytes, stall at {stall}, "
                 f"killed after {delay:.2f} s: fed {r.fed}, rc {r.rc}, killed {r.killed}")
        if self.ended(r):        # it finished before the kill
            status = "sealed" if r.rc == 0 else "failed"
            if r.rc != 0:
                self.fail(f"backup exited {r.rc} before it was killed: {r.last_line()!r}")
        else:
            status = "maybe"
        self.add(site, data, path, status, r.input_closed, ulid, prefix)
        return [site]

    def t_producer_fails(self, rng):
        """A producer that writes part of its stream, then exits 3."""
        site = self.pick_site(rng)
        data, path = self.new_input(rng, self.size(rng, site))
        n = rng.randrange(len(data) + 1)
        produced = data[:n]
        ulid = ids.new_ulid()
        args, prefix = self.backup_args(rng, site, n)
        producer = f"head -c {n} {path}; exit 3"
        common = ["backup", "-v", site.vault, "-u", ulid, *args]
        if self.has_command:
            argv = site.argv(*common, "--", "sh", "-c", producer)
        else:       # the pipe: backup cannot know; what it got is what it seals
            argv = ["sh", "-c", f"({producer}) | " + " ".join(
                _quote(a) for a in site.argv(*common, *(
                    ["--allow-empty"] if self.has_allow_empty else [])))]
        r = run(f"backup {site.name} {ulid} of a failing producer", argv, BACKUP_BOUND)
        if not self.ended(r):
            return [site]
        ppath = self.tmp / "inputs" / f"{self.trial}-produced"
        ppath.write_bytes(produced)
        self.say(f"{site.name}: producer wrote {n} bytes then exit 3 "
                 f"({'-- COMMAND' if self.has_command else 'pipe'}): rc {r.rc}")
        if self.has_command:
            if r.rc == 0:
                self.fail("backup -- COMMAND exited 0 though its command exited 3")
            self.add(site, produced, ppath, "sealed" if r.rc == 0 else "failed", False,
                     ulid, prefix)
        else:
            if r.rc != 0:
                self.fail(f"backup of a {n}-byte stream exited {r.rc}: {r.last_line()!r}")
            self.add(site, produced, ppath, "sealed" if r.rc == 0 else "failed", True,
                     ulid, prefix)
        return [site]

    def t_empty_input(self, rng):
        site = self.pick_site(rng)
        allow = self.has_allow_empty and rng.random() < 0.5
        proc, ulid, prefix = self.start_backup(rng, site, b"", extra=(
            ("--allow-empty",) if allow else ()))
        r = proc.finish()
        if not self.ended(r):
            return [site]
        path = self.tmp / "inputs" / f"{self.trial}-empty"
        path.write_bytes(b"")
        if self.has_allow_empty and not allow:
            if r.rc == 0:
                self.fail("backup of an empty stream without --allow-empty exited 0")
            self.add(site, b"", path, "sealed" if r.rc == 0 else "failed", True, ulid, prefix)
            return [site]
        if r.rc != 0:
            self.fail(f"backup of an empty stream exited {r.rc}: {r.last_line()!r}")
        self.add(site, b"", path, "sealed" if r.rc == 0 else "failed", True, ulid, prefix)
        return [site]

    def t_reuse_ulid(self, rng):
        """backup -u of an archive that exists is refused when the spool or the
        vault can tell.  When the vault cannot be asked (S3 faults), the backup may
        go ahead, but freeze must never replace the sealed archive's objects; the
        test then drops the second copy from the spool, as its user would."""
        site = self.pick_site(rng)
        old = [a for a in self.archives(site) if not a.prefix]
        if not old:
            self.backup(rng, site)
            return [site]
        a = rng.choice(old)
        where = "spool" if site.queued(a.key) else "vault"
        blind = site.is_s3 and where == "vault" and rng.random() < 0.5
        if blind:
            self.proxy.fail_next(50, 503, "SlowDown", methods=["HEAD", "GET"])
        data, _ = self.new_input(rng, rng.randint(1, 64 * KiB))
        argv = site.argv("backup", "-v", site.vault, "-u", a.ulid, "-s", "64KiB")
        r = run(f"backup {site.name} -u {a.ulid} (exists)", argv, BACKUP_BOUND, data=data)
        self.proxy.reset()
        self.say(f"{site.name}: backup -u {a.ulid} (in the {where}"
                 f"{', vault unreachable' if blind else ''}): rc {r.rc}")
        a.verified = None       # restore it again now
        if not self.ended(r) or r.rc != 0:
            return [site]
        if not blind:
            self.fail(f"backup -u {a.ulid} of an archive in the {where} exited 0 "
                      "(it would replace a sealed archive)")
            return [site]
        mine = lambda: {k: v for k, v in site.objects().items()     # noqa: E731
                        if k.startswith(a.key + "/")}
        before = mine()
        fr = run(f"freeze --once {site.name} (a second {a.ulid} queued)",
                 site.argv("freeze", "--once"), FREEZE_BOUND)
        self.ended(fr)
        if mine() != before:
            self.fail(f"freeze replaced the vault objects of sealed archive {a.key} "
                      f"with a second backup -u {a.ulid} (freeze rc {fr.rc})")
            a.damaged = "replaced by a second backup of the same ULID"
        for q in ("backup", "freeze"):
            shutil.rmtree(site.spool / q / site.vault / a.key, ignore_errors=True)
        return [site]

    # --- trials: freeze ---------------------------------------------------------------

    def ensure_queued(self, rng, site: Site) -> None:
        if not any(site.queued(a.key) for a in self.archives(site)):
            self.backup(rng, site)

    def t_freeze_kill(self, rng):
        site = self.pick_site(rng)
        self.ensure_queued(rng, site)
        if site.is_s3:
            self.proxy.slow_next(rng.randint(0, 6), rng.uniform(0.1, 0.5), methods=["PUT"])
        daemon = rng.random() < 0.3
        argv = site.argv("freeze", *([] if daemon else ["--once"]))
        proc = Proc(f"freeze {'daemon' if daemon else '--once'} {site.name}", argv,
                    FREEZE_BOUND)
        delay = rng.uniform(0, 4.0)
        proc.wait(delay)
        proc.kill()
        r = proc.finish()
        self.say(f"{site.name}: freeze killed after {delay:.2f} s (rc {r.rc})")
        if self.ended(r) and r.rc != 0:
            self.fail(f"freeze exited {r.rc} before it was killed: {r.last_line()!r}")
        self.proxy.reset()
        return [site]

    def t_freeze_faults(self, rng):
        site = self.s3
        self.ensure_queued(rng, site)
        faults = []
        for _ in range(rng.randint(1, 4)):
            kind = rng.choice(["fail", "reset", "slow", "cut"])
            n = rng.randint(1, 3)
            methods = rng.choice([["PUT"], ["POST"], ["PUT", "POST"], None])
            if kind == "fail":
                self.proxy.fail_next(n, rng.choice([500, 503]), "SlowDown", methods=methods)
            elif kind == "reset":
                self.proxy.reset_next(n, methods=methods)
            elif kind == "slow":
                self.proxy.slow_next(n, rng.uniform(0.2, 2.0), methods=methods)
            else:
                self.proxy.cut_next(n, rng.randint(0, 200), methods=["GET"])
            faults.append(f"{kind}x{n} {methods}")
        r = run(f"freeze --once {site.name} with faults {faults}",
                site.argv("freeze", "--once"), FREEZE_BOUND)
        self.say(f"faults {faults}: rc {r.rc}")
        if self.ended(r) and r.rc not in (0, 10):
            self.fail(f"freeze under faults {faults} exited {r.rc}: {r.last_line()!r}")
        self.proxy.reset()
        return [site]

    def t_two_freeze_daemons(self, rng):
        """Two freeze daemons on one spool, started while a backup runs or after it
        (then both find the same queue); one killed, one stopped."""
        site = self.pick_site(rng)
        data, path = self.new_input(rng, self.size(rng, site))
        during = rng.random() < 0.4

        def start():
            return [Proc(f"freeze daemon {i} {site.name}", site.argv("freeze"), DAEMON_BOUND)
                    for i in (1, 2)]
        daemons = start() if during else []
        proc, ulid, prefix = self.start_backup(rng, site, data)
        r = proc.finish()
        if self.ended(r) and r.rc != 0:
            self.fail(f"backup beside two freeze daemons exited {r.rc}: {r.last_line()!r}")
        a = self.add(site, data, path, "sealed" if r.rc == 0 else "failed", True, ulid, prefix)
        daemons = daemons or start()
        deadline = time.monotonic() + rng.uniform(0, 6.0)
        while site.queued(a.key) and time.monotonic() < deadline \
                and all(d.running() for d in daemons):
            time.sleep(0.05)
        self.say(f"{site.name}: two daemons {'during' if during else 'after'} a backup of "
                 f"{len(data)} bytes; {'still queued' if site.queued(a.key) else 'frozen'}")
        rng.shuffle(daemons)
        killed, stopped = daemons
        killed.kill()
        stopped.signal(signal.SIGTERM)
        kr, sr = killed.finish(), stopped.finish()
        if self.ended(kr):
            self.fail(f"{kr.what} exited {kr.rc} by itself: {kr.last_line()!r}")
        # -15: the signal came before the interpreter set its handlers up
        if self.ended(sr) and sr.rc not in (0, -15, 130):
            self.fail(f"{sr.what} exited {sr.rc} on SIGTERM: {sr.last_line()!r}")
        return [site]

    def t_backup_and_freeze_kill(self, rng):
        """A freeze daemon uploads fragments of a backup in progress; both die
        (on S3, half the time while a multipart upload of a fragment is open)."""
        site = self.pick_site(rng)
        multipart = site.is_s3 and rng.random() < 0.5
        data, path = self.new_input(rng, 7 * MiB if multipart else self.size(rng, site))
        daemon = Proc(f"freeze daemon {site.name}", site.argv("freeze"), DAEMON_BOUND)
        stall = rng.randrange(6 * MiB + 64 * KiB, len(data)) if multipart \
            else rng.randrange(len(data) // 2, len(data))
        proc, ulid, prefix = self.start_backup(rng, site, data, stall_at=stall)
        proc.stalled.wait(BACKUP_BOUND)
        if multipart:       # fragment 1 (6 MiB, in 5 MiB parts) is being uploaded
            self.proxy.slow_next(2, 1.0, methods=["PUT"], path_contains="uploadId")
            deadline = time.monotonic() + 20
            while not site.uploads() and daemon.running() and time.monotonic() < deadline:
                time.sleep(0.02)
            first, second = daemon, proc
        else:
            time.sleep(rng.uniform(0, 2.0))
            first, second = (daemon, proc) if rng.random() < 0.5 else (proc, daemon)
        first.kill()
        time.sleep(rng.uniform(0, 0.5))
        second.kill()
        r, dr = proc.finish(), daemon.finish()
        self.ended(dr)
        self.say(f"{site.name}: backup of {len(data)} bytes stalled at {stall}, "
                 f"{'freeze' if first is daemon else 'backup'} killed first; "
                 f"{len(site.uploads())} multipart upload(s) open")
        if self.ended(r):
            self.fail(f"a backup whose input stalled ended by itself: rc {r.rc}")
        self.add(site, data, path, "maybe", False, ulid, prefix)
        self.proxy.reset()
        return [site]

    # --- trials: restore and thaw ------------------------------------------------------

    def frozen(self, site: Site) -> list[Archive]:
        return [a for a in self.archives(site) if not site.queued(a.key)]

    def some_archive(self, rng, site: Site, frozen: bool = False) -> Archive | None:
        found = self.frozen(site) if frozen else self.archives(site)
        found = [a for a in found if a.size] or found
        if not found:
            a = self.backup(rng, site)
            if a is None or a.status != "sealed":
                return None
            if frozen:
                r = run(f"freeze --once {site.name}", site.argv("freeze", "--once"),
                        FREEZE_BOUND)
                if self.ended(r) and r.rc != 0:
                    self.fail(f"freeze --once exited {r.rc}: {r.last_line()!r}")
                    return None
            return a
        return rng.choice(found)

    def check_restore(self, a: Archive, r: Run, ok_codes=()) -> bool:
        """A restore that ended: right bytes with exit 0, else a clean failure."""
        if not self.ended(r):
            return False
        if r.rc == 0:
            if sha(r.stdout) != a.digest:
                self.fail(f"{r.what} exited 0 with wrong bytes ({len(r.stdout)} of "
                          f"{a.size}){' (damaged: ' + a.damaged + ')' if a.damaged else ''}")
                return False
            return True
        if r.rc not in ok_codes:
            self.fail(f"{r.what} exited {r.rc}: {r.last_line()!r}")
        return False

    def restore_subject(self, rng, frozen: float, delays=()) -> tuple[Site, Archive | None]:
        """A site and an archive to restore, frozen with the chance ``frozen``; on S3 the
        proxy's restore delay drawn from ``delays``."""
        site = self.pick_site(rng)
        a = self.some_archive(rng, site, frozen=frozen >= 1 or rng.random() < frozen)
        if a is not None and site.is_s3 and delays:
            self.proxy.restore_delay = rng.choice(delays)
        return site, a

    def restores_checked(self, site: Site, a: Archive, runs: list[Run], ok_codes=(),
                         killed: bool = False) -> list[Site]:
        """Each restore's bytes, or its clean failure; after a kill the final check
        restores the archive again (a killed process may have left the spool changed)."""
        for r in runs:
            self.check_restore(a, r, ok_codes)
        self.proxy.reset()
        if killed:
            a.verified = None
        return [site]

    def t_restore_kill(self, rng):
        site, a = self.restore_subject(rng, 0.7, [0, 0, 1.0, 2.5])
        if a is None:
            return [site]
        proc = Proc(f"restore {site.name} {a.ulid}", site.restore_argv(a), RESTORE_BOUND)
        delay = rng.uniform(0, 3.0)
        proc.wait(delay)
        proc.kill()
        r = proc.finish()
        self.say(f"{site.name}: restore of {a.size} bytes killed after {delay:.2f} s")
        return self.restores_checked(site, a, [r], killed=True)

    def t_concurrent_restores(self, rng):
        site, a = self.restore_subject(rng, 0.7, [0, 1.0, 2.0])
        if a is None:
            return [site]
        procs = []
        for i in range(rng.choice([2, 2, 3])):
            procs.append(Proc(f"restore #{i + 1} {site.name} {a.ulid} (concurrent)",
                              site.restore_argv(a), RESTORE_BOUND))
            time.sleep(rng.uniform(0, 0.5))
        return self.restores_checked(site, a, [p.finish() for p in procs])

    def t_thaw_daemon_kill(self, rng):
        """A restore leaves the fetching to a running `cryophile thaw`, which dies."""
        site, a = self.restore_subject(rng, 1, [1.5, 3.0])
        if a is None:
            return [site]
        daemon = Proc(f"thaw daemon {site.name}", site.argv("thaw"), DAEMON_BOUND)
        deadline = time.monotonic() + LS_BOUND
        while not thaw_daemon_running(site.spool) and daemon.running() \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        proc = Proc(f"restore {site.name} {a.ulid} (thaw daemon killed)", site.restore_argv(a),
                    RESTORE_BOUND)
        requests = site.spool / "thaw" / site.vault / a.key
        while proc.running() and not (requests.is_dir() and any(requests.iterdir())) \
                and time.monotonic() < deadline + RESTORE_BOUND:
            time.sleep(0.02)
        delay = rng.uniform(0, 1.0)       # before the daemon's next look, or mid-thaw
        proc.wait(delay)
        daemon.kill()
        self.ended(daemon.finish())
        self.say(f"{site.name}: thaw daemon killed after {delay:.2f} s")
        r = proc.finish()
        return self.restores_checked(site, a, [r], ok_codes=(1, 8, 10, 11, 130), killed=True)

    # --- trials: damage ------------------------------------------------------------

    def t_damage(self, rng):
        site, a = self.restore_subject(rng, 1)
        if a is None or site.queued(a.key):
            return [site]
        keys = sorted(k for k in site.objects() if k.startswith(a.key + "/"))
        if not keys:
            self.fail(f"archive {a.key} has no objects in the vault")
            return [site]
        chunks = [k for k in keys if not k.endswith("/chunk.0")]
        key = rng.choice(chunks) if chunks and rng.random() < 0.85 else f"{a.key}/chunk.0"
        how = rng.choice(["flip", "flip", "truncate", "delete"])
        a.damaged = site.damage(key, how, rng)
        self.say(f"{site.name}: {a.damaged} (archive of {a.size} bytes)")
        r = run(f"restore {site.name} {a.ulid} after {a.damaged}", site.restore_argv(a),
                RESTORE_BOUND)
        codes = (7, 8, 9) if key.endswith("/chunk.0") else (8, 9)
        if self.ended(r) and r.rc not in codes:
            right = sha(r.stdout) == a.digest
            if r.rc == 0 and right and key.endswith("/chunk.0"):
                self.say("restore ignored the damage to chunk.0's clear part: bytes right")
            else:
                self.fail(f"restore after {a.damaged} exited {r.rc}, not one of {codes}"
                          f"{' with wrong bytes' if r.rc == 0 and not right else ''}: "
                          f"{r.last_line()!r}")
        return [site]

    # --- trials: the mount -----------------------------------------------------------

    def t_mount_write_kill(self, rng):
        site = self.pick_site(rng)
        data, path = self.new_input(rng, self.size(rng, site))
        name = f"soak-{self.trial}-w"
        before = site.ulids()
        mount = Mount(site)
        try:
            if not mount.wait_up():
                self.fail(f"the mount did not come up: {mount.why()!r}")
                return [site]
            target = site.mnt / "incoming" / site.vault / name
            writer = Proc(f"writer of {name}", [sys.executable, "-c", WRITER, str(target),
                                                str(path), str(rng.choice([4096, 65536, MiB]))],
                          MOUNT_BOUND)
            mode = rng.choice(["delay", "delay", "after_close", "none"])
            if mode == "delay":
                writer.wait(rng.uniform(0, 2.0))
                mount.proc.kill()
            elif mode == "after_close":
                deadline = time.monotonic() + MOUNT_BOUND
                while b"closed" not in bytes(writer._out) and writer.running() \
                        and time.monotonic() < deadline:
                    time.sleep(0.002)
                mount.proc.kill()
            wr = writer.finish()
            self.ended(wr)
        finally:
            mr, clean = mount.unmount()
        lines = wr.stdout.decode().split("\n")
        closed = any(l.startswith("closed") for l in lines)
        wrote_all = f"w {len(data)}" in lines or (not data and closed)
        self.say(f"{site.name}: write of {len(data)} bytes, mount {mode}: "
                 f"{[l for l in lines if l][-2:]}")
        if mode == "none" and not closed:
            self.fail(f"writing {len(data)} bytes into a live mount failed: {lines[-3:]}")
        self.mount_ended(mr, clean, killed=mode != "none")
        new = sorted(site.ulids() - before)
        if len(new) > 1:
            self.fail(f"one file written in the mount made {len(new)} archives: {new}")
        if closed and not new:
            self.fail(f"{name} ({len(data)} bytes) was closed with success (mount "
                      f"{mode}), but it left no archive: lost")
        if new:
            self.add(site, data, path, "sealed" if closed else "maybe", wrote_all, new[0],
                     name=name)
        return [site]

    def t_mount_read(self, rng):
        site = self.pick_site(rng)
        found = self.archives(site, damaged=True)
        if not found:
            self.backup(rng, site)
            found = self.archives(site, damaged=True)
        if not found:
            return [site]
        a = rng.choice(found)
        data = a.bytes()
        reads = [(rng.randrange(max(a.size, 1)), rng.choice([1, 100, 4096, 70000, MiB]))
                 for _ in range(rng.randint(1, 12))]
        kill = rng.random() < 0.4
        if site.is_s3:
            self.proxy.restore_delay = rng.choice([0, 0.5])
        mount = Mount(site)
        try:
            if not mount.wait_up():
                self.fail(f"the mount did not come up: {mount.why()!r}")
                return [site]
            path = site.mnt / site.vault / a.key
            reader = Proc(f"reader of {a.key}", [sys.executable, "-c", READER, str(path),
                                                 json.dumps(reads)], MOUNT_BOUND)
            if kill:
                reader.wait(rng.uniform(0, 2.0))
                mount.proc.kill()
            rr = reader.finish()
            self.ended(rr)
        finally:
            mr, clean = mount.unmount()
            self.proxy.reset()
        self.say(f"{site.name}: {len(reads)} reads of {a.key}"
                 f"{' (damaged)' if a.damaged else ''}{', mount killed' if kill else ''}")
        errors = 0
        for line in rr.stdout.decode().splitlines():
            rec = json.loads(line)
            if "errno" in rec:
                errors += 1
            if rec["op"] == "pread" and "sha" in rec:
                want = data[rec["off"]:rec["off"] + rec["n"]]
                if sha(want) != rec["sha"] or (rec["n"] == 0 and rec["off"] < a.size):
                    self.fail(f"read of {a.key} at {rec['off']} gave wrong bytes "
                              f"({rec['n']} bytes){' (damaged)' if a.damaged else ''}")
            if rec["op"] == "all" and sha(data[:rec["n"]]) != rec["sha"]:
                self.fail(f"sequential read of {a.key} gave wrong bytes before byte "
                          f"{rec['n']}{' (damaged)' if a.damaged else ''}")
            if rec["op"] == "all" and "errno" not in rec and rec["n"] != a.size \
                    and not kill and not rr.killed:
                self.fail(f"sequential read of {a.key} ended at {rec['n']} of {a.size}")
        if not kill and not a.damaged and errors and not rr.overran:
            self.fail(f"reads of an intact archive failed: {rr.stdout.decode()[-500:]}")
        self.mount_ended(mr, clean, killed=kill)
        return [site]

    def mount_ended(self, mr: Run, clean: bool, killed: bool) -> None:
        """A mount nobody killed unmounts cleanly and exits 0; any mount ends."""
        if killed:
            self.ended(mr)
            return
        if not clean:
            self.fail("the mount did not unmount cleanly")
        if self.ended(mr) and mr.rc != 0:
            self.fail(f"cryophilefs exited {mr.rc}: {mr.last_line()!r}")

    # --- invariants -------------------------------------------------------------------

    def ls(self, site: Site) -> list[Listed] | None:
        r = run(f"ls {site.name}", site.argv("ls", "--json", site.vault), LS_BOUND)
        if not self.ended(r):
            return None
        damaged = any(a.damaged for a in self.model if a.site is site)
        if r.rc != 0 and not (r.rc == 9 and damaged):      # 9: a chunk.0 it skipped
            self.fail(f"ls exited {r.rc}: {r.last_line()!r}")
            return None
        try:
            entries = json.loads(r.stdout)
            return [Listed(f"{e['prefix']}/{e['ulid']}" if e["prefix"] else e["ulid"],
                           e["state"], e.get("name") or "") for e in entries]
        except (ValueError, KeyError, TypeError) as exc:
            self.fail(f"cannot read ls --json ({exc}): {r.stdout[:300]!r}")
            return None

    def check(self, sites: list[Site], rng: random.Random, full: bool = False) -> None:
        self.proxy.reset()
        for site in dict.fromkeys(sites):
            self.check_site(site, rng, full)

    def check_site(self, site: Site, rng: random.Random, full: bool) -> None:
        froze = full or rng.random() < 0.7
        if froze:
            r = run(f"freeze --once {site.name} (recovery)", site.argv("freeze", "--once"),
                    FREEZE_BOUND)
            if self.ended(r) and r.rc != 0:
                self.fail(f"freeze --once after the trial exited {r.rc}: {r.last_line()!r}")
            left = site.uploads()
            if left:
                self.fail(f"{len(left)} multipart upload(s) left after freeze: {left}")
                self._abort_uploads(site)
        listing = self.ls(site)
        if listing is None:
            return
        by_key = {a.key: a for a in self.model if a.site is site and a.ulid}
        complete = {e.key: e for e in listing if e.state not in NOT_COMPLETE}
        objects = site.objects()
        for k, e in complete.items():
            a = by_key.get(k)
            if a is None:
                self.fail(f"ls shows {k} as {e.state}, an archive the test never made")
                continue
            if a.status == "failed" and not a.reported:
                a.reported = True
                self.fail(f"ls shows {k} as {e.state}, but its backup failed "
                          f"(trial {a.trial})")
            elif a.status == "maybe" and not a.complete_input and not a.reported:
                a.reported = True
                self.fail(f"ls shows {k} as {e.state}, but its input never ended "
                          f"(trial {a.trial}: killed mid-stream)")
            if a.damaged or a.reported:
                continue
            sig = (e.state, tuple(sorted((o, v) for o, v in objects.items()
                                         if o.startswith(k + "/"))), site.spool_files(k))
            if sig == a.verified and not full:
                continue
            r = run(f"restore {site.name} {k} ({e.state})", site.restore_argv(a),
                    RESTORE_BOUND)
            if self.check_restore(a, r):
                a.verified = (e.state, sig[1], site.spool_files(k))
                if a.status == "maybe":
                    a.status = "sealed"        # complete once: must stay so
            else:
                a.reported = True
        for a in self.archives(site):
            if a.key not in complete and not a.reported:
                a.reported = True
                state = next((e.state for e in listing if e.key == a.key), "not listed")
                self.fail(f"sealed archive {a.key} ({a.size} bytes, trial {a.trial}) is "
                          f"{state}: lost")

    def _abort_uploads(self, site: Site) -> None:
        client = site.s3[0]
        for u in client.list_multipart_uploads(Bucket=site.vault).get("Uploads", ()):
            client.abort_multipart_upload(Bucket=site.vault, Key=u["Key"],
                                          UploadId=u["UploadId"])

    # --- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        names = sorted(self.kinds)
        if BUDGET.kinds:
            unknown = set(BUDGET.kinds) - set(names)
            assert not unknown, f"unknown CRYOPHILE_SOAK_KINDS {sorted(unknown)}: {names}"
            names = [n for n in names if n in BUDGET.kinds]
        elif os.environ.get("CRYOPHILE_SOAK_HELD_BACK") != "1":
            names = [n for n in names if n not in HELD_BACK]
        for kind in HELD_BACK:
            if kind not in names:
                self.show(f"soak: {kind} held back: {HELD_BACK[kind]} "
                          "(CRYOPHILE_SOAK_HELD_BACK=1 runs it)")
        start = time.monotonic()
        order: list[str] = []
        while BUDGET.more(self.trial, time.monotonic() - start):
            if not order:       # rounds of every kind, each round in its own order
                order = list(names)
                random.Random(f"{BUDGET.seed}/round/{self.trial}").shuffle(order)
            rng = random.Random(f"{BUDGET.seed}/{self.trial}")
            self.kind = order.pop(0)
            kind = self.kind
            for site in self.sites:
                if len([a for a in self.model if a.site is site]) > MAX_ARCHIVES:
                    self.kind = "sweep"
                    self.check([site], rng, full=True)
                    self.model = [a for a in self.model if a.site is not site]
                    site.renew(self.tmp)
                    self.kind = kind
            t0 = time.monotonic()
            touched = self.kinds[self.kind](rng)
            self.check(touched, rng)
            self.say(f"done in {time.monotonic() - t0:.1f} s")
            self.trial += 1
        self.kind = "final sweep"
        self.check(self.sites, random.Random(BUDGET.seed), full=True)
        return self.trial


def _exception(stderr: bytes) -> str:
    """The last exception line of a traceback (trio's groups indent it with |)."""
    lines = [l.strip(" |+-") for l in stderr.decode(errors="replace").splitlines()]
    found = [l for l in lines if re.match(r"^[\w.]+(Error|Exception|Group)\b", l)]
    return (found or [l for l in lines if l] or [""])[-1][:400]


def _quote(arg: str) -> str:
    import shlex
    return shlex.quote(arg)


@pytest.mark.timeout(BUDGET.timeout())
def test_soak(tmp_path, fskeys, s3client, s3proxy, capsys, request):  # noqa: F811
    def terminal(text: str) -> None:
        with capsys.disabled():
            print(text, flush=True)

    def show(text: str) -> None:
        """With -s on the terminal as they come, else kept for a failure's report."""
        (terminal if request.config.getoption("capture") == "no" else print)(text)
    terminal(f"\nsoak: seed {BUDGET.seed} (CRYOPHILE_SOAK_SEED), "
             f"budget {BUDGET.trials or '-'} trials / {BUDGET.seconds or '-'} s")
    soak = Soak(tmp_path, fskeys, s3client, s3proxy, show)
    try:
        trials = soak.run()
    finally:
        for site in soak.sites:
            subprocess.run(["fusermount3", "-uz", str(site.mnt)], capture_output=True)
            site.remove_buckets()
    terminal(f"soak: {trials} trials, {len(soak.failures)} failures")
    assert not soak.failures, f"soak (seed {BUDGET.seed}): {trials} trials, " \
        f"{len(soak.failures)} failures:\n" + "\n".join(soak.failures)


@pytest.mark.timeout(300)
def test_abandoned_backup_leaves_no_multipart_upload(tmp_path, fskeys, s3client,  # noqa: F811
                                                     s3proxy):
    """A backup killed while a freeze was uploading one of its fragments in parts:
    the next freeze, which drops the dead backup, aborts that upload too (the
    soak found it open for ever: billed parts nobody sees)."""
    site = Site("s3", tmp_path, *fskeys, s3=(s3client, s3proxy))
    ulid = ids.new_ulid()
    data = os.urandom(6 * MiB + 100 * KiB)
    backup = Proc("backup", site.argv("backup", "-v", site.vault, "-u", ulid, "-C", "none",
                                      "-s", "6MiB"), BACKUP_BOUND, data=data,
                  stall_at=len(data) - 1)
    try:
        assert backup.stalled.wait(BACKUP_BOUND)
        fragment = site.spool / "freeze" / site.vault / ulid / "chunk.1"
        deadline = time.monotonic() + BACKUP_BOUND
        while not fragment.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        # what a freeze killed mid-upload leaves: an open upload with a part
        key = f"{ulid}/chunk.1"
        upload = s3client.create_multipart_upload(Bucket=site.vault, Key=key,
                                                  StorageClass="GLACIER")["UploadId"]
        s3client.upload_part(Bucket=site.vault, Key=key, UploadId=upload, PartNumber=1,
                             Body=data[:5 * MiB])
    finally:
        backup.kill()
        backup.finish()
    r = run("freeze --once", site.argv("freeze", "--once"), FREEZE_BOUND)
    assert r.rc == 0, r.stderr.decode(errors="replace")
    try:
        assert site.uploads() == []
        assert not (site.spool / "freeze" / site.vault / ulid).exists()
    finally:
        site.remove_buckets()
