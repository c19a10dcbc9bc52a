"""Helpers the subcommands share: keys, passphrases, stores, output, progress."""

from __future__ import annotations

import argparse
import logging
import unicodedata
from typing import TYPE_CHECKING

from .. import config, errors, ids, throttle
from ..ids import human  # noqa: F401 (shared)
from ..options import add_spool_options, passphrase_reader  # noqa: F401 (shared)
from ..progress import Bar as Progress  # noqa: F401 (shared)
from ..spool import Spool

if TYPE_CHECKING:
    from .. import keys

log = logging.getLogger("cryophile")


class Context:
    """What every command gets: configuration, spool, options."""

    def __init__(self, args):
        self.args = args
        self.config = config.load(args.config)
        self.spool = Spool(args.spool or self.config.spool)
        self.store = config.Stores(self.config)       # vault uuid -> Store
        throttle.configure(limit(args, "upload", self.config.limit_upload),
                           limit(args, "download", self.config.limit_download))

    def vault(self, text: str) -> config.VaultConfig:
        return self.config.vault(text)

    def close(self) -> None:
        self.store.close()


def add_limit_option(p, direction: str, what: str) -> None:
    """--limit-upload or --limit-download RATE (bytes per second)."""
    p.add_argument(f"--limit-{direction}", metavar="RATE",
                   help=f"{what} no faster than RATE bytes per second, all transfers "
                        f"together (10M: 10 MiB/s, 500k, 2MB: decimal; 0: no limit); "
                        f"default: limit_{direction} in the configuration")


def limit(args, direction: str, configured: int | None) -> int | None:
    """The rate --limit-DIRECTION gives (0: none), else the configuration's."""
    given = getattr(args, f"limit_{direction}", None)
    if given is None:
        return configured
    return throttle.parse_rate(given, f"--limit-{direction}")


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


def positive_int(text: str) -> int:
    """argparse type for a whole number of 1 or more (counts, days)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return n


def usage_type(parse):
    """An argparse type from a parser that raises errors.UsageError, which argparse
    would let through as a traceback: it reports it as its own usage error."""
    def convert(text: str):
        try:
            return parse(text)
        except errors.UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = parse.__name__
    return convert


timestamp = usage_type(ids.parse_timestamp)


def backup_id(ctx: Context, args) -> ids.BackupId:
    vault = ctx.vault(args.vault).uuid
    return ids.BackupId(vault, ids.parse_prefix(args.prefix), ids.parse_ulid(args.ulid))


def secret_keys(paths: list[str], pass_fd: int | None) -> keys.SecretKeyring:
    if not paths:
        raise errors.UsageError("restore needs the secret key: give it with -k KEYFILE")
    from .. import keys            # (pgpy: only for the commands given a secret key)
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
