"""cryophile restore: an archive back to stdout or a file, byte for byte."""

from __future__ import annotations

import logging
import os
import sys
import time

import trio

from .. import errors, manifest, thaw
from ..ids import BackupId
from ..pipeline import reader
from ..spool import BackupLock
from .common import Context, Progress, backup_id, secret_keys

log = logging.getLogger("cryophile.restore")
WAIT_POLL = 0.05


def add_parser(sub) -> None:
    p = sub.add_parser(
        "restore", help="decrypt an archive to stdout or a file",
        description="Fetch an archive's fragments (thawing them from cold storage if "
                    "needed; no separate `cryophile thaw` is required), verify, join, "
                    "decrypt and decompress them to stdout or -o OUTPUT.  With -o, the "
                    "file appears only once the whole archive has been verified.")
    p.add_argument("-v", "--vault", required=True, metavar="VAULT",
                   help="vault UUID (or its alias)")
    p.add_argument("-p", "--prefix", metavar="PREFIX", help="the archive's prefix")
    p.add_argument("-u", "--ulid", required=True, metavar="ULID", help="the archive's ULID")
    p.add_argument("-k", "--keyring", action="append", default=[], metavar="KEYRING",
                   help="secret key file(s); repeatable; any one recipient's key will do")
    p.add_argument("-P", "--pass-fd", type=int, metavar="FD",
                   help="read the secret key's passphrase from file descriptor FD")
    p.add_argument("-o", "--output", default="-", metavar="OUTPUT",
                   help="write to this file instead of stdout")
    p.set_defaults(run=run)


def run(args) -> int:
    ctx = Context(args)
    bid = backup_id(ctx, args)
    keyring = secret_keys(args.keyring, args.pass_fd)
    output = Output(args.output)
    try:
        ctx.spool.ensure()
        size = trio.run(Restore(ctx, bid, keyring).run, output.file)
        output.commit()
    except BaseException:
        output.discard()
        raise
    finally:
        ctx.close()
    log.debug("restored %s: %d bytes", bid, size)
    return 0


class Output:
    """stdout, or a file that appears only when complete."""

    def __init__(self, path: str):
        self.path = path
        if path == "-":
            if sys.stdout.isatty():
                raise errors.UsageError("refusing to write an archive to a terminal: "
                                        "use -o FILE or a pipe")
            self.file, self.tmp = sys.stdout.buffer, None
            return
        self.tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                                f".{os.path.basename(path)}.cryophile-{os.getpid()}")
        try:
            self.file = open(self.tmp, "wb")
        except OSError as exc:
            raise errors.from_oserror(exc, f"cannot write output {path}") from None

    def commit(self) -> None:
        if self.tmp is None:
            return
        try:
            self.file.close()
            os.rename(self.tmp, self.path)
        except OSError as exc:
            raise errors.from_oserror(exc, f"cannot write output {self.path}") from None

    def discard(self) -> None:
        if self.tmp is not None:
            self.file.close()
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)


class Restore:
    def __init__(self, ctx: Context, bid: BackupId, keyring):
        self.ctx, self.spool, self.bid, self.keyring = ctx, ctx.spool, bid, keyring
        self.thawer: thaw.Thawer | None = None
        self.thaw_finished = False
        self.daemon = False
        self.decrypt_error: errors.Error | None = None

    async def run(self, out) -> int:
        try:
            clear = await trio.to_thread.run_sync(self.mark)
            manifest.check_identity(clear, self.bid)
        except errors.Error:
            self._drop_empty()
            raise
        encrypted = manifest.load(self.spool.path("restore", self.bid, 0))[1]
        body = await trio.to_thread.run_sync(manifest.read_manifest, encrypted, clear,
                                             self.keyring.decrypt_session_key)
        await trio.to_thread.run_sync(self.queue, clear)
        try:
            async with trio.open_nursery() as nursery:
                if self.spool.fragments("thaw", self.bid):
                    self.start_thaw(nursery)
                size = await trio.to_thread.run_sync(self.decrypt, clear, body, out)
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise self.decrypt_error or errors.unwrap(group) from None
        self.spool.remove_dir("restore", self.bid)
        self.spool.remove_dir("thaw", self.bid)
        return size

    def _drop_empty(self) -> None:
        """No restore directory left behind by a restore that found nothing."""
        try:
            os.rmdir(self.spool.dir("restore", self.bid))
        except OSError:
            return
        self.spool.prune("restore", self.bid)

    def mark(self) -> manifest.ClearInfo:
        """chunk.0 into the restore queue: from the spool if not yet frozen, else the vault."""
        dest = self.spool.path("restore", self.bid, 0)
        if not os.path.exists(dest) and not self.link_queued(0):
            if os.path.isdir(self.spool.dir("backup", self.bid)):
                lock = BackupLock(self.spool, self.bid)
                busy = not lock.try_acquire()
                lock.release()
                if busy:
                    raise errors.NotFoundError(f"archive {self.bid} is still being written")
            return thaw.fetch_mark(self.spool, self.ctx.store(self.bid.vault), self.bid)
        return manifest.load(dest)[0]

    def link_queued(self, n: int) -> bool:
        return self.spool.link_queued(self.bid, n)

    def queue(self, clear: manifest.ClearInfo) -> None:
        missing = [n for n in range(1, len(clear.fragments) + 1)
                   if not os.path.exists(self.spool.path("restore", self.bid, n))
                   and not self.link_queued(n)]
        if missing:
            thaw.request(self.spool, self.bid, missing)

    def start_thaw(self, nursery) -> None:
        lock = thaw.DaemonLock(self.spool)
        if not lock.acquire():
            self.daemon = True
            log.info("waiting for the running `cryophile thaw` to fetch %s", self.bid)
            return
        vault = self.ctx.vault(self.bid.vault)
        self.thawer = thaw.Thawer(self.spool, self.ctx.store,
                                  lambda v: (vault.restore_tier, vault.restore_days),
                                  select=lambda b: b == self.bid)

        async def serve():
            try:
                await self.thawer.run(once=True)
            except BaseException as exc:
                self.thawer.failure = self.thawer.failure or exc
                raise
            finally:
                self.thaw_finished = True
                lock.release()
        nursery.start_soon(serve)

    def wait_for(self, n: int) -> str:
        path = self.spool.path("restore", self.bid, n)
        while not os.path.exists(path):
            if self.thawer is not None and self.thawer.failure is not None:
                failure = self.thawer.failure
                if isinstance(failure, errors.Error):
                    raise type(failure)(failure.message)
                raise errors.Interrupted("thaw failed")
            if (self.thawer is None or self.thaw_finished) and not self.daemon:
                if os.path.exists(path):
                    break
                raise errors.MissingFragmentError(f"fragment chunk.{n} of {self.bid} is missing")
            time.sleep(WAIT_POLL)
        return path

    def decrypt(self, clear, body, out) -> int:
        progress = Progress("restore", clear.size)
        try:
            return reader.restore(clear, body, self.keyring.decrypt_session_key,
                                  self.wait_for, Counting(out, progress))
        except (errors.IntegrityError, errors.MissingFragmentError) as exc:
            thaw.drop_damaged(self.spool, self.bid, clear)
            self.decrypt_error = type(exc)(f"{exc}; restore of {self.bid} failed and the "
                                           "output is not to be trusted")
            raise self.decrypt_error from None
        finally:
            progress.finish()


class Counting:
    def __init__(self, out, progress: Progress):
        self.out, self.progress = out, progress

    def write(self, data) -> None:
        self.out.write(data)
        self.progress.add(len(data))

    def flush(self) -> None:
        self.out.flush()
