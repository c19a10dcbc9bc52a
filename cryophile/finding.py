"""Which archive a command means: ``VAULT/PREFIX/ULID`` as ``ls`` prints
it, or ``-v VAULT [-p PREFIX]`` with ``-u ULID``, ``--latest``,
``--before TIME`` or ``--name NAME`` (names are encrypted: that one needs
the secret key).  And the chain of incrementals that ends with it.

Only sealed, complete archives are found by ``--latest``, ``--before`` and
``--name``: one still being written, dead, abandoned or sealed incomplete
is never what a restore means.  Among archives made in the same
millisecond the ULID order decides.
"""

from __future__ import annotations

import datetime

from . import catalog, chains, errors, ids
from .ids import BackupId

UNSEALED = ("writing", "dead", "abandoned", "incomplete")


def parse_target(config, text: str) -> tuple[str, str, str | None]:
    """``VAULT[/PREFIX][/ULID]`` → (vault uuid, prefix, ulid or None); the
    vault may be an alias.  The last segment is a ULID if it reads as one."""
    vault_text, _, rest = text.strip("/").partition("/")
    vault = config.vault(vault_text).uuid
    head, _, last = rest.rpartition("/")
    if last and ids.ULID_RE.match(last.upper()):
        return vault, ids.parse_prefix(head), ids.parse_ulid(last)
    return vault, ids.parse_prefix(rest), None


def backup_id(config, text: str) -> BackupId:
    vault, prefix, ulid = parse_target(config, text)
    if ulid is None:
        raise errors.UsageError(f"{text!r} is not a backup id (VAULT/PREFIX/ULID)")
    return BackupId(vault, prefix, ulid)


def entries(ctx, vault: str, keyring=None) -> list[catalog.Entry]:
    """Every archive of the vault (all prefixes: a parent may live elsewhere)."""
    return catalog.list_archives(ctx.spool, ctx.store(vault), vault, "", keyring)


def pick(found: list[catalog.Entry], vault: str, prefix: str, *, latest: bool = False,
         before: datetime.datetime | None = None, name: str | None = None) -> BackupId:
    """The newest sealed archive under exactly PREFIX that matches."""
    where = f"{vault}/{prefix}" if prefix else vault
    mine = [e for e in found if e.bid.prefix == prefix and e.state not in UNSEALED]
    if before is not None:
        mine = [e for e in mine if ids.ulid_time(e.bid.ulid) < before]
    if name is not None:
        mine = [e for e in mine if name in (e.name, e.snapshot)]
    if not mine:
        what = ("named " + repr(name)) if name is not None else (
            f"made before {before.isoformat()}" if before is not None else "sealed")
        passed: dict[str, int] = {}
        for e in found:
            if e.bid.prefix == prefix and e.state in UNSEALED:
                passed[e.state] = passed.get(e.state, 0) + 1
        hint = (" (passed over: " + ", ".join(f"{n} {s}" for s, n in sorted(passed.items()))
                + "; cryophile ls shows them, restore takes one by its id)") if passed else ""
        raise errors.NotFoundError(f"no archive {what} in {where}{hint}")
    return max(mine, key=lambda e: e.bid.ulid).bid


def chain_of(found: list[catalog.Entry], bid: BackupId) -> list[catalog.Entry]:
    same = [e for e in found if e.bid.ulid == bid.ulid and e.bid.prefix == bid.prefix]
    if not same:
        raise errors.NotFoundError(f"no archive {bid}")
    return chains.chain(found, bid.key)
