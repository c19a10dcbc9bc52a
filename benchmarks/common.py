"""Shared pieces of the benchmarks: test data, keys, timing and peak RSS of a command."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

GIB = 1 << 30
WORK = Path(os.environ.get("CRYOPHILE_BENCH_DIR", "/tmp/cryophile-bench"))
CRYOPHILE = [sys.executable, "-m", "cryophile"]


def mixed_data(size: int = GIB) -> Path:
    """The first `size` bytes of `tar -c /usr`: real, mixed data (cached)."""
    path = WORK / f"usr-{size}.tar"
    if path.exists() and path.stat().st_size == size:
        return path
    WORK.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        tar = subprocess.Popen(["tar", "-c", "--ignore-failed-read", "/usr"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        left = size
        while left:
            block = tar.stdout.read(min(left, 1 << 20))
            if not block:
                break
            out.write(block)
            left -= len(block)
        tar.kill()
        tar.wait()
    if path.stat().st_size < size:
        raise SystemExit(f"/usr holds less than {size} bytes of tar")
    return path


def gpg_key(home: Path) -> tuple[str, Path, Path]:
    """A gpg key (fingerprint, certificate file, secret key file) in its own home."""
    env = {**os.environ, "GNUPGHOME": str(home)}
    if not (home / "cert.pgp").exists():
        home.mkdir(parents=True, mode=0o700, exist_ok=True)
        gpg = ["gpg", "--batch", "--quiet", "--passphrase", "", "--pinentry-mode", "loopback"]
        subprocess.run(gpg + ["--quick-gen-key", "bench <bench@example.org>", "ed25519",
                              "sign", "never"], env=env, check=True)
        fpr = _fingerprint(env)
        subprocess.run(gpg + ["--quick-add-key", fpr, "cv25519", "encr", "never"], env=env,
                       check=True)
        (home / "cert.pgp").write_bytes(subprocess.run(
            ["gpg", "--export", fpr], env=env, check=True, capture_output=True).stdout)
        (home / "key.pgp").write_bytes(subprocess.run(
            ["gpg", "--batch", "--export-secret-keys", fpr], env=env, check=True,
            capture_output=True).stdout)
    return _fingerprint(env), home / "cert.pgp", home / "key.pgp"


def _fingerprint(env) -> str:
    out = subprocess.run(["gpg", "--with-colons", "--list-keys"], env=env, check=True,
                         capture_output=True, text=True).stdout
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr"))


def run(cmd, *, shell: bool = False, env=None, stdin=None, stdout=subprocess.DEVNULL
        ) -> tuple[float, int]:
    """Run a command; return (seconds, peak RSS in KiB of the largest process)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, shell=shell, env=env, stdin=stdin, stdout=stdout,
                            executable="/bin/bash" if shell else None)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd} failed with {os.waitstatus_to_exitcode(status)}")
    return seconds, usage.ru_maxrss


def rate(size: int, seconds: float) -> str:
    return f"{size / seconds / 1e6:7.1f} MB/s"
