"""The FUSE handlers: the tree, backups under incoming/, archives to read.

Every handler is wrapped by ``faults.guard_all``: only FUSEError leaves it.
Nothing here blocks the trio loop: spool, store, crypto and compression
work goes through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import stat
import threading
from typing import Callable

import pyfuse3
import trio

from cryophile import catalog, chains, errors, ids, keys, manifest, remove
from cryophile.backpressure import Backpressure
from cryophile.ids import BackupId
from cryophile.streams import snapshot_name

from . import vaults
from .faults import FsError, guard_all
from .reader import Fragments, ReadAhead, Thaws, check_readable
from .tree import INCOMING, Node, Tree
from .writer import HeldWriter, Incoming

log = logging.getLogger("cryophilefs")

XATTR = "user.cryophile."
RELEASE_GRACE = 2.0     # seconds unlink waits for the release of a just-closed archive
FH_HANDLERS = {"read", "write", "flush", "release", "fsync", "readdir", "releasedir"}


@dataclasses.dataclass
class Settings:
    config: object                      # cryophile.config.Config
    spool: object                       # cryophile.spool.Spool
    stores: object                      # vault uuid -> Store
    certificates: list | None = None    # -k certificates: recipients for any vault
    keyring: object = None              # -k secret keys: SecretKeyring, or None
    allow_other: bool = False
    allow_delete: bool = False          # -o allow_delete: unlink deletes archives
    thawer: object = None               # reader.FsThawer running in this process
    freezer: object = None              # cryophile.freeze.Freezer running in this process
    policy: object = None               # thawpolicy.ReadPolicy: when reads may thaw


@dataclasses.dataclass
class ReadHandle:
    node: Node
    reader: ReadAhead


@dataclasses.dataclass
class WriteHandle:
    node: Node
    incoming: Incoming


@dataclasses.dataclass
class EntryHandle:
    """A released incoming entry opened read-only: for fchmod and the like."""
    node: Node


@guard_all
class Operations(pyfuse3.Operations):
    supports_dot_lookup = False

    def __init__(self, settings: Settings, nursery: trio.Nursery | None = None):
        super().__init__()
        self.s = settings
        self.spool, self.config = settings.spool, settings.config
        self.tree = Tree(settings.allow_other)
        self.nursery = nursery                # for feeder and read-ahead tasks
        self.handles: dict[int, object] = {}
        self.dirs: dict[int, list] = {}
        self.next_fh = 1
        self.listings = vaults.Listings(self.spool, settings.stores, self._found)
        self.thaws = Thaws(self.spool, settings.thawer, settings.policy)
        self.backpressure = Backpressure(self.spool, self.config.spool_max)
        self.recipients: dict[str, list] = {}
        self.announced: set[str] = set()      # vaults whose destination was logged
        self.vault_ids()

    # --- the tree -------------------------------------------------------------

    def vault_ids(self) -> list[str]:
        """Configured vaults and vaults seen in the spool, as directories."""
        found = sorted(set(self.config.vaults) | catalog.spool_vaults(self.spool))
        found = [v for v in found if _is_vault(v)]
        for uuid in found:
            self.tree.add(self.tree.root, uuid, stat.S_IFDIR, area="archive", vault=uuid)
            self.tree.add(self.tree.incoming, uuid, stat.S_IFDIR, vault=uuid)
        for v in self.config.vaults.values():
            if v.name and v.name != INCOMING and not _is_vault(v.name):
                self.tree.symlink(self.tree.root, v.name, v.uuid)
                self.tree.symlink(self.tree.incoming, v.name, v.uuid)
        return found

    def _found(self, vault: str, archives: dict) -> None:
        top = self.tree.root.children.get(vault)
        if top is None:
            self.vault_ids()
            top = self.tree.root.children[vault]
        for archive in archives.values():
            self._place(top, archive)

    def _place(self, top: Node, archive: vaults.Archive) -> Node:
        parts = archive.bid.prefix.split("/") if archive.bid.prefix else []
        node = self.tree.add(self.tree.makedirs(top, parts), archive.bid.ulid, stat.S_IFREG)
        node.archive = archive
        return node

    async def refresh(self, node: Node) -> None:
        if node.vault is None:
            await trio.to_thread.run_sync(self.vault_ids)
            return
        await self.listings.refresh(node.vault)
        if node.area == INCOMING:
            self._mirror(node)

    def _mirror(self, node: Node) -> None:
        """Prefixes that hold archives exist under incoming/ too, without mkdir."""
        other = self.tree.root.children.get(node.vault)
        for part in node.rel:
            other = other.children.get(part) if other is not None else None
        for name, child in (other.children.items() if other is not None else ()):
            if child.is_dir:
                self.tree.add(node, name, stat.S_IFDIR)

    async def attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        if node.archive is not None:
            await node.archive.ready.wait()     # a seal in progress: show the result
        return self.tree.attrs(node)

    def describe(self, name: str, args: tuple) -> str:
        """`handler path` for log lines."""
        try:
            if name in FH_HANDLERS:
                handle = self.handles.get(args[0])
                node = handle.node if handle is not None else self.tree.nodes.get(args[0])
            else:
                node = self.tree.nodes.get(args[0])
            path = node.path() if node is not None else "?"
            if len(args) > 1 and isinstance(args[1], bytes):
                path = os.path.join(path, os.fsdecode(args[1]))
            return f"{name} {path}"
        except Exception:                       # describing must never fail
            return name

    # --- looking ----------------------------------------------------------------

    async def lookup(self, parent_inode, name, ctx=None):
        parent = self.tree.get(parent_inode)
        text = os.fsdecode(name)
        node = self._linger(parent.children.get(text))
        if node is None:
            await self.refresh(parent)
            node = parent.children.get(text)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self.attrs(node)

    async def getattr(self, inode, ctx=None):
        return await self.attrs(self.tree.get(inode))

    async def readlink(self, inode, ctx=None):
        node = self.tree.get(inode)
        if node.target is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(node.target)

    async def opendir(self, inode, ctx=None):
        node = self.tree.get(inode)
        await self.refresh(node)
        for child in list(node.children.values()):
            self._linger(child)                 # names of sealed backups time out here too
        fh = self._new_fh()
        self.dirs[fh] = sorted((name, child) for name, child in node.children.items()
                               if self._listed(child))
        return fh

    def _linger(self, node: Node | None) -> Node | None:
        """``node``, unless it is a released incoming entry whose time is up."""
        if node is not None and node.incoming is not None and node.incoming.expired():
            self.tree.remove(node)
            return None
        return node

    @staticmethod
    def _listed(node: Node) -> bool:
        """Released incoming entries linger for stat, but are not listed."""
        return node.incoming is None or node.incoming.active

    async def readdir(self, fh, start_id, token):
        entries = self.dirs.get(fh, [])
        for i in range(start_id, len(entries)):
            name, child = entries[i]
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self.tree.attrs(child), i + 1):
                return

    async def releasedir(self, fh):
        self.dirs.pop(fh, None)

    async def statfs(self, ctx=None):
        st = await trio.to_thread.run_sync(os.statvfs, self.spool.root)
        out = pyfuse3.StatvfsData()
        for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                      "f_ffree", "f_favail"):
            setattr(out, field, getattr(st, field))
        out.f_namemax = 255
        return out

    # --- changing the tree --------------------------------------------------------

    async def setattr(self, inode, attr, fields, fh, ctx=None):
        node = self.tree.get(inode)
        if node.area != INCOMING:
            raise FsError(errno.EROFS, "read-only")
        if node.incoming is not None and fields.update_size:
            await node.incoming.truncate(attr.st_size)
        if node.incoming is not None and fields.update_mtime:
            node.incoming.mtime_ns = attr.st_mtime_ns     # rsync's quick check next time
        # mode and owner of incoming entries are accepted and ignored, so that
        # `cp -p` or `touch` do not fail a backup: archives carry the ULID time
        return self.tree.attrs(node)

    async def mkdir(self, parent_inode, name, mode, ctx=None):
        parent = self.writable_dir(parent_inode, vault_needed=False)
        text = os.fsdecode(name)
        if self._linger(parent.children.get(text)) is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        if parent.vault is None:          # incoming/NEW-VAULT: an unconfigured vault
            uuid = ids.parse_vault(text)
            self._announce(uuid)
            self.tree.add(self.tree.root, uuid, stat.S_IFDIR, area="archive", vault=uuid)
            return self.tree.attrs(self.tree.add(parent, uuid, stat.S_IFDIR, vault=uuid))
        ids.parse_prefix("/".join(parent.rel + (text,)),      # as backup -p checks it
                         base=self.config.vault(parent.vault).key_base)
        return self.tree.attrs(self.tree.add(parent, text, stat.S_IFDIR))

    async def rmdir(self, parent_inode, name, ctx=None):
        parent = self.writable_dir(parent_inode)
        node = self._child(parent, name)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if any(self._listed(child) for child in node.children.values()):
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        for child in list(node.children.values()):
            self.tree.remove(child)         # lingering entries of sealed backups
        self.tree.remove(node)

    async def unlink(self, parent_inode, name, ctx=None):
        if self.tree.get(parent_inode).area != INCOMING:
            await self._delete_archive(self._child(self.tree.get(parent_inode), name))
            return
        parent = self.writable_dir(parent_inode)
        node = self._child(parent, name)
        if node.incoming is None:
            raise pyfuse3.FUSEError(errno.EISDIR if node.is_dir else errno.EPERM)
        if node.incoming.cancel():
            log.info("%s removed while being written: backup %s cancelled", node.path(),
                     node.incoming.bid)
        self.tree.remove(node)              # a sealed backup's entry: just the name goes

    async def _delete_archive(self, node: Node) -> None:
        """unlink of an archive: with -o allow_delete, as `cryophile rm`."""
        if node.archive is None or not self.s.allow_delete:
            raise FsError(errno.EROFS, "archives are read-only (mount with -o allow_delete "
                          "to delete them)" if node.archive is not None else "read-only")
        bid = node.archive.bid
        with trio.move_on_after(RELEASE_GRACE):    # the kernel releases after close returns
            while node.archive.readers:
                await trio.sleep(0.02)
        if node.archive.readers:
            raise FsError(errno.EBUSY, f"{bid} is open: not deleted")
        if self.s.freezer is not None and os.path.isdir(self.spool.dir("freeze", bid)):
            # this process's freeze may be uploading it right now
            raise FsError(errno.EBUSY, f"{bid} is still being frozen: not deleted (try again "
                          "once it is frozen)")
        store = self.s.stores(bid.vault)
        entries = await trio.to_thread.run_sync(remove.chain_entries, self.spool, store,
                                                bid.vault)
        needed = chains.dependents(entries, bid.key)
        if needed:          # as cryophile rm without -R/--force
            raise FsError(errno.EBUSY, f"{bid} is the base of "
                          f"{remove.names(needed, bid)}: not deleted (delete those first)")
        try:
            await trio.to_thread.run_sync(remove.remove, self.spool, store, bid)
        except errors.NotFoundError:
            pass                            # gone already (another host, cryophile rm)
        self.listings.forget(bid)
        self.tree.remove(node)
        log.info("%s deleted", bid)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags,
                     ctx=None):
        self.writable_dir(parent_inode_old)
        raise FsError(errno.EPERM, "an incoming file keeps the name it was created with")

    def writable_dir(self, inode: int, vault_needed: bool = True) -> Node:
        node = self.tree.get(inode)
        if node.area != INCOMING:
            raise FsError(errno.EROFS, "read-only: backups are written to "
                          "incoming/VAULT/[PREFIX/]NAME")
        if vault_needed and node.vault is None:
            raise FsError(errno.EPERM, "backups go into a vault directory: "
                          "incoming/VAULT/[PREFIX/]NAME")
        return node

    def _child(self, parent: Node, name: bytes) -> Node:
        node = parent.children.get(os.fsdecode(name))
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _new_fh(self) -> int:
        self.next_fh += 1
        return self.next_fh

    # --- writing -------------------------------------------------------------------

    async def create(self, parent_inode, name, mode, flags, ctx=None):
        parent = self.writable_dir(parent_inode)
        text = os.fsdecode(name)
        node = self._linger(parent.children.get(text))
        if node is not None and node.incoming is None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        if node is not None and node.incoming.active:
            raise FsError(errno.EBUSY, "already being written")
        node = node or self.tree.add(parent, text, stat.S_IFREG)
        fh = await self._start(node)
        return pyfuse3.FileInfo(fh=fh, direct_io=True), self.tree.attrs(node)

    async def _start(self, node: Node) -> int:
        """A new backup written through ``node`` (new, or a released entry reused)."""
        parent = node.parent
        bid = BackupId(parent.vault, parent.prefix, ids.new_ulid())
        try:
            make_writer = await self._writer(bid, node.name)
        except BaseException:
            if node.incoming is None:
                self.tree.remove(node)
            raise
        incoming = Incoming(bid, node.name, make_writer)
        node.incoming = incoming
        fh = self._new_fh()
        self.handles[fh] = WriteHandle(node, incoming)
        self.nursery.start_soon(incoming.feed)
        log.debug("backup %s started for %s", bid, node.path())
        return fh

    async def _writer(self, bid: BackupId, name: str) -> Callable[[threading.Event], HeldWriter]:
        """How to start the backup (at its first write); recipients are checked now."""
        vault = self.config.vault(bid.vault)
        recipients = await self._recipients(vault)
        self._announce(bid.vault)
        return lambda stop: HeldWriter(
            self.spool, bid, recipients, vault.compression, vault.fragment_size, name=name,
            before_fragment=lambda: self.backpressure.wait(stop), stop=stop)

    def _announce(self, uuid: str) -> None:
        """Say once where a vault's archives go, loudly if nothing configured it."""
        if uuid in self.announced:
            return
        self.announced.add(uuid)
        vault = self.config.vault(uuid)
        where = vault.location + (f" at {vault.endpoint_url}" if vault.endpoint_url else "")
        if uuid in self.config.vaults:
            log.info("vault %s: archives go to %s", uuid, where)
            return
        config = self.config.path or "any configuration file (none was found)"
        env = [v for v in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL") if os.environ.get(v)]
        service = (f"at {os.environ[env[0]]} (from {env[0]})" if env else
                   "on AWS (boto3's default region and credentials)")
        log.warning("vault %s is not configured (no [vault.%s] in %s): its archives go to "
                    "%s, the S3 bucket named by the UUID %s; configure url or endpoint_url "
                    "to send them elsewhere", uuid, uuid, config, where, service)

    async def _recipients(self, vault) -> list:
        """The vault's configured keyring, else the mount's -k certificates."""
        if vault.keyring:
            if vault.uuid not in self.recipients:
                self.recipients[vault.uuid] = await trio.to_thread.run_sync(
                    keys.load_certificates, vault.keyring)
            return self.recipients[vault.uuid]
        if self.s.certificates:
            return self.s.certificates
        raise FsError(errno.ENOKEY, f"no certificate to encrypt backups of vault {vault.uuid} "
                      f"to: set keyring in [vault.{vault.uuid}] or mount with -k CERTIFICATE")

    async def write(self, fh, off, buf):
        return await self._handle(fh, WriteHandle).incoming.write(off, buf)

    async def flush(self, fh):
        """Every close(2): the first one after data was written seals the archive."""
        handle = self.handles.get(fh)
        if isinstance(handle, WriteHandle) and await handle.incoming.flush():
            await self._publish(handle.incoming)

    async def release(self, fh):
        handle = self.handles.pop(fh, None)
        if isinstance(handle, ReadHandle):
            await self._close_reader(handle)
        elif isinstance(handle, WriteHandle):
            if await handle.incoming.release() and self.s.freezer is not None:
                self.s.freezer.poke()

    async def _publish(self, incoming: Incoming) -> None:
        """A sealed archive shows up at once under VAULT/PREFIX/ULID."""
        bid = incoming.bid
        data = await trio.to_thread.run_sync(
            vaults.read_mark, self.spool, self.s.stores(bid.vault), bid)
        archive = vaults.Archive.from_mark(bid, data)
        archive.name = incoming.name
        self.listings.add(archive)
        node = self._place(self.tree.root.children[bid.vault], archive)
        incoming.on_withdraw = lambda: self.tree.remove(node)

    def _handle(self, fh: int, kind: type):
        handle = self.handles.get(fh)
        if not isinstance(handle, kind):
            raise pyfuse3.FUSEError(errno.EBADF)
        return handle

    # --- reading -------------------------------------------------------------------

    async def open(self, inode, flags, ctx=None):
        node = self.tree.get(inode)
        mode = flags & os.O_ACCMODE
        if node.incoming is not None:
            if mode == os.O_RDONLY and not node.incoming.active:
                fh = self._new_fh()             # rsync's fchmod after the seal
                self.handles[fh] = EntryHandle(node)
                return pyfuse3.FileInfo(fh=fh, direct_io=True)
            if mode != os.O_WRONLY:
                raise FsError(errno.EACCES, "a backup being written cannot be read "
                              "(its archive appears when it is closed)")
            if node.incoming.active:
                raise FsError(errno.EBUSY, "already being written")
            if flags & os.O_APPEND:
                raise FsError(errno.EPERM, f"cannot append to backup {node.incoming.bid} "
                              f"({node.incoming.state}): a backup is one stream")
            return pyfuse3.FileInfo(fh=await self._start(node), direct_io=True)
        if node.archive is None:
            raise pyfuse3.FUSEError(errno.EISDIR if node.is_dir else errno.EACCES)
        if mode != os.O_RDONLY or flags & os.O_TRUNC:
            raise FsError(errno.EROFS, "archives are read-only")
        archive = node.archive
        await archive.ready.wait()
        check_readable(archive, self.s.keyring)
        await self._manifest(archive)
        await self.thaws.opening(archive)
        fragments = Fragments(self.spool, self.s.stores(archive.bid.vault), archive)
        fragments.pid = ctx.pid if ctx is not None else 0      # the thaw guard's "who"
        if flags & os.O_NONBLOCK:
            await self._no_wait(archive, fragments)
        reader = ReadAhead(archive, fragments, self.thaws, self.s.keyring.decrypt_session_key)
        archive.readers += 1
        try:
            await self.thaws.opened(archive)
        except BaseException:
            archive.readers -= 1
            raise
        fh = self._new_fh()
        self.handles[fh] = ReadHandle(node, reader)
        self.nursery.start_soon(reader.run)
        # direct I/O: reads arrive as the reader asks (1 MiB, st_blksize) instead
        # of 128 KiB readahead requests, and the plaintext does not fill the
        # page cache; re-reads decrypt again, and archives cannot be mmap'ed
        return pyfuse3.FileInfo(fh=fh, direct_io=True)

    async def _manifest(self, archive: vaults.Archive) -> dict:
        if archive.manifest is None:
            archive.manifest = await trio.to_thread.run_sync(
                manifest.read_manifest, archive.encrypted, archive.clear,
                self.s.keyring.decrypt_session_key)
            archive.name = archive.manifest.get("name")
        return archive.manifest

    async def _no_wait(self, archive: vaults.Archive, fragments: Fragments) -> None:
        """O_NONBLOCK: EAGAIN until every fragment is here; the thaw starts now.
        EIO if thaw gave up on a fragment (the next open asks again)."""
        failure = await self.thaws.permanent(archive)
        if failure is not None:
            raise type(failure)(f"{archive.bid} cannot be read: {failure} (open it again "
                                "to ask again)")
        missing = await trio.to_thread.run_sync(fragments.missing)
        if missing:
            await self.thaws.request(archive, missing[0], fragments.pid)
            log.info("%s is not thawed yet (O_NONBLOCK open): thaw requested", archive.bid)
            raise pyfuse3.FUSEError(errno.EAGAIN)

    async def read(self, fh, off, size):
        if isinstance(self.handles.get(fh), EntryHandle):
            raise FsError(errno.EACCES, "an incoming file cannot be read: its archive is "
                          "read as VAULT/PREFIX/ULID (user.cryophile.backup_id)")
        handle = self._handle(fh, ReadHandle)
        data = await handle.reader.read(off, size)
        if not data and size > 0:
            archive = handle.node.archive
            if not getattr(archive.clear, "complete", True):
                # every byte it holds was read; its end is not the stream's end,
                # and a reader must not take it for one (restore exits 14 here)
                raise errors.IncompleteStreamError(
                    f"{archive.bid} was sealed incomplete: its {archive.clear.kind} stream "
                    "was cut short when it was written; everything it holds was read, and "
                    "its end is reported as an I/O error")
        return data

    async def _close_reader(self, handle: ReadHandle) -> None:
        handle.reader.close()
        archive = handle.node.archive
        archive.readers -= 1
        if archive.readers == 0:
            await self.thaws.closed(archive)

    # --- extended attributes -------------------------------------------------------

    async def getxattr(self, inode, name, ctx=None):
        node = self.tree.get(inode)
        key = os.fsdecode(name)
        if node.incoming is not None:
            values = {"state": node.incoming.shown_state, "name": node.incoming.name,
                      "backup_id": str(node.incoming.bid)}
        elif node.archive is not None:
            await node.archive.ready.wait()
            values = await self._archive_xattr(node.archive, key)
        else:
            values = {}
        value = values.get(key[len(XATTR):]) if key.startswith(XATTR) else None
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return str(value).encode()

    async def _archive_xattr(self, archive: vaults.Archive, key: str) -> dict:
        """Only what ``key`` needs: state asks the store, name needs the secret key."""
        bid, clear = archive.bid, archive.clear
        values = {"backup_id": str(bid), "fragments": archive.fragments,
                  "created": clear.created, "stored": archive.stored, "size": clear.size}
        field = key[len(XATTR):]
        store = self.s.stores(bid.vault)
        if field in ("state", "storage_class"):
            state, sclass = await trio.to_thread.run_sync(vaults.state, self.spool, store, archive)
            values["state"] = state
            values["storage_class"] = sclass or self.config.vault(bid.vault).storage_class
        elif field == "thaw":
            local = await trio.to_thread.run_sync(vaults.local_count, self.spool, store, archive)
            values["thaw"] = f"{local}/{archive.fragments}"
        elif field == "name":
            values["name"] = await self._name(archive)
        elif field in ("stream", "parent", "snapshot"):
            values.update(await self._stream_xattr(archive, field))
        elif field == "thaw_plan" and self.thaws.policy is not None:
            values["thaw_plan"] = (await self.thaws.policy.plan(archive)).summary()
        return values

    async def _stream_xattr(self, archive: vaults.Archive, field: str) -> dict:
        """stream kind and parent from the clear chunk.0s (parent: resolved
        among the vault's archives the mount knows); snapshot needs the key."""
        if field == "stream":
            return {"stream": archive.clear.kind}
        if field == "parent":
            top = self.tree.root.children.get(archive.bid.vault)
            known = [n.archive for n in (self.tree.walk(top) if top else ())
                     if n.archive is not None and n.archive.clear is not None]
            up = chains.parents([chains.Link.of(a.bid, a.clear) for a in known]).get(
                archive.bid.key)
            return {"parent": "MISSING" if isinstance(up, chains.Missing) else
                    up and chains.ulid_of(up)}
        if archive.manifest is None and self.s.keyring is None:
            raise FsError(errno.ENOKEY, f"the snapshot of {archive.bid} is encrypted: mount "
                          "with -k SECRET_KEY_FILE to see it")
        await self._manifest(archive)
        return {"snapshot": snapshot_name(archive.manifest.get("stream"))}

    async def _name(self, archive: vaults.Archive) -> str | None:
        if archive.name is None and archive.manifest is None:
            if self.s.keyring is None:
                raise FsError(errno.ENOKEY, f"the name of {archive.bid} is encrypted: mount "
                              "with -k SECRET_KEY_FILE to see it")
            await self._manifest(archive)
        return archive.name

    async def listxattr(self, inode, ctx=None):
        node = self.tree.get(inode)
        if node.incoming is not None:
            fields = ("state", "name", "backup_id")
        elif node.archive is not None:
            await node.archive.ready.wait()
            fields = self._archive_xattrs(node.archive)
        else:
            fields = ()
        return [os.fsencode(XATTR + f) for f in fields]

    def _archive_xattrs(self, archive: vaults.Archive) -> tuple:
        """The attributes an archive has (``getfattr -d`` asks for each of them):
        no parent for a full backup, no snapshot for a stream that names none,
        no name once the manifest showed there is none."""
        fields = ("state", "storage_class", "fragments", "thaw", "backup_id", "created",
                  "size", "stored", "stream")
        if archive.name is not None or archive.manifest is None:
            fields += ("name",)
        clear = archive.clear
        if clear is not None and chains.parents(
                [chains.Link.of(archive.bid, clear)]).get(archive.bid.key) is not None:
            fields += ("parent",)
        if clear is not None and clear.kind in ("zfs", "btrfs") and (
                archive.manifest is None or snapshot_name(archive.manifest.get("stream"))):
            fields += ("snapshot",)
        if self.thaws.policy is not None:
            fields += ("thaw_plan",)
        return fields

    async def setxattr(self, inode, name, value, ctx=None):
        node = self.tree.get(inode)
        if os.fsdecode(name) != XATTR + "thaw" or node.archive is None:
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        if value.strip() not in (b"1", b"yes", b"true", b"approve"):
            raise FsError(errno.EINVAL, f"set {XATTR}thaw to 1 to start a thaw (approve: "
                          "past the thaw budget and guards)")
        await node.archive.ready.wait()
        await self.thaws.ask_again(node.archive)
        await self.thaws.request(node.archive, pid=ctx.pid if ctx is not None else 0,
                                 whole=True, approve=value.strip() == b"approve")
        log.info("thaw of %s requested", node.archive.bid)

    async def removexattr(self, inode, name, ctx=None):
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    # --- the end -------------------------------------------------------------------

    def stop_waits(self) -> None:
        """A signal unmounts: the requests that wait on something with no end in
        sight (a thaw, spool room behind an unreachable vault) fail now, so that
        the FUSE loop, which ends only once every request is answered, ends."""
        self.thaws.stop()
        for handle in list(self.handles.values()):
            if isinstance(handle, WriteHandle):
                handle.incoming.interrupt()

    def abort_writers(self) -> None:
        """At unmount: backups still open are dropped (their data is incomplete),
        unless a close sealed them already."""
        for handle in list(self.handles.values()):
            if isinstance(handle, WriteHandle):
                what = handle.incoming.abort_at_unmount()
                log.log(logging.INFO if what == "kept" else logging.WARNING,
                        "unmounted while %s was open: backup %s %s", handle.node.path(),
                        handle.incoming.bid, what)
        self.handles.clear()


def _is_vault(text: str) -> bool:
    try:
        return ids.parse_vault(text) == text
    except Exception:
        return False
