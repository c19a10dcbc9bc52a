"""cryophilefs [-S SPOOL] [-c CONFIG] [-k KEYRING…] [-P FD] [-f] [-o OPTS] MOUNTPOINT

Lifecycle in one place: arguments and keys are checked first (errors go to
the terminal), then the process detaches (unless -f) and mounts; the parent
exits only once the mount is up, so `mount` and fstab see its real status.
pyfuse3's loop, freeze and thaw run in one trio nursery; SIGTERM, SIGINT
and SIGHUP unmount cleanly.

Detached, the log goes to --log-file (stderr too, so that nothing written
there is lost), else to syslog; with neither, the mount refuses to detach
rather than log nowhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import logging.handlers
import os
import signal
import sys

import pyfuse3
import shtab
import trio

from cryophile import __version__, config as configuration, errors, keys, log as logsetup, thaw
from cryophile import health, sdnotify, throttle
from cryophile.options import (add_log_file_option, add_spool_options, add_verbosity_options,
                               passphrase_reader)
from cryophile.freeze import Freezer
from cryophile.ledger import Guard
from cryophile.pipeline import buffers
from cryophile.spool import FreezeDaemonLock, Spool

from .operations import Operations, Settings
from .reader import FsThawer
from .thawpolicy import ReadPolicy

log = logging.getLogger("cryophilefs")
PROG = "cryophilefs"

# mount(8) and fstab options that mean nothing to a FUSE filesystem
IGNORED = {"defaults", "auto", "noauto", "user", "users", "nouser", "nofail", "_netdev",
           "owner", "group", "rw"}
# passed to the kernel / libfuse as they are
PASSED = {"allow_other", "default_permissions", "ro", "nosuid", "suid", "nodev", "dev",
          "noexec", "exec", "noatime", "atime", "relatime", "sync", "async", "dirsync",
          "auto_unmount"}
PASSED_VALUES = {"fsname", "subtype"}
# libfuse takes these at mount time, then refuses the mount at FUSE_INIT
# (pyfuse3 cannot ask for the same value there): refused here, with the reason
REFUSED = {"max_read": "libfuse refuses it with pyfuse3; reads are not limited"}
TIERS = ("Expedited", "Standard", "Bulk")
SYSLOG = "/dev/log"

DESCRIPTION = """\
Mount cryophile vaults as a filesystem.  Write a backup by writing a file:
  zfs send -w tank/home@monday > MOUNTPOINT/incoming/VAULT/tank/home/monday
and read an archive back (thawing it from cold storage if needed):
  cat MOUNTPOINT/VAULT/tank/home/ULID | zfs receive -vu backup/home"""

EPILOG = """\
mount options (-o, comma separated):
  spool=DIR, config=FILE, keyring=FILE   as -S, -c and -k (keyring repeatable)
  pass_fd=FD, log_file=PATH              as -P and --log-file
  allow_other                            let other users in (adds default_permissions)
  allow_delete                           unlink of an archive deletes it (as cryophile rm)
  restore_tier=Expedited|Standard|Bulk   thaw tier instead of the vault's
  restore_days=N                         days a thawed copy stays in the vault
  thaw_poll=SECONDS                      first wait between restore polls
  fsname=NAME, ro, nosuid, nodev, …      passed to FUSE
Unmount with `fusermount3 -u MOUNTPOINT` or `umount MOUNTPOINT`.
See cryophilefs(8)."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_spool_options(p)
    p.add_argument("-k", "--keyring", action="append", default=[], metavar="KEYRING",
                   help="certificate(s) to encrypt backups to (vaults without a configured "
                        "keyring) and secret key(s) to read archives; repeatable")
    p.add_argument("-P", "--pass-fd", type=int, metavar="FD",
                   help="read the secret key's passphrase from file descriptor FD")
    p.add_argument("-f", "--foreground", action="store_true",
                   help="stay in the foreground, logging to stderr")
    add_log_file_option(p)
    p.add_argument("-o", "--options", action="append", default=[], metavar="OPTS",
                   help="mount options, comma separated (see below)")
    add_verbosity_options(p)
    p.add_argument("-V", "--version", action="version", version=f"{PROG} {__version__}")
    shtab.add_argument_to(p, "--print-completion", help="print a completion script for that shell")
    p.add_argument("where", nargs="+", metavar="MOUNTPOINT",
                   help="where to mount (mount(8) style `SOURCE MOUNTPOINT` works too)")
    return p


@dataclasses.dataclass
class Options:
    fuse: set
    allow_other: bool = False
    allow_delete: bool = False
    restore_tier: str | None = None
    restore_days: int | None = None
    thaw_poll: float = thaw.POLL_MIN


def parse_options(args) -> Options:
    """-o options: ours fill ``args`` (spool=, config=, keyring=, pass_fd=) or Options."""
    opts = Options(fuse={"fsname=cryophile", "subtype=cryophilefs"})
    for item in (i.strip() for group in args.options for i in group.split(",")):
        name, eq, value = item.partition("=")
        if not item or name in IGNORED or name.startswith(("x-", "comment")):
            continue
        if _ours(args, opts, name, value, bool(eq)):
            continue
        if name in REFUSED:
            raise errors.UsageError(f"mount option {item!r} is not supported: {REFUSED[name]}")
        if (name in PASSED and not eq) or (name in PASSED_VALUES and eq):
            if name in ("fsname", "subtype"):
                opts.fuse = {o for o in opts.fuse if not o.startswith(name + "=")}
            opts.fuse.add(item)
            continue
        raise errors.UsageError(f"unknown mount option {item!r} (see cryophilefs(8))")
    opts.allow_other = "allow_other" in opts.fuse
    if opts.allow_other:
        opts.fuse.add("default_permissions")   # the kernel checks modes for other users
    return opts


def _ours(args, opts: Options, name: str, value: str, has_value: bool) -> bool:
    if name in ("spool", "config", "keyring", "pass_fd", "restore_tier", "restore_days",
                "thaw_poll", "log_file") and not has_value:
        raise errors.UsageError(f"mount option {name} needs a value ({name}=…)")
    if name == "spool":
        args.spool = args.spool or value
    elif name == "config":
        args.config = args.config or value
    elif name == "keyring":
        args.keyring.append(value)
    elif name == "log_file":
        args.log_file = args.log_file or value
    elif name == "pass_fd":
        args.pass_fd = _number(name, value, int)
    elif name == "restore_tier":
        if value not in TIERS:
            raise errors.UsageError(f"restore_tier must be one of {', '.join(TIERS)}")
        opts.restore_tier = value
    elif name == "restore_days":
        opts.restore_days = _number(name, value, int)
    elif name == "thaw_poll":
        opts.thaw_poll = _number(name, value, float)
    elif name == "allow_delete" and not has_value:
        opts.allow_delete = True
    else:
        return False
    return True


def _number(name: str, value: str, kind):
    try:
        number = kind(value)
    except ValueError:
        number = -1
    if number <= 0:
        raise errors.UsageError(f"mount option {name}={value!r} must be a positive number")
    return number


class _LateReply(logging.Filter):
    """A reply to a request whose process is gone (a release racing an unmount,
    an interrupted reader) is routine: keep it out of the error log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "fuse_reply_" in record.getMessage() and "No such file" in record.getMessage():
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return log.isEnabledFor(logging.DEBUG)
        return True


def load_keys(paths: list[str], pass_fd: int | None):
    """-k files: certificates (any file with an encryption key) and secret keys."""
    certificates, secret = [], []
    for path in paths:
        why = None
        try:
            certificates += keys.load_certificates([path], secret_ok=True)
        except errors.KeyringError as exc:
            log.debug("%s gives no recipient: %s", path, exc)
            why = exc
        try:
            keys.load_secret_keys([path], None)
            secret.append(path)
        except errors.KeyringError:
            if why is not None:     # a file that serves nothing is a mistake, not a skip
                raise errors.KeyringError(f"no usable certificate or secret key in {path}: "
                                          f"{why}") from None
    keyring = keys.load_secret_keys(secret, passphrase_reader(pass_fd)) if secret else None
    return certificates or None, keyring


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logsetup.setup(PROG, args.debug - args.quiet)
    logging.getLogger("pyfuse3").addFilter(_LateReply())
    try:
        return mount(args)
    except errors.Error as exc:
        log.error("%s", exc)
        if args.log_file and not _same_file(sys.stderr, args.log_file):
            # the log went to the file: whoever started the mount hears why too
            print(f"{PROG}: error: {logsetup.redact(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted", file=sys.stderr)
        return errors.Interrupted.exit_code


def _same_file(stream, path: str) -> bool:
    """Whether ``stream`` writes into ``path`` (stderr once the mount is up)."""
    try:
        a, b = os.fstat(stream.fileno()), os.stat(path)
    except (OSError, ValueError, AttributeError):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def mount(args) -> int:
    if len(args.where) > 2:
        raise errors.UsageError("give one MOUNTPOINT (or SOURCE MOUNTPOINT)")
    mountpoint = os.path.abspath(args.where[-1])
    opts = parse_options(args)
    if args.log_file:
        args.log_file = os.path.abspath(args.log_file)      # detaching changes to /
        logsetup.install(logsetup.file_handler(PROG, args.log_file))
    if not os.path.isdir(mountpoint):
        raise errors.UsageError(f"mount point {mountpoint} is not a directory")
    cfg = configuration.load(args.config)
    throttle.configure(cfg.limit_upload, cfg.limit_download)
    spool = Spool(args.spool or cfg.spool)
    spool.ensure()
    certificates, keyring = load_keys(args.keyring, args.pass_fd)
    if keyring is None:
        log.info("no secret key loaded: backups only (mount with -k SECRET_KEY to read)")
    mounted = None if args.foreground else detach(daemon_log(args.log_file), args.log_file)
    stores = configuration.Stores(cfg)
    settings = Settings(cfg, spool, stores, certificates, keyring, opts.allow_other,
                        allow_delete=opts.allow_delete)
    buffers.reuse_buffers()
    buffers.one_heap()          # before any thread: memory stays flat over many reads
    try:
        trio.run(serve, settings, opts, mountpoint, mounted)
    finally:
        stores.close()
    return 0


async def serve(settings: Settings, opts: Options, mountpoint: str, mounted) -> None:
    spool, cfg = settings.spool, settings.config
    settings.freezer = Freezer(spool, settings.stores, lambda v: cfg.vault(v).storage_class)
    freezing = FreezeDaemonLock(spool)      # backups wait for this freezer
    freezing.hold()
    lock = thaw.DaemonLock(spool)
    if lock.acquire():
        settings.thawer = FsThawer(spool, settings.stores, lambda v: _tier(cfg, opts, v),
                                   poll_min=opts.thaw_poll, guard=Guard(spool, cfg))
    else:
        log.info("the thaw lock is held by %s: it fetches what reads need",
                 health.thaw_holder(spool))
    settings.policy = ReadPolicy(cfg, spool, settings.stores, lambda v: _tier(cfg, opts, v))
    ops = Operations(settings)
    answered = trio.Event()
    checked = trio.Event()      # confirm_mounted has its answer, either way
    ended = trio.Event()        # pyfuse3.main returned: no terminate() from here on
    # signals are caught before the mount shows (pyfuse3.init): one sent the
    # instant it shows would otherwise kill the process and leave a dead mount
    signals = trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    try:
        with signals as received:
            async with trio.open_nursery() as nursery:
                ops.nursery = nursery
                pyfuse3.init(ops, mountpoint, opts.fuse)
                try:
                    nursery.start_soon(confirm_mounted, spool.root, mountpoint, mounted,
                                       answered, checked, ended)
                    nursery.start_soon(supervise, "freeze", settings.freezer.run)
                    if settings.thawer is not None:
                        nursery.start_soon(supervise, "thaw", settings.thawer.run)
                    nursery.start_soon(unmount_on_signal, received, checked, ended,
                                       ops.stop_waits)
                    await pyfuse3.main()
                finally:
                    ended.set()
                    with trio.CancelScope(shield=True):     # even after a failure
                        await trio.to_thread.run_sync(ops.abort_writers)
                    pyfuse3.close(unmount=True)
                    nursery.cancel_scope.cancel()
    except RuntimeError as exc:
        _report_mounted(mounted, False)
        raise errors.Error(f"cannot mount on {mountpoint}: {exc}") from None
    finally:
        lock.release()
        freezing.release()
    if not answered.is_set():
        _report_mounted(mounted, False)
        raise errors.Error(f"cannot mount on {mountpoint}: the filesystem ended before it "
                           "answered (libfuse refused the mount; see its message above)")
    log.info("unmounted %s", mountpoint)


async def confirm_mounted(root: str, mountpoint: str, detached, answered: trio.Event,
                          checked: trio.Event, ended: trio.Event) -> None:
    """Say "mounted" (log, parent process, systemd) once the mount answers a
    stat of its root: libfuse can still refuse the mount at FUSE_INIT, after
    pyfuse3.init succeeded, and then ends the session at once."""
    try:
        st = await trio.to_thread.run_sync(os.stat, mountpoint, abandon_on_cancel=True)
    except OSError as exc:
        log.debug("stat of the new mount failed: %s", exc)
        st = None
    finally:
        checked.set()
    if st is None or st.st_ino != pyfuse3.ROOT_INODE:    # refused, or already gone
        terminate(ended)
        return
    answered.set()
    _report_mounted(detached, True)
    log.info("mounted %s on %s", root, mountpoint)
    sdnotify.notify("READY=1", f"STATUS=mounted on {mountpoint}")  # Type=notify


def _tier(cfg, opts: Options, vault: str) -> tuple[str, int]:
    v = cfg.vault(vault)
    return opts.restore_tier or v.restore_tier, opts.restore_days or v.restore_days


async def supervise(name: str, run) -> None:
    """A background job that fails is logged and started again, never the mount's end."""
    delay = 1.0
    while True:
        try:
            await run()
            return
        except Exception as exc:
            known = _named_error(exc)
            if known is not None:
                log.warning("%s: %s (trying again in %.0f s)", name, known, delay)
            else:
                log.error("%s failed (trying again in %.0f s)", name, delay, exc_info=exc)
        await trio.sleep(delay)
        delay = min(delay * 2, 60.0)


def _named_error(exc: BaseException) -> errors.Error | None:
    """The first of cryophile's errors in ``exc`` (a group from a nursery), if that
    is all it holds; None means a bug."""
    while isinstance(exc, BaseExceptionGroup):
        if exc.split(errors.Error)[1] is not None:
            return None
        exc = exc.exceptions[0]
    return exc if isinstance(exc, errors.Error) else None


STARTUP_CHECK_WAIT = 10.0      # seconds a signal waits for the start-up stat


def terminate(ended: trio.Event) -> None:
    """End pyfuse3's main loop, unless it has ended: a stat answered (or a signal
    received) as a refused FUSE_INIT ends the session can be taken in after
    pyfuse3.close(), and terminate() then hands libfuse the freed session."""
    if not ended.is_set():
        pyfuse3.terminate()


async def unmount_on_signal(signals, checked: trio.Event, ended: trio.Event,
                            stop_waits=lambda: None) -> None:
    """A signal unmounts.  One that comes while the start-up stat is still on
    its way waits for it (our own loop answers it), so that a mount that was up
    ends as unmounted, exit 0, not as refused.  The FUSE loop ends only once
    every request in progress is answered: ``stop_waits`` fails those that
    wait for a thaw or for spool room, which may never come."""
    async for signum in signals:
        log.info("%s: unmounting", signal.Signals(signum).name)
        with trio.move_on_after(STARTUP_CHECK_WAIT):
            await checked.wait()
        terminate(ended)
        stop_waits()
        return


# --- detaching -------------------------------------------------------------------

@dataclasses.dataclass
class Detached:
    fd: int                             # the parent waits on this for "1" (mounted)
    syslog: logging.Handler | None      # None: the log file is already in place
    log_file: str | None


def daemon_log(log_file: str | None) -> logging.Handler | None:
    """Where a detached mount will log: checked before detaching, while errors
    still reach the terminal.  None when --log-file is in use."""
    if log_file:
        return None
    try:
        _probe_syslog()
    except OSError as exc:
        raise errors.UsageError(
            f"cannot detach: no syslog to log to ({SYSLOG}: {exc.strerror}); give "
            "--log-file PATH (-o log_file=PATH) or stay in the foreground with -f") from None
    handler = logging.handlers.SysLogHandler(SYSLOG)
    handler.setFormatter(logging.Formatter(f"{PROG}[{os.getpid()}]: %(message)s"))
    return handler


def _probe_syslog() -> None:
    """Raise OSError unless something listens on SYSLOG (SysLogHandler itself
    says nothing and drops every line when nobody does)."""
    import socket
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, kind) as probe:
            try:
                probe.connect(SYSLOG)
                return
            except OSError as exc:
                if exc.errno != errno.EPROTOTYPE:
                    raise


def detach(syslog: logging.Handler | None, log_file: str | None) -> Detached:
    """Fork; the parent waits for the child's word that the mount is up."""
    r, w = os.pipe()
    if os.fork():
        os.close(w)
        status = os.read(r, 1)
        os._exit(0 if status == b"1" else 1)
    os.close(r)
    os.setsid()
    os.chdir("/")
    if syslog is not None:      # the pid in its lines is the daemon's
        syslog.setFormatter(logging.Formatter(f"{PROG}[{os.getpid()}]: %(message)s"))
    return Detached(w, syslog, log_file)


def _report_mounted(detached: Detached | None, ok: bool) -> None:
    if detached is None:
        return
    os.write(detached.fd, b"1" if ok else b"0")
    os.close(detached.fd)
    if ok:
        _to_daemon_log(detached)


def _to_daemon_log(detached: Detached) -> None:
    """Detached: stdin and stdout go to /dev/null; stderr to the log file if there
    is one (so that even what bypasses logging is kept), and the log to syslog
    unless it goes to the file."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    if detached.log_file:
        fd = os.open(detached.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.dup2(fd, 2)
        os.close(fd)
    if detached.syslog is not None:
        logsetup.install(detached.syslog)


# --- mount(8) ------------------------------------------------------------------------

def mount_helper(argv: list[str] | None = None) -> int:
    """mount.cryophilefs SOURCE MOUNTPOINT [-sfnv] [-o OPTS], as mount(8) calls it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    where, opts = [], []
    while argv:
        arg = argv.pop(0)
        if arg == "-o" and argv:
            opts += ["-o", argv.pop(0)]
        elif arg.startswith("-o"):
            opts += ["-o", arg[2:]]
        elif arg in ("-s", "-f", "-n", "-v") or arg.startswith("-t"):
            continue            # sloppy, fake, no-mtab, verbose, type: nothing to do
        else:
            where.append(arg)
    sys.exit(main(opts + where))
