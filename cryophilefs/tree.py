"""The inode table: what the mount shows, as nodes with stable inode numbers.

    /                      root: incoming/, one directory per vault, alias symlinks
    /incoming/VAULT/P…/N   write-only files that become archives (area "incoming")
    /VAULT/P…/ULID         read-only archives (area "archive")

Nodes live as long as the mount (inode numbers never change, so `forget`
needs no bookkeeping); only incoming files and vanished archives are removed.
"""

from __future__ import annotations

import os
import stat
import time
from typing import Iterator

import pyfuse3

ROOT = pyfuse3.ROOT_INODE
INCOMING = "incoming"
BLKSIZE = 1 << 20       # tools size their buffers by st_blksize: 1 MiB reads/writes
ARCHIVE_TIMEOUT = 60.0  # archives are immutable: the kernel may cache them
LIVE_TIMEOUT = 0.0      # incoming files and directories change under the kernel


class Node:
    def __init__(self, ino: int, parent: "Node | None", name: str, kind: int,
                 area: str = "root", vault: str | None = None, rel: tuple = ()):
        self.ino, self.parent, self.name, self.kind = ino, parent, name, kind
        self.area, self.vault, self.rel = area, vault, rel   # rel: path below the vault
        self.children: dict[str, Node] = {}
        self.target: str | None = None      # symlinks
        self.archive = None                 # vaults.Archive, for archive files
        self.incoming = None                # writer.Incoming, for incoming files
        self.mtime_ns = time.time_ns()

    @property
    def is_dir(self) -> bool:
        return self.kind == stat.S_IFDIR

    @property
    def prefix(self) -> str:
        """The archive prefix a directory stands for (a file: its directory's)."""
        parts = self.rel if self.is_dir else self.rel[:-1]
        return "/".join(parts)

    def __repr__(self) -> str:
        return f"<Node {self.ino} {self.path()}>"

    def path(self) -> str:
        parts, node = [], self
        while node.parent is not None:
            parts.append(node.name)
            node = node.parent
        return "/" + "/".join(reversed(parts))


class Tree:
    def __init__(self, allow_other: bool = False):
        self.uid, self.gid = os.getuid(), os.getgid()
        self.allow_other = allow_other
        self.nodes: dict[int, Node] = {}
        self.next_ino = ROOT
        self.root = self._new(None, "", stat.S_IFDIR)
        self.incoming = self.add(self.root, INCOMING, stat.S_IFDIR, area=INCOMING)

    def _new(self, parent, name, kind, **kw) -> Node:
        node = Node(self.next_ino, parent, name, kind, **kw)
        self.nodes[node.ino] = node
        self.next_ino += 1
        return node

    def add(self, parent: Node, name: str, kind: int, area: str | None = None,
            vault: str | None = None) -> Node:
        """The child ``name`` of ``parent``, created if missing."""
        node = parent.children.get(name)
        if node is not None:
            return node
        area = area or parent.area
        if parent.vault is None:
            vault, rel = vault, ()
        else:
            vault, rel = parent.vault, parent.rel + (name,)
        node = self._new(parent, name, kind, area=area, vault=vault, rel=rel)
        parent.children[name] = node
        parent.mtime_ns = node.mtime_ns
        return node

    def symlink(self, parent: Node, name: str, target: str) -> Node:
        node = self.add(parent, name, stat.S_IFLNK)
        node.target = target
        return node

    def remove(self, node: Node) -> None:
        if node.parent is not None and node.parent.children.get(node.name) is node:
            del node.parent.children[node.name]
            node.parent.mtime_ns = time.time_ns()
        # the inode stays resolvable: the kernel may still hold it

    def makedirs(self, top: Node, parts: tuple | list) -> Node:
        node = top
        for part in parts:
            node = self.add(node, part, stat.S_IFDIR)
        return node

    def get(self, ino: int) -> Node:
        node = self.nodes.get(ino)
        if node is None:
            raise pyfuse3.FUSEError(2)      # ENOENT: a stale inode
        return node

    def walk(self, node: Node) -> Iterator[Node]:
        yield node
        for child in list(node.children.values()):
            yield from self.walk(child)

    # --- attributes -------------------------------------------------------

    def attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.st_uid, a.st_gid = self.uid, self.gid
        a.st_blksize = BLKSIZE
        a.st_nlink = 1
        a.st_mode, a.st_size, mtime = self._mode_size_time(node)
        a.st_blocks = (a.st_size + 511) // 512
        a.st_atime_ns = a.st_ctime_ns = a.st_mtime_ns = mtime
        a.entry_timeout = a.attr_timeout = (
            ARCHIVE_TIMEOUT if node.archive is not None else LIVE_TIMEOUT)
        if node.is_dir:
            a.st_nlink = 2 + sum(c.is_dir for c in node.children.values())
        return a

    def _mode_size_time(self, node: Node) -> tuple[int, int, int]:
        others = self.allow_other
        if node.archive is not None:
            return (stat.S_IFREG | (0o444 if others else 0o400), node.archive.size,
                    node.archive.mtime_ns)
        if node.incoming is not None:
            return stat.S_IFREG | 0o200, node.incoming.offset, node.incoming.mtime_ns
        if node.kind == stat.S_IFLNK:
            return stat.S_IFLNK | 0o777, len(node.target or ""), node.mtime_ns
        writable = node.area == INCOMING and node.vault is not None
        mode = 0o755 if others else 0o700
        if not writable:
            mode &= 0o555
        return stat.S_IFDIR | mode, 0, node.mtime_ns
