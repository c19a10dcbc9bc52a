"""Keys made by the three recipes of the README (sq, sqop, gpg), plus RSA and
passphrase-protected ones, for every test that needs real OpenPGP peers."""

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

PASSWORD = "secret"
PAST = "20200101T000000"  # gpg --faked-system-time, to make already-expired keys


@dataclass
class Recipe:
    cert: Path
    key: Path
    passphrase: str | None = None


def run(*cmd, stdin: bytes | None = None, env: dict | None = None) -> bytes:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, env=env, timeout=120)
    assert proc.returncode == 0, f"{cmd} failed: {proc.stderr.decode(errors='replace')}"
    return proc.stdout


class Gpg:
    """gpg in its own home, non-interactive."""

    def __init__(self, home: Path):
        home.mkdir(mode=0o700)
        self.env = {**os.environ, "GNUPGHOME": str(home)}

    def __call__(self, *args, stdin: bytes | None = None, passphrase: str = "") -> bytes:
        base = ["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", passphrase]
        return run(*base, *args, stdin=stdin, env=self.env)

    def fingerprint(self, uid: str) -> str:
        out = self("--with-colons", "--list-keys", uid).decode()
        return re.search(r"^fpr:+([0-9A-F]{40}):", out, re.M).group(1)

    def subkeys(self, fpr: str) -> dict[str, str]:
        """Subkey fingerprint -> gpg validity letter (u, e expired, r revoked)."""
        out = self("--with-colons", "--list-keys", fpr).decode()
        pairs = re.findall(r"^sub:(\w):.*\n^fpr:+([0-9A-F]{40}):", out, re.M)
        return {f: v for v, f in pairs}

    def new_key(self, uid: str, algo: str, enc_algo: str | None, passphrase: str = "", *extra) -> str:
        self(*extra, "--quick-gen-key", uid, algo, "sign", "never", passphrase=passphrase)
        fpr = self.fingerprint(uid)
        if enc_algo:
            self("--quick-add-key", fpr, enc_algo, "encr", "never", passphrase=passphrase)
        return fpr

    def export(self, d: Path, name: str, fpr: str, passphrase: str = "") -> Recipe:
        cert, key = d / f"{name}.cert", d / f"{name}.key"
        cert.write_bytes(self("--export", fpr))
        key.write_bytes(self("--export-secret-keys", fpr, passphrase=passphrase))
        return Recipe(cert, key, passphrase or None)

    def revoke_subkey(self, fpr: str, index: int) -> None:
        answers = b"y\n0\n\ny\n"  # really revoke? reason 0, no text, okay?
        self("--command-fd", "0", "--edit-key", fpr, f"key {index}", "revkey", "save", stdin=answers)


def sq_recipe(d: Path, name: str, suite: str) -> Recipe:
    key, cert = d / f"{name}.key", d / f"{name}.cert"
    run("sq", "key", "generate", "--cipher-suite", suite, "--can-encrypt", "storage",
        "--cannot-authenticate", "--cannot-sign", "--export", str(key))
    cert.write_bytes(run("sq", "key", "extract-cert", str(key)))
    return Recipe(cert, key)


def sq_password_recipe(d: Path) -> Recipe:
    """sq 0.27 reads --with-password from the terminal only: give it a pty."""
    key, cert = d / "sq_pw.key", d / "sq_pw.cert"
    cmd = f"sq key generate --cannot-authenticate --cannot-sign --with-password --export {key}"
    run("script", "-qec", cmd, "/dev/null", stdin=f"{PASSWORD}\n{PASSWORD}\n".encode())
    cert.write_bytes(run("sq", "key", "extract-cert", str(key)))
    return Recipe(cert, key, PASSWORD)


def sqop_recipe(d: Path, name: str, *flags: str, password: str | None = None) -> Recipe:
    key, cert = d / f"{name}.key", d / f"{name}.cert"
    if password:
        (d / "pw").write_text(password)
        flags += ("--with-key-password", str(d / "pw"))
    key.write_bytes(run("sqop", "generate-key", *flags, f"{name} <{name}@example.org>"))
    armor = [f for f in flags if f == "--no-armor"]
    cert.write_bytes(run("sqop", "extract-cert", *armor, stdin=key.read_bytes()))
    return Recipe(cert, key, password)
