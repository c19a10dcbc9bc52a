"""The FUSE handlers called directly, without a kernel (pytest-trio)."""

from __future__ import annotations

import errno
import logging
import os
import random
import stat

import pyfuse3
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryophile import config, ids, keys
from cryophile.freeze import Freezer
from cryophile.spool import Spool
from cryophilefs.operations import Operations, Settings
from tests.fsrig import VAULT, fskeys  # noqa: F401

MiB = 1 << 20


def make_ops(tmp_path, fskeys, nursery, secret: bool = True, url: str | None = None
             ) -> Operations:
    cfg = config.parse({"spool": str(tmp_path / "spool"), "vault": {VAULT: {
        "url": url or f"file://{tmp_path / 'vaults'}", "fragment_size": "1MiB"}}})
    spool = Spool(cfg.spool)
    spool.ensure()
    keyring = keys.load_secret_keys([str(fskeys[1])], None) if secret else None
    settings = Settings(cfg, spool, config.Stores(cfg), keys.load_certificates([str(fskeys[0])]),
                        keyring)
    return Operations(settings, nursery)


def name(text: str) -> bytes:
    return text.encode()


async def expect_errno(code: int, call) -> None:
    with pytest.raises(pyfuse3.FUSEError) as info:
        await call
    assert info.value.errno == code


async def backup(ops: Operations, data: bytes, filename: str = "dump", step: int = 300_000):
    """create, write in order, flush, release; the archive's node."""
    vault = await ops.lookup(await incoming(ops), name(VAULT))
    info, attrs = await ops.create(vault.st_ino, name(filename), 0o600, os.O_WRONLY, None)
    for off in range(0, len(data), step):
        assert await ops.write(info.fh, off, data[off:off + step]) == len(data[off:off + step])
    await ops.flush(info.fh)
    await ops.release(info.fh)
    top = ops.tree.root.children[VAULT]
    (node,) = [n for n in top.children.values() if n.archive and n.archive.name == filename]
    return node


async def incoming(ops: Operations) -> int:
    return (await ops.lookup(pyfuse3.ROOT_INODE, b"incoming")).st_ino


async def read_all(ops: Operations, ino: int, size: int, step: int = 128 << 10) -> bytes:
    info = await ops.open(ino, os.O_RDONLY, None)
    try:
        parts = []
        for off in range(0, size, step):
            parts.append(await ops.read(info.fh, off, step))
        return b"".join(parts)
    finally:
        await ops.release(info.fh)


async def test_write_then_read_back(tmp_path, fskeys, nursery):
    ops = make_ops(tmp_path, fskeys, nursery)
    data = os.urandom(3 * MiB + 12345)
    node = await backup(ops, data)
    attrs = await ops.lookup(node.parent.ino, name(node.name))
    assert attrs.st_size == len(data) and stat.S_ISREG(attrs.st_mode)
    assert attrs.st_mode & 0o777 == 0o400
    assert await read_all(ops, node.ino, len(data)) == data
    assert await ops.getxattr(node.ino, b"user.cryophile.name") == b"dump"
    assert await ops.getxattr(node.ino, b"user.cryophile.state") == b"queued"
    assert await ops.getxattr(node.ino, b"user.cryophile.fragments") == b"4"
    await expect_errno(pyfuse3.ENOATTR, ops.getxattr(node.ino, b"user.other"))
    # out of order reads go through the seek index
    info = await ops.open(node.ino, os.O_RDONLY, None)
    for off in (2 * MiB + 7, 5, 3 * MiB, len(data) - 10):
        assert await ops.read(info.fh, off, 1000) == data[off:off + 1000]
    await ops.release(info.fh)


class SizeOnly:              # pyfuse3.SetattrFields cannot be set from Python
    update_size, update_mode, update_mtime = True, False, False


class ModeOnly:
    update_size, update_mode, update_mtime = False, True, False


def archives_of(ops: Operations) -> list:
    return [n for n in ops.tree.walk(ops.tree.root.children[VAULT]) if n.archive]


def mark(tmp_path, bid) -> bool:
    return (tmp_path / "spool" / "freeze" / VAULT / bid.key / "chunk.0").exists()


async def start(ops: Operations, filename: str):
    vault = await ops.lookup(await incoming(ops), name(VAULT))
    info, attrs = await ops.create(vault.st_ino, name(filename), 0o600, os.O_WRONLY, None)
    return vault, info, attrs


@pytest.mark.expect_log
async def test_a_rejected_write_fails_the_backup(tmp_path, fskeys, nursery, caplog):
    ops = make_ops(tmp_path, fskeys, nursery)
    vault, info, attrs = await start(ops, "seq")
    bid = ops.handles[info.fh].incoming.bid
    await ops.write(info.fh, 0, b"x" * 100)
    await expect_errno(errno.ESPIPE, ops.write(info.fh, 50, b"y"))
    await expect_errno(errno.ESPIPE, ops.write(info.fh, 100, b"y"))    # in order: too late
    await expect_errno(errno.EACCES, ops.open(attrs.st_ino, os.O_RDONLY, None))
    await expect_errno(errno.EBUSY, ops.create(vault.st_ino, b"seq", 0o600, os.O_WRONLY, None))
    assert await ops.getxattr(attrs.st_ino, b"user.cryophile.state") == b"failed"
    await expect_errno(errno.ESPIPE, ops.flush(info.fh))                # close(2) fails
    await ops.release(info.fh)
    assert not archives_of(ops) and not mark(tmp_path, bid)
    assert "written in order" in caplog.text
    assert f"backup {bid} (seq) failed and was dropped, nothing sealed" in caplog.text


@pytest.mark.expect_log
async def test_a_rejected_truncate_fails_the_backup(tmp_path, fskeys, nursery, caplog):
    ops = make_ops(tmp_path, fskeys, nursery)
    _, info, attrs = await start(ops, "trunc")
    attrs.st_size = 0
    await ops.setattr(attrs.st_ino, attrs, SizeOnly(), info.fh, None)  # O_TRUNC: fine
    await ops.write(info.fh, 0, b"x" * 100)
    attrs.st_size = 100
    await ops.setattr(attrs.st_ino, attrs, SizeOnly(), info.fh, None)  # its own size: fine
    attrs.st_size = 4096                                              # cp --sparse's hole
    await expect_errno(errno.EPERM, ops.setattr(attrs.st_ino, attrs, SizeOnly(), info.fh, None))
    await expect_errno(errno.EPERM, ops.flush(info.fh))
    await ops.release(info.fh)
    assert not archives_of(ops)
    assert "cannot truncate" in caplog.text and "failed and was dropped" in caplog.text


async def test_flush_seals_and_release_lets_freeze_take_it(tmp_path, fskeys, nursery):
    ops = make_ops(tmp_path, fskeys, nursery)
    _, info, attrs = await start(ops, "sealed")
    bid = ops.handles[info.fh].incoming.bid
    await ops.write(info.fh, 0, b"z" * 5000)
    await ops.flush(info.fh)
    assert mark(tmp_path, bid)                      # durable when close(2) returns
    (node,) = archives_of(ops)
    assert node.archive.size == 5000 and node.archive.name == "sealed"
    assert await ops.getxattr(attrs.st_ino, b"user.cryophile.state") == b"sealed"
    backup_dir = tmp_path / "spool" / "backup" / VAULT / bid.key
    assert backup_dir.exists()                      # held: freeze leaves chunk.0 alone
    await ops.flush(info.fh)                        # a second close (a dup): nothing new
    await ops.release(info.fh)
    assert not backup_dir.exists()
    assert await read_all(ops, node.ino, 5000) == b"z" * 5000


@pytest.mark.expect_log
async def test_a_write_after_the_seal_withdraws_the_archive(tmp_path, fskeys, nursery, caplog):
    ops = make_ops(tmp_path, fskeys, nursery)
    _, info, attrs = await start(ops, "twice")
    bid = ops.handles[info.fh].incoming.bid
    await ops.write(info.fh, 0, b"a" * 100)
    await ops.flush(info.fh)                        # a child closing its copy of the fd
    assert archives_of(ops)
    await expect_errno(errno.EPERM, ops.write(info.fh, 100, b"b" * 100))
    assert not archives_of(ops) and not mark(tmp_path, bid)
    queue = tmp_path / "spool" / "freeze" / VAULT / bid.key
    assert (queue / "ABANDONED").exists()           # freeze deletes what it uploaded
    assert await ops.getxattr(attrs.st_ino, b"user.cryophile.state") == b"withdrawn"
    await expect_errno(errno.EPERM, ops.flush(info.fh))
    await ops.release(info.fh)
    assert not archives_of(ops)
    assert "was withdrawn" in caplog.text
    await Freezer(ops.s.spool, ops.s.stores, lambda v: "STANDARD").run(once=True)
    assert not list((tmp_path / "vaults").rglob("chunk.*"))


async def test_close_with_nothing_written_seals_nothing(tmp_path, fskeys, nursery):
    ops = make_ops(tmp_path, fskeys, nursery)
    vault, info, attrs = await start(ops, "touched")
    await ops.flush(info.fh)
    await ops.release(info.fh)                      # touch: no archive
    assert not archives_of(ops)
    assert not [p for p in (tmp_path / "spool").rglob("*") if p.is_file()]  # no trace
    assert await ops.getxattr(attrs.st_ino, b"user.cryophile.state") == b"empty"
    # written later through the same name: a backup like any other
    info = await ops.open(attrs.st_ino, os.O_WRONLY, None)
    await ops.write(info.fh, 0, b"later")
    await ops.flush(info.fh)
    await ops.release(info.fh)
    (node,) = archives_of(ops)
    assert node.archive.name == "touched" and node.archive.size == 5


@pytest.mark.expect_log
async def test_a_sealed_name_takes_a_new_backup_but_no_append(tmp_path, fskeys, nursery):
    ops = make_ops(tmp_path, fskeys, nursery)
    await backup(ops, b"first", filename="same")
    vault = await ops.lookup(await incoming(ops), name(VAULT))
    entry = await ops.lookup(vault.st_ino, b"same")
    await expect_errno(errno.EPERM, ops.open(entry.st_ino, os.O_WRONLY | os.O_APPEND, None))
    for flags, data in ((os.O_TRUNC, b"second"), (0, b"third!!")):    # cp, rsync -W
        info = await ops.open(entry.st_ino, os.O_WRONLY | flags, None)
        await ops.write(info.fh, 0, data)
        await ops.flush(info.fh)
        await ops.release(info.fh)
    assert sorted(n.archive.size for n in archives_of(ops)) == [5, 6, 7]


async def test_a_released_entry_lingers_unlisted(tmp_path, fskeys, nursery, monkeypatch):
    from cryophilefs import writer
    ops = make_ops(tmp_path, fskeys, nursery)
    node = await backup(ops, b"rsync", filename="synced")
    vault = await ops.lookup(await incoming(ops), name(VAULT))
    entry = await ops.lookup(vault.st_ino, b"synced")     # rsync's stat after close
    assert entry.st_size == 5
    await ops.setattr(entry.st_ino, entry, ModeOnly(), None, None)   # chmod
    entry.st_mtime_ns = 10**18

    class MtimeOnly:
        update_size, update_mode, update_mtime = False, False, True
    await ops.setattr(entry.st_ino, entry, MtimeOnly(), None, None)  # utimes: kept
    assert (await ops.getattr(entry.st_ino, None)).st_mtime_ns == 10**18
    assert await ops.getxattr(entry.st_ino, b"user.cryophile.backup_id") == \
        str(node.archive.bid).encode()
    info = await ops.open(entry.st_ino, os.O_RDONLY, None)      # rsync's fchmod
    await ops.setattr(entry.st_ino, entry, ModeOnly(), info.fh, None)
    await ops.release(info.fh)
    fh = await ops.opendir(vault.st_ino, None)
    assert ops.dirs[fh] == []                                   # not listed
    await ops.releasedir(fh)
    await ops.unlink(vault.st_ino, b"synced", None)             # the name only
    assert archives_of(ops) == [node]
    await backup(ops, b"again", filename="expires")
    await backup(ops, b"again", filename="expires-too")
    monkeypatch.setattr(writer, "LINGER", -1.0)
    await expect_errno(errno.ENOENT, ops.lookup(vault.st_ino, b"expires"))
    await ops.releasedir(await ops.opendir(vault.st_ino, None))
    assert ops.tree.get(vault.st_ino).children == {}


@pytest.mark.expect_log
async def test_a_seal_failing_half_way_leaves_no_archive(tmp_path, fskeys, nursery, monkeypatch):
    from cryophile.pipeline.writer import ArchiveWriter

    def failing(w):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(ArchiveWriter, "_fsync_parents", failing)
    ops = make_ops(tmp_path, fskeys, nursery)
    _, info, _ = await start(ops, "half")
    bid = ops.handles[info.fh].incoming.bid
    await ops.write(info.fh, 0, b"h" * 1000)
    await expect_errno(errno.EIO, ops.flush(info.fh))      # chunk.0 could not be made durable
    await ops.release(info.fh)
    assert not archives_of(ops) and not mark(tmp_path, bid)
    assert not (tmp_path / "spool" / "backup" / VAULT / bid.key).exists()


@pytest.mark.expect_log
async def test_unmount_keeps_a_sealed_open_file_and_drops_the_rest(tmp_path, fskeys, nursery):
    ops = make_ops(tmp_path, fskeys, nursery)
    _, sealed, _ = await start(ops, "sealed")
    _, open_, _ = await start(ops, "open")
    kept, dropped = (ops.handles[h.fh].incoming.bid for h in (sealed, open_))
    for info in (sealed, open_):
        await ops.write(info.fh, 0, b"q" * 1000)
    await ops.flush(sealed.fh)
    await trio.to_thread.run_sync(ops.abort_writers)
    assert mark(tmp_path, kept) and not mark(tmp_path, dropped)
    assert not (tmp_path / "spool" / "backup" / VAULT / kept.key).exists()     # let go
    await Freezer(ops.s.spool, ops.s.stores, lambda v: "STANDARD").run(once=True)
    assert (tmp_path / "vaults" / VAULT / kept.key / "chunk.0").exists()
    assert not (tmp_path / "vaults" / VAULT / dropped.key).exists()


def tar_bytes() -> bytes:
    import io
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(3):
            info = tarfile.TarInfo(f"file{i}")
            info.size = 30_000
            tar.addfile(info, io.BytesIO(os.urandom(info.size)))
    return buf.getvalue()


@pytest.mark.expect_log
async def test_a_stream_cut_short_is_sealed_incomplete(tmp_path, fskeys, nursery, caplog):
    ops = make_ops(tmp_path, fskeys, nursery)
    whole = tar_bytes()
    good = await backup(ops, whole, filename="whole.tar")
    cut = await backup(ops, whole[:50_000], filename="cut.tar")
    assert await ops.getxattr(good.ino, b"user.cryophile.state") == b"queued"
    assert await ops.getxattr(cut.ino, b"user.cryophile.state") == b"incomplete"
    assert not cut.archive.clear.complete and cut.archive.clear.kind == "tar"
    vault = await ops.lookup(await incoming(ops), name(VAULT))
    entry = await ops.lookup(vault.st_ino, b"cut.tar")
    assert await ops.getxattr(entry.st_ino, b"user.cryophile.state") == b"incomplete"
    assert await read_all(ops, cut.ino, 50_000) == whole[:50_000]    # what was written
    assert "sealed as incomplete" in caplog.text


@pytest.mark.expect_log
async def test_an_unconfigured_vault_says_where_it_goes(tmp_path, fskeys, nursery, caplog):
    ops = make_ops(tmp_path, fskeys, nursery)
    other = "5d7c1f3e-2b4a-4c6d-8e9f-0a1b2c3d4e5f"
    await ops.mkdir(await incoming(ops), name(other), 0o700, None)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and f"s3://{other}" in warned[0]
    assert "not configured" in warned[0] and "AWS" in warned[0]
    vault = await ops.lookup(await incoming(ops), name(other))
    info, _ = await ops.create(vault.st_ino, b"x", 0o600, os.O_WRONLY, None)
    await ops.release(info.fh)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1     # once


@pytest.mark.expect_log
async def test_unlink_while_writing_cancels_the_backup(tmp_path, fskeys, nursery):
    ops = make_ops(tmp_path, fskeys, nursery)
    vault = await ops.lookup(await incoming(ops), name(VAULT))
    info, _ = await ops.create(vault.st_ino, b"gone", 0o600, os.O_WRONLY, None)
    await ops.write(info.fh, 0, b"x" * 100)
    await ops.unlink(vault.st_ino, b"gone", None)
    await expect_errno(errno.ECANCELED, ops.write(info.fh, 100, b"x"))
    await ops.release(info.fh)
    assert not [n for n in ops.tree.root.children[VAULT].children.values() if n.archive]


@pytest.mark.expect_log
async def test_mkdir_checks_prefixes_and_read_only_parts(tmp_path, fskeys, nursery):
    ops = make_ops(tmp_path, fskeys, nursery)
    vault = await ops.lookup(await incoming(ops), name(VAULT))
    await ops.mkdir(vault.st_ino, b"tank", 0o700, None)
    await expect_errno(errno.EINVAL, ops.mkdir(vault.st_ino, b"bad name", 0o700, None))
    await expect_errno(errno.EEXIST, ops.mkdir(vault.st_ino, b"tank", 0o700, None))
    archives = await ops.lookup(pyfuse3.ROOT_INODE, name(VAULT))
    await expect_errno(errno.EROFS, ops.mkdir(archives.st_ino, b"x", 0o700, None))
    await expect_errno(errno.EROFS, ops.create(archives.st_ino, b"x", 0o600, os.O_WRONLY, None))
    await expect_errno(errno.EPERM, ops.create(await incoming(ops), b"x", 0o600, 1, None))


@pytest.mark.expect_log
@pytest.mark.parametrize("base", ["", "backups/" + "p" * 100])
async def test_mkdir_keeps_prefixes_within_the_key_limit(tmp_path, fskeys, nursery, caplog,
                                                          base):
    """incoming/VAULT/PREFIX stops where [BASE/]PREFIX/ULID/chunk.N would pass 1024 bytes,
    the vault URL's path (BASE) counted, as backup -p counts it."""
    url = f"s3://bucket/{base}" if base else None
    ops = make_ops(tmp_path, fskeys, nursery, url=url)
    limit = ids.prefix_limit(base=base)
    assert limit == 984 - (len(base) + 1 if base else 0)
    ino, used = (await ops.lookup(await incoming(ops), name(VAULT))).st_ino, -1
    while limit - used - 1 > 200:
        ino = (await ops.mkdir(ino, b"d" * 199, 0o700, None)).st_ino
        used += 200
    last = "e" * (limit - used - 1)                # the prefix is now exactly the limit
    await expect_errno(errno.ENAMETOOLONG, ops.mkdir(ino, name(last + "e"), 0o700, None))
    assert f"at most {limit} fit" in caplog.text
    full = await ops.mkdir(ino, name(last), 0o700, None)
    await expect_errno(errno.ENAMETOOLONG, ops.mkdir(full.st_ino, b"f", 0o700, None))
    assert len(ops.tree.get(full.st_ino).prefix.encode()) == limit


@pytest.mark.expect_log
async def test_no_secret_key_is_enokey(tmp_path, fskeys, nursery, caplog):
    ops = make_ops(tmp_path, fskeys, nursery, secret=False)
    node = await backup(ops, b"hello")
    await expect_errno(errno.ENOKEY, ops.open(node.ino, os.O_RDONLY, None))
    assert "mount with -k" in caplog.text


@pytest.mark.expect_log
async def test_damaged_fragment_is_eio_never_wrong_bytes(tmp_path, fskeys, nursery, caplog):
    ops = make_ops(tmp_path, fskeys, nursery)
    data = os.urandom(3 * MiB)
    node = await backup(ops, data)
    s = ops.s
    await Freezer(s.spool, s.stores, lambda v: "STANDARD").run(once=True)
    bid = node.archive.bid
    path = tmp_path / "vaults" / VAULT / bid.fragment_key(2)
    raw = bytearray(path.read_bytes())
    raw[1000] ^= 1
    path.write_bytes(bytes(raw))
    info = await ops.open(node.ino, os.O_RDONLY, None)
    good = b""
    with pytest.raises(pyfuse3.FUSEError) as failure:
        for off in range(0, len(data), 128 << 10):
            good += await ops.read(info.fh, off, 128 << 10)
    assert failure.value.errno == errno.EIO
    assert good == data[:len(good)] and len(good) < len(data)
    assert "nothing unverified" in caplog.text
    await ops.release(info.fh)


@pytest.mark.expect_log
async def test_unexpected_exception_becomes_eio(tmp_path, fskeys, nursery, caplog, monkeypatch):
    ops = make_ops(tmp_path, fskeys, nursery)

    def broken(node):
        raise RuntimeError("a bug")
    monkeypatch.setattr(ops.tree, "attrs", broken)
    with caplog.at_level(logging.ERROR):
        await expect_errno(errno.EIO, ops.getattr(pyfuse3.ROOT_INODE, None))
    assert "internal error" in caplog.text and "a bug" in caplog.text


async def test_read_ahead_serves_concurrent_reads(tmp_path, fskeys, nursery):
    ops = make_ops(tmp_path, fskeys, nursery)
    data = os.urandom(2 * MiB + 99)
    node = await backup(ops, data)
    info = await ops.open(node.ino, os.O_RDONLY, None)
    got = {}

    async def one(off):
        got[off] = await ops.read(info.fh, off, 128 << 10)
    async with trio.open_nursery() as inner:     # as the kernel's readahead does
        for off in reversed(range(0, len(data), 128 << 10)):
            inner.start_soon(one, off)
    assert b"".join(got[k] for k in sorted(got)) == data
    await ops.release(info.fh)


async def test_concurrent_reads_far_apart_on_one_handle(tmp_path, fskeys, nursery):
    """The kernel's readahead sends several reads at once; reads far apart on
    one handle must all be answered (no steering back and forth, no hang)."""
    from cryophilefs import reader
    ops = make_ops(tmp_path, fskeys, nursery)
    data = os.urandom(3 * reader.AHEAD * MiB)
    node = await backup(ops, data)
    info = await ops.open(node.ino, os.O_RDONLY, None)
    offsets = [0, 5 * MiB, len(data) - MiB, reader.AHEAD * MiB + 3, 2 * MiB, 7,
               (2 * reader.AHEAD + 1) * MiB]
    got = {}

    async def one(off):
        got[off] = await ops.read(info.fh, off, 200_000)
    with trio.fail_after(120):          # a hang guard, not a speed check
        for _ in range(3):
            async with trio.open_nursery() as readers:
                for off in offsets:
                    readers.start_soon(one, off)
            assert all(got[off] == data[off:off + 200_000] for off in offsets)
    await ops.release(info.fh)


deltas = st.one_of(st.just(0), st.just(0), st.integers(-3000, 3000))


@pytest.mark.expect_log
@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=st.lists(st.tuples(deltas, st.integers(1, 5000)), min_size=1, max_size=6),
       seed=st.integers(0, 2**32))
def test_what_is_sealed_is_every_byte_in_order_or_nothing(tmp_path_factory, fskeys, writes,
                                                          seed):
    """Any sequence of writes: in order, the archive holds exactly those bytes;
    one write out of order (back, or over a gap), and nothing is sealed."""
    root = tmp_path_factory.mktemp("prop")
    data = random.Random(seed).randbytes(5000)

    async def run():
        async with trio.open_nursery() as nursery:
            ops = make_ops(root, fskeys, nursery)
            _, info, _ = await start(ops, "prop")
            offset, written, refused = 0, b"", False
            for delta, size in writes:
                off, buf = max(0, offset + delta), data[:size]
                if off != offset:
                    await expect_errno(errno.ESPIPE, ops.write(info.fh, off, buf))
                    refused = True
                    break
                assert await ops.write(info.fh, off, buf) == size
                offset, written = offset + size, written + buf
            if refused:
                await expect_errno(errno.ESPIPE, ops.flush(info.fh))
            else:
                await ops.flush(info.fh)
            await ops.release(info.fh)
            found = archives_of(ops)
            if refused:
                assert not found and not list((root / "spool" / "freeze").rglob("chunk.0"))
            else:
                (node,) = found
                assert await read_all(ops, node.ino, len(written)) == written
            nursery.cancel_scope.cancel()
    trio.run(run)


async def test_a_closed_reader_hands_its_memory_back(tmp_path, fskeys, nursery, monkeypatch):
    """The mount's memory after reads is what it was before them: the closed
    reader's cache goes, and the heap's freed buffers go back to the kernel."""
    from cryophile.pipeline import buffers
    trims = []
    monkeypatch.setattr(buffers, "release_unused", lambda: trims.append(1))
    ops = make_ops(tmp_path, fskeys, nursery)
    data = os.urandom(3 * MiB + 5)
    node = await backup(ops, data)
    info = await ops.open(node.ino, os.O_RDONLY, None)
    reader = ops.handles[info.fh].reader
    assert await ops.read(info.fh, MiB, MiB) == data[MiB:2 * MiB]
    assert reader.cache
    await ops.release(info.fh)
    assert not reader.cache
    with trio.fail_after(60):           # a hang guard: the read-ahead task ends
        while not trims:
            await trio.sleep(0.01)


async def test_an_open_alone_decrypts_nothing(tmp_path, fskeys, nursery, monkeypatch):
    """Decryption starts with the first read: an open to stat, fadvise or probe
    the file must not hash fragments and decrypt beside the reads that follow."""
    from cryophile.pipeline.plainreader import PlainReader
    calls = []
    real = PlainReader.read
    monkeypatch.setattr(PlainReader, "read", lambda self, *a: calls.append(a) or real(self, *a))
    ops = make_ops(tmp_path, fskeys, nursery)
    data = os.urandom(2 * MiB + 5)
    node = await backup(ops, data)
    info = await ops.open(node.ino, os.O_RDONLY, None)
    await trio.testing.wait_all_tasks_blocked()
    await trio.sleep(0.5)               # time for a thread that should not run
    assert calls == []
    assert await ops.read(info.fh, 0, MiB) == data[:MiB]
    await ops.release(info.fh)


@pytest.mark.expect_log
async def test_a_fragment_is_hashed_again_only_when_it_changed(tmp_path, fskeys, nursery,
                                                               monkeypatch, caplog):
    """Opens after the first do not hash an unchanged fragment again (a read far
    into an archive cost a whole fragment's SHA-256 at each open); a fragment
    written since is hashed again, and damage is EIO, never wrong bytes."""
    from cryophile.pipeline import plainreader
    hashed = []
    real = plainreader.open_verified
    monkeypatch.setattr(plainreader, "open_verified",
                        lambda path, frag, n: hashed.append(n) or real(path, frag, n))
    ops = make_ops(tmp_path, fskeys, nursery)
    data = os.urandom(3 * MiB)
    node = await backup(ops, data)
    s = ops.s
    await Freezer(s.spool, s.stores, lambda v: "STANDARD").run(once=True)

    async def read_at(off: int) -> bytes:
        info = await ops.open(node.ino, os.O_RDONLY, None)
        try:
            return await ops.read(info.fh, off, 4096)
        finally:
            await ops.release(info.fh)
    far = len(data) - 5000
    assert await read_at(far) == data[far:far + 4096]
    first = len(hashed)
    assert first >= 1
    for _ in range(3):
        assert await read_at(far) == data[far:far + 4096]
    assert len(hashed) == first                  # nothing hashed again
    path = tmp_path / "vaults" / VAULT / node.archive.bid.fragment_key(hashed[-1])
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 1
    path.write_bytes(bytes(raw))                 # written since: hashed again, refused
    with pytest.raises(pyfuse3.FUSEError) as failure:
        await read_at(far)
    assert failure.value.errno == errno.EIO
    assert len(hashed) > first
