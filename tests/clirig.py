"""Run the real `cryophile` command against a spool and a local vault in tmp dirs."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import uuid
from pathlib import Path

VAULT = "0b8c3a7e-5a1d-4f7e-9a53-3f1c2d4e5f60"


def thaw_daemon_running(spool: Path) -> bool:
    """Whether a process holds the spool's thaw lock, asked as `status` asks it."""
    from cryophile.spool import Spool
    from cryophile.thaw import DaemonLock
    lock = DaemonLock(Spool(str(spool)))
    try:
        return not lock.acquire(create=False)
    finally:
        lock.release()


@dataclasses.dataclass
class Rig:
    root: Path
    vault: str = VAULT

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def vaults(self) -> Path:
        return self.root / "vaults"

    @property
    def config(self) -> Path:
        return self.root / "cryophile.toml"

    def write_config(self, **vault_settings) -> None:
        lines = [f'spool = "{self.spool}"', f'[vault.{self.vault}]',
                 f'url = "file://{self.vaults}"']
        for k, v in vault_settings.items():
            lines.append(f"{k} = {v!r}".replace("'", '"') if not isinstance(v, list)
                         else f"{k} = {[str(x) for x in v]!r}".replace("'", '"'))
        self.config.write_text("\n".join(lines) + "\n")

    def command(self, *args: str, pre=()) -> list[str]:
        """The command line; ``pre`` are global options (e.g. a second -S, -d, -q)."""
        return [sys.executable, "-m", "cryophile", "-S", str(self.spool), "-c", str(self.config),
                *pre, *args]

    def run(self, *args: str, input: bytes | None = b"", env: dict | None = None,
            pass_fds=(), timeout: float = 300, check: bool = False,
            pre=()) -> subprocess.CompletedProcess:
        cmd = self.command(*args, pre=pre)
        full_env = {**os.environ, "CRYOPHILE_LOG_STYLE": "never", **(env or {})}
        proc = subprocess.run(cmd, input=input, capture_output=True, env=full_env,
                              pass_fds=pass_fds, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{cmd} exited {proc.returncode}: "
                                 f"{proc.stderr.decode(errors='replace')}")
        return proc

    def backup(self, data: bytes, cert, *args: str) -> str:
        proc = self.run("backup", "-v", self.vault, "-k", str(cert), *args, input=data,
                        check=True)
        return proc.stdout.decode().strip()

    def restore(self, ulid: str, key, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run("restore", "-v", self.vault, "-u", ulid, "-k", str(key), *args,
                        input=None, **kw)


def new_vault() -> str:
    return str(uuid.uuid4())


def make_rig(root: Path, **vault_settings) -> Rig:
    """A rig in ``root`` with its configuration written."""
    rig = Rig(Path(root))
    rig.write_config(**vault_settings)
    return rig


def passphrase_fd(passphrase: str | None) -> tuple[list[str], tuple[int, ...], list[int]]:
    """(-P FD args, pass_fds, fds to close): the passphrase readable from a pipe.

    As in the README: ``exec 4<<<"$PASS"; cryophile restore … --pass-fd=4``.
    """
    if passphrase is None:
        return [], (), []
    r, w = os.pipe()
    os.write(w, passphrase.encode() + b"\n")
    os.close(w)
    return ["-P", str(r)], (r,), [r]


def restore_with(rig: Rig, ulid: str, recipe, *args: str, passphrase: str | None = None,
                 **kw) -> subprocess.CompletedProcess:
    """restore with ``recipe``'s key, giving its passphrase by fd if it has one."""
    pw = recipe.passphrase if passphrase is None else passphrase
    extra, fds, close = passphrase_fd(pw)
    try:
        return rig.restore(ulid, recipe.key, *extra, *args, pass_fds=fds, **kw)
    finally:
        for fd in close:
            os.close(fd)


def archive_dir(rig: Rig, ulid: str, prefix: str = "", where: str = "vault") -> Path:
    """Where an archive's fragments are: the vault directory or the spool's freeze queue."""
    key = f"{prefix}/{ulid}" if prefix else ulid
    if where == "vault":
        return rig.vaults / rig.vault / key
    return rig.spool / where / rig.vault / key


def fragments(directory: Path) -> list[Path]:
    """chunk.1 … chunk.N in order (chunk.0 excluded)."""
    found = sorted((p for p in directory.glob("chunk.*") if p.name != "chunk.0"),
                   key=lambda p: int(p.name.split(".")[1]))
    assert [int(p.name.split(".")[1]) for p in found] == list(range(1, len(found) + 1))
    return found


def message(directory: Path) -> bytes:
    """The concatenation of chunk.1 … chunk.N."""
    return b"".join(p.read_bytes() for p in fragments(directory))
