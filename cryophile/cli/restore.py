"""cryophile restore: an archive back to stdout or a file, byte for byte."""

from __future__ import annotations

import bisect
import logging
import os
import time

from .. import backpressure, errors, manifest, ranges, restorequeue, thaw, thawprogress
from ..health import thaw_holder
from ..ids import BackupId
from ..pipeline import reader
from ..spool import BackupLock
from ..store.local import LocalStore
from . import target, thawplan
from .common import Context, Progress, add_limit_option, secret_keys
from .output import Output

log = logging.getLogger("cryophile.restore")
WAIT_POLL = 0.05
TAKE_OVER_POLL = 0.5      # how often a waiting restore checks that a thawer still runs
EARLY = 2                 # fragments of a local vault hashed while the restore starts


def add_parser(sub) -> None:
    p = sub.add_parser(
        "restore", help="decrypt an archive to stdout or a file",
        description="Fetch an archive's fragments (thawing them from cold storage if "
                    "needed; no separate `cryophile thaw` is required), verify, join, "
                    "decrypt and decompress them to stdout or -o OUTPUT.  With -o, the "
                    "file appears only once the whole archive has been verified.")
    p.add_argument("-v", "--vault", metavar="VAULT",
                   help="vault UUID (or its alias)")
    p.add_argument("-p", "--prefix", metavar="PREFIX", help="the archive's prefix")
    p.add_argument("-u", "--ulid", metavar="ULID", help="the archive's ULID")
    p.add_argument("-k", "--keyring", action="append", default=[], metavar="KEYRING",
                   help="secret key file(s); repeatable; any one recipient's key will do")
    p.add_argument("-P", "--pass-fd", type=int, metavar="FD",
                   help="read the secret key's passphrase from file descriptor FD")
    p.add_argument("-o", "--output", default="-", metavar="OUTPUT",
                   help="write to this new file instead of stdout (mode 0600)")
    p.add_argument("--force", action="store_true",
                   help="with -o, replace an existing regular file")
    add_limit_option(p, "download", "download fragments")
    target.add_options(p)
    target.add_range_options(p)
    thawplan.add_restore_arguments(p)
    p.set_defaults(run=run)


def run(args) -> int:
    ctx = Context(args)           # main ran target.split_words: -S, -c after the target count
    span = target.byte_range(args)
    early = None
    if args.keyring and args.ulid and args.name is None and not (span or args.chain
                                                                 or args.dry_run):
        early = hash_ahead(ctx, args)
    try:
        return _run(args, ctx, span, early)
    finally:
        if early is not None:
            early.close()


def hash_ahead(ctx: Context, args) -> reader.Early | None:
    """Hash the archive's first fragments in a local vault while the restore
    starts (keys loaded, chunk.0 read), but those the spool holds (read from
    there, with their verdicts); None where it does not apply (another kind
    of vault, or arguments found wrong: said in their turn)."""
    try:
        bid = target.resolve(ctx, args, None)       # (-u: no look into the vault)
        if not (ctx.vault(bid.vault).url or "").startswith("file://"):
            return None
        store = ctx.store(bid.vault)
        if not isinstance(store, LocalStore):
            return None
        return reader.Early([os.path.join(store.root, bid.fragment_key(n))
                             for n in range(1, EARLY + 1)
                             if not any(os.path.exists(ctx.spool.path(queue, bid, n))
                                        for queue in ("restore", "freeze"))])
    except errors.Error:
        return None


def _run(args, ctx: Context, span, early: reader.Early | None) -> int:
    keyring = None
    if not args.dry_run or args.name is not None or span:   # a plan needs no key, but
        keyring = secret_keys(args.keyring, args.pass_fd)   # --name and a range do
    bid = target.resolve(ctx, args, keyring)
    if args.dry_run:
        return thawplan.dry_run(ctx, bid, span and target.range_fragments(ctx, bid, keyring,
                                                                          span))
    if args.chain:
        try:
            ctx.spool.ensure()
            return target.restore_chain(ctx, bid, keyring, args.command, Restore)
        finally:
            ctx.close()
    output = Output(args.output, args.force)
    try:
        ctx.spool.ensure()
        restore = Restore(ctx, bid, keyring, span, early)
        size = restore.run(output.file)
        output.commit()
    except BaseException:
        output.discard()
        raise
    finally:
        ctx.close()
    log.debug("restored %s: %d bytes", bid, size)
    if restore.clear is not None and not restore.clear.complete:
        # all it holds was written (it is all there is), but a script must not
        # take it for a whole stream
        raise errors.IncompleteStreamError(
            f"archive {bid} was sealed incomplete: its {restore.clear.kind} stream was cut "
            "short when it was written; everything it holds was restored, but it is not a "
            "whole stream")
    return 0


class Restore:
    """One restore: fragments taken from the restore queue as links of its own
    (restorequeue.Reader), thawed a window ahead of decryption and dropped as
    soon as they are consumed, so that the spool holds at most ``window``
    fragments (spool_max, at least two) and concurrent restores of one
    archive never pull files from under each other.

    Thawing: the running `cryophile thaw` (or mount) serves the requests if
    there is one; otherwise this restore serves its own, in this process,
    and takes over whenever the one serving goes away.
    """

    def __init__(self, ctx: Context, bid: BackupId, keyring,
                 span: tuple[int, int | None] | None = None,
                 early: reader.Early | None = None):
        self.ctx, self.spool, self.bid, self.keyring = ctx, ctx.spool, bid, keyring
        self.early = early          # the first fragments of a local vault, hashed already
        self.thawer: thaw.Thawer | None = None
        self.daemon = False
        self.decrypt_error: errors.Error | None = None
        self.reader = restorequeue.Reader(self.spool, bid)
        self.window = 2
        self.fragments = 0
        self.span = span            # (offset, length or None): only that byte range
        self.order: list[int] = []  # the fragments to read, ascending
        self.waiting: thawprogress.Waiting | None = None  # says progress of another's thaw
        self.finished = False       # a range's reading thread may wait ahead of need: stop it
        self.clear: manifest.ClearInfo | None = None
        self.token = None
        self.vault_root: str | None = None     # a local vault's directory: read in place
        self.sync = False           # read in place without trio (no thawer)

    def run(self, out) -> int:
        """Restore into ``out``; its size.  Without trio (a third of the start of
        a short restore goes to importing it) when every fragment is read in
        place from a local vault or the spool: nothing is to be thawed, so no
        thawer is kept."""
        restorequeue.clear_failures(self.spool, self.bid)
        self.reader.register()
        try:
            clear, body = self.prepare()
            if self.in_place():
                self.sync = True
                return self.decrypt(clear, body, out)
            import trio
            try:
                return trio.run(self._served, clear, body, out)
            except BaseExceptionGroup as group:
                raise self.decrypt_error or errors.unwrap(group) from None
        except (errors.IntegrityError, errors.MissingFragmentError) as exc:
            if exc is self.decrypt_error:
                raise
            raise untrusted(exc, self.bid) from None     # e.g. found by the plan's look
        finally:
            self.leave()

    def leave(self) -> None:
        """Unregister; the last reader out also removes what a thaw that died
        left half-downloaded, if no thaw runs now."""
        if self.reader.close():
            lock = thaw.DaemonLock(self.spool)
            if lock.acquire():
                try:
                    restorequeue.drop_partial(self.spool, self.bid)
                finally:
                    lock.release()

    def prepare(self) -> tuple[manifest.ClearInfo, dict]:
        """chunk.0 and the manifest; the plan reserved, the first window asked for."""
        clear = self.clear = self.mark()
        manifest.check_identity(clear, self.bid)
        if not clear.complete:      # said first: a `| zfs receive` that fails may end us
            log.warning("archive %s was sealed incomplete (its %s stream was cut short when "
                        "it was written): restoring what it holds", self.bid, clear.kind)
        encrypted = manifest.load(self.spool.path("restore", self.bid, 0))[1]
        body = manifest.read_manifest(encrypted, clear, self.keyring.decrypt_session_key)
        self.fragments = len(clear.fragments)
        self.order = list(range(1, self.fragments + 1))
        if self.span is not None:
            self.span = ranges.span(clear.size, *self.span, str(self.bid))
            self.order = ranges.fragments(clear, body, *self.span)
        plan = thawplan.reserve(self.ctx, self.bid, clear, self.order)
        self.waiting = thawprogress.Waiting(log, self.bid, plan, len(self.order),
                                            thawprogress.every(),
                                            holder=lambda: thaw_holder(self.spool))
        self.window = window(self.ctx, self.spool, clear)
        store = self.ctx.store(self.bid.vault)
        if isinstance(store, LocalStore):
            self.vault_root = store.root
            log.debug("%s: fragments not in the spool are read in place from %s",
                      self.bid, store.url)
        self.queue()
        return clear, body

    def in_place(self) -> bool:
        """Every fragment to read is in a local vault or the spool: read in place,
        with nothing to thaw.  (A fragment of the spool's freeze queue goes into
        the local vault before it leaves the queue: found there then.)"""
        return self.vault_root is not None and all(self.local(n) for n in self.order)

    async def _served(self, clear: manifest.ClearInfo, body: dict, out) -> int:
        """Decrypt (in a thread) while a thawer brings the fragments, if no
        other process serves this archive's requests."""
        import trio
        self.token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.keep_thawer, nursery)
            size = await trio.to_thread.run_sync(self.decrypt, clear, body, out)
            nursery.cancel_scope.cancel()
        return size

    def mark(self) -> manifest.ClearInfo:
        """chunk.0 into the restore queue: from the spool if not yet frozen, else the vault."""
        dest = self.spool.path("restore", self.bid, 0)
        if not os.path.exists(dest) and not self.spool.link_queued(self.bid, 0):
            if os.path.isdir(self.spool.dir("backup", self.bid)):
                lock = BackupLock(self.spool, self.bid)
                busy = not lock.try_acquire()
                lock.release()
                if busy:
                    raise errors.NotFoundError(f"archive {self.bid} is still being written")
            return thaw.fetch_mark(self.spool, self.ctx.store(self.bid.vault), self.bid)
        return manifest.load(dest)[0]

    def local(self, n: int) -> bool:
        return (self.reader.has(n) or os.path.exists(self.spool.path("restore", self.bid, n))
                or os.path.exists(self.spool.path("freeze", self.bid, n))
                or self.in_vault(n) is not None)

    def in_vault(self, n: int) -> str | None:
        """A local vault's own copy of fragment n, read in place (objects there are
        never rewritten; the reader checks the file against chunk.0 and that it
        does not change while read)."""
        if self.vault_root is None:
            return None
        path = os.path.join(self.vault_root, self.bid.fragment_key(n))
        return path if os.path.exists(path) else None

    def queue(self) -> None:
        """Ask for the first window; ask the vault to restore the rest already
        (a Glacier restore takes hours: they run while earlier fragments are read)."""
        later = [n for n in self.order[self.window - 1:] if not self.local(n)]
        if later:
            restorequeue.request(self.spool, self.bid, later, warm=True)
        self.request_window(1)

    def request_window(self, n: int) -> None:
        """Fragments n … n+window-2 (n-1 is being read: window in all)."""
        at = bisect.bisect_left(self.order, n)
        wanted = [k for k in self.order[at:at + self.window - 1] if not self.local(k)]
        if wanted:
            restorequeue.request(self.spool, self.bid, wanted)
            self.poke()

    def poke(self) -> None:
        if self.thawer is not None:
            import trio
            try:
                trio.from_thread.run_sync(self.thawer.poke, trio_token=self.token)
            except trio.RunFinishedError:
                pass

    async def keep_thawer(self, nursery) -> None:
        """Serve this archive's requests whenever nobody else does."""
        import trio
        lock = thaw.DaemonLock(self.spool)
        told = False
        while True:
            if await trio.to_thread.run_sync(lock.acquire):
                break
            self.daemon = True
            if not told:
                log.info("waiting for the running `cryophile thaw` (or the mount or restore "
                         "holding its lock) to fetch %s", self.bid)
                told = True
            await trio.sleep(TAKE_OVER_POLL)
        self.thawer = thaw.Thawer(self.spool, self.ctx.store,
                                  lambda v: thawplan.settings(self.ctx, self.ctx.args, v),
                                  select=lambda b: b == self.bid, fail_fast=True,
                                  guard=thawplan.guard(self.ctx),
                                  progress_every=thawprogress.every())
        self.daemon = False
        try:
            await self.thawer.run()
        finally:
            lock.release()

    def wait_for(self, n: int) -> str:
        """Fragment n as a link of our own; what came before n-1 is consumed."""
        self.reader.advance(n - 1)
        self.request_window(n)
        while True:
            if self.finished:
                raise errors.Interrupted(f"restore of {self.bid} no longer needs chunk.{n}")
            path = self.reader.take(n) or self.in_vault(n)
            if path is not None:
                return path
            if self.sync:           # no thawer: it was there when the restore began
                raise errors.MissingFragmentError(
                    f"fragment chunk.{n} is no longer in the vault or the spool "
                    "(removed while the restore ran?)")
            failure = restorequeue.failure(self.spool, self.bid, n)
            if failure is None and self.thawer is not None:
                failure = self.thawer.failure
            if failure is not None:
                if isinstance(failure, errors.Error):
                    raise type(failure)(failure.message)
                raise errors.Interrupted("thaw failed")
            if n not in restorequeue.requests(self.spool, self.bid):
                path = self.reader.take(n)          # (it may have arrived meanwhile)
                if path is not None:
                    return path
                restorequeue.request(self.spool, self.bid, [n])     # taken away meanwhile
                self.poke()
            if self.daemon and self.waiting is not None:
                self.waiting.tick(lambda: self.here(n))
            time.sleep(WAIT_POLL)

    def here(self, n: int) -> int:
        """The fragments to read that have arrived, while waiting for fragment n."""
        at = bisect.bisect_left(self.order, n)
        return at + sum(self.local(k) for k in self.order[at:])

    def decrypt(self, clear, body, out) -> int:
        total = clear.size if self.span is None else self.span[1] - self.span[0]
        progress = Progress("restore", total)
        try:
            if self.span is not None:
                return ranges.copy(clear, body, self.keyring.decrypt_session_key,
                                   self.wait_for, Counting(out, progress), *self.span,
                                   self.order)
            return reader.restore(clear, body, self.keyring.decrypt_session_key,
                                  self.wait_for, Counting(out, progress), frames_vouch=True,
                                  early=self.early)
        except (errors.IntegrityError, errors.MissingFragmentError) as exc:
            thaw.drop_damaged(self.spool, self.bid, clear)
            self.decrypt_error = untrusted(exc, self.bid)
            raise self.decrypt_error from None
        finally:
            self.finished = True
            progress.finish()


def untrusted(exc: errors.Error, bid: BackupId) -> errors.Error:
    """Damage or a missing fragment, said the one way restore says it (same kind:
    its exit code, 8 or 9)."""
    return type(exc)(f"{exc}; restore of {bid} failed and the output is not to be trusted")


def window(ctx: Context, spool, clear: manifest.ClearInfo) -> int:
    """How many fragments a restore may hold in the spool: spool_max's worth,
    at least two (one being read, the next arriving)."""
    bound = ctx.config.spool_max or backpressure.default_bound(spool)
    return max(2, bound // max(clear.fragment_size, 1))


class Counting:
    def __init__(self, out, progress: Progress):
        self.out, self.progress = out, progress

    def write(self, data) -> None:
        self.out.write(data)
        self.progress.add(len(data))

    def flush(self) -> None:
        self.out.flush()
