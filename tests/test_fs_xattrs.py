"""The mount's stream xattrs: user.cryophile.stream, .parent (resolved
without the key) and .snapshot (with it), handlers called directly."""

from __future__ import annotations

import errno
import os

import pyfuse3
import pytest

from tests.fsrig import fskeys  # noqa: F401
from tests.streamgen import zfs_substream
from tests.test_fs_operations import backup, expect_errno, make_ops

pytestmark = pytest.mark.timeout(120)


async def xattr(ops, node, field):
    return await ops.getxattr(node.ino, f"user.cryophile.{field}".encode())


async def test_stream_parent_and_snapshot(tmp_path, fskeys, nursery):
    ops = make_ops(tmp_path, fskeys, nursery)
    full = await backup(ops, zfs_substream("<", 11, 0, "tank/fs@a", []), "a")
    inc = await backup(ops, zfs_substream("<", 22, 11, "tank/fs@b", []), "b")
    plain = await backup(ops, b"not a stream", "c")
    assert await xattr(ops, inc, "stream") == b"zfs"
    assert await xattr(ops, plain, "stream") == b"unknown"
    assert await xattr(ops, inc, "parent") == full.name.encode()
    await expect_errno(pyfuse3.ENOATTR, xattr(ops, full, "parent"))
    assert await xattr(ops, inc, "snapshot") == b"tank/fs@b"
    await expect_errno(pyfuse3.ENOATTR, xattr(ops, plain, "snapshot"))
    names = await ops.listxattr(inc.ino)
    assert {b"user.cryophile.stream", b"user.cryophile.parent",
            b"user.cryophile.snapshot"} <= set(names)
    for node in (full, inc, plain):             # getfattr -d: every listed one has a value
        for name in await ops.listxattr(node.ino):
            await ops.getxattr(node.ino, name)
    assert b"user.cryophile.parent" not in await ops.listxattr(full.ino)
    assert b"user.cryophile.snapshot" not in await ops.listxattr(plain.ino)
    ops.tree.remove(full)                       # gone from the vault
    assert await xattr(ops, inc, "parent") == b"MISSING"


@pytest.mark.expect_log
async def test_snapshot_needs_the_secret_key(tmp_path, fskeys, nursery):
    ops = make_ops(tmp_path, fskeys, nursery, secret=False)
    node = await backup(ops, zfs_substream("<", 11, 0, "tank/fs@a", []), "a")
    node.archive.manifest = None        # written here: its name is known, not its manifest
    assert await xattr(ops, node, "stream") == b"zfs"
    await expect_errno(errno.ENOKEY, xattr(ops, node, "snapshot"))


async def test_parent_listed_under_a_prefix(tmp_path, fskeys, nursery):
    # getfattr -d lists user.cryophile.parent for an incremental under a prefix
    # too (the chain is keyed by PREFIX/ULID, not by the bare ULID)
    from tests.test_fs_operations import VAULT, incoming, name
    ops = make_ops(tmp_path, fskeys, nursery)
    vault = await ops.lookup(await incoming(ops), name(VAULT))
    tank = await ops.mkdir(vault.st_ino, b"tank", 0o700, None)
    nodes = []
    for stream, filename in ((zfs_substream("<", 11, 0, "tank/fs@a", []), b"a"),
                             (zfs_substream("<", 22, 11, "tank/fs@b", []), b"b")):
        info, _ = await ops.create(tank.st_ino, filename, 0o600, os.O_WRONLY, None)
        assert await ops.write(info.fh, 0, stream) == len(stream)
        await ops.flush(info.fh)
        await ops.release(info.fh)
        (node,) = [n for n in ops.tree.root.children[VAULT].children["tank"].children.values()
                   if n.archive and n.archive.name == filename.decode()]
        nodes.append(node)
    full, inc = nodes
    assert b"user.cryophile.parent" in await ops.listxattr(inc.ino)
    assert await xattr(ops, inc, "parent") == full.name.encode()
    assert b"user.cryophile.parent" not in await ops.listxattr(full.ino)
