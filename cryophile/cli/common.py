"""Helpers the subcommands share: keys, passphrases, stores, output, progress."""

from __future__ import annotations

import logging
import sys
import time
import unicodedata

from .. import config, errors, ids, keys
from ..ids import human  # noqa: F401 (shared)
from ..options import add_spool_options, passphrase_reader  # noqa: F401 (shared)
from ..spool import Spool

log = logging.getLogger("cryophile")


class Context:
    """What every command gets: configuration, spool, options."""

    def __init__(self, args):
        self.args = args
        self.config = config.load(args.config)
        self.spool = Spool(args.spool or self.config.spool)
        self.store = config.Stores(self.config)       # vault uuid -> Store

    def vault(self, text: str) -> config.VaultConfig:
        return self.config.vault(text)

    def close(self) -> None:
        self.store.close()


def run_service(main, *args) -> None:
    """Run a trio service until it returns or SIGTERM/SIGINT asks it to stop;
    a stop asked for is a clean exit."""
    import signal

    import trio

    async def wrapper():
        async with trio.open_nursery() as nursery:
            async def stop_on_signal():
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for signum in signals:
                        log.info("stopping on %s", signal.Signals(signum).name)
                        nursery.cancel_scope.cancel()
                        return
            nursery.start_soon(stop_on_signal)
            await main(*args)
            nursery.cancel_scope.cancel()
    trio.run(wrapper)


def backup_id(ctx: Context, args) -> ids.BackupId:
    vault = ctx.vault(args.vault).uuid
    return ids.BackupId(vault, ids.parse_prefix(args.prefix), ids.parse_ulid(args.ulid))


def secret_keys(paths: list[str], pass_fd: int | None) -> keys.SecretKeyring:
    if not paths:
        raise errors.UsageError("restore needs the secret key: give it with -k KEYFILE")
    return keys.load_secret_keys(paths, passphrase_reader(pass_fd))


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}
# control, format (bidi overrides, zero-width), surrogate, private, unassigned,
# line and paragraph separators: nothing a terminal should be handed raw
_HIDDEN = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def escape(text: str) -> str:
    """``text`` safe to print on a terminal: one line, no escape sequences, no
    characters that reorder or hide others.  A backslash starts every escape
    (\\n, \\x1b, \\u202e) and is itself doubled, so different texts stay different."""
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text                   # the common case (ids, most names), at C speed
    out = []
    for ch in text:
        if ch in _NAMED:
            out.append(_NAMED[ch])
        elif unicodedata.category(ch) in _HIDDEN:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else
                       f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


class Progress:
    """A one-line progress report on stderr, only when it is a terminal."""

    def __init__(self, what: str, total: int | None = None, enabled: bool | None = None):
        self.what, self.total = what, total
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.start = self.last = time.monotonic()
        self.done = 0

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self.last >= 0.5:
            self.last = now
            self._show(now)

    def _show(self, now: float) -> None:
        rate = self.done / max(now - self.start, 1e-6)
        total = f" of {human(self.total)}" if self.total else ""
        sys.stderr.write(f"\r{self.what}: {human(self.done)}{total}, {human(rate)}/s   ")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            self._show(time.monotonic())
            sys.stderr.write("\n")
            sys.stderr.flush()
