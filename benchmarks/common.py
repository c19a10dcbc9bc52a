"""Shared pieces of the benchmarks: test data, keys, timing and peak RSS of a
command, mounts and their processes, and the lines the benchmarks print."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

GIB = 1 << 30
WORK = Path(os.environ.get("CRYOPHILE_BENCH_DIR", "/tmp/cryophile-bench"))
CRYOPHILE = [sys.executable, "-m", "cryophile"]


def compiled() -> None:
    """Byte-compile cryophile and cryophilefs, as installing them does: with
    PYTHONDONTWRITEBYTECODE set (as here), each run would otherwise compile
    its modules from source (~0.1 CPU-s)."""
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(root / "cryophile"),
                    str(root / "cryophilefs")], check=True)


def whole_mib(gib: float) -> int:
    """``--size-gib`` in bytes, rounded down to whole MiB: the data is then a
    whole tar stream (a cut that is not a multiple of its 512-byte blocks
    leaves bytes after its end: sealed incomplete, never frozen "local")."""
    return int(gib * GIB) >> 20 << 20


def wait_mounted(path: Path, proc: subprocess.Popen, deadline: float = 60) -> None:
    """Until ``path`` is a mount point.  Ends the run if ``proc`` (the
    filesystem's process) exits first, or after ``deadline`` seconds (then
    ``proc`` is killed)."""
    end = time.monotonic() + deadline
    while not os.path.ismount(path):
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args} exited with {proc.returncode} before mounting {path}")
        if time.monotonic() > end:
            proc.kill()
            proc.wait()
            raise SystemExit(f"{path} not mounted after {deadline} s: {proc.args} killed")
        time.sleep(0.05)


def unmount(path: Path, proc: subprocess.Popen, deadline: float = 120) -> int:
    """Unmount ``path`` and wait (at most ``deadline`` seconds) for ``proc``;
    its exit code."""
    subprocess.run(["fusermount3", "-u", str(path)], check=True, timeout=deadline)
    try:
        return proc.wait(deadline)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise SystemExit(f"{proc.args} still running {deadline} s after unmounting: killed")


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int, field: str = "VmHWM") -> int:
    """A memory figure of a running process (VmHWM: its peak RSS; VmRSS: now), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rclone_crypt(root: Path) -> dict | None:
    """The environment for a local rclone crypt remote ``crypt:`` under
    ``root`` (an optional peer; None when rclone is not installed)."""
    if shutil.which("rclone") is None:
        return None
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "rclone.conf"
    obscured = subprocess.run(["rclone", "obscure", "cryophile-bench"], check=True,
                              capture_output=True, text=True).stdout.strip()
    conf.write_text(f"[local]\ntype = local\n\n[crypt]\ntype = crypt\n"
                    f"remote = local:{root}/rclone\npassword = {obscured}\n")
    return {**os.environ, "RCLONE_CONFIG": str(conf)}


def mixed_data(size: int = GIB) -> Path:
    """The first `size` bytes of `tar -c /usr`: real, mixed data (cached).  The
    member the cut falls in is shortened (its header's size rewritten) and
    the end-of-archive blocks follow, so that it is a whole tar stream
    (backup refuses one cut short)."""
    path = WORK / f"usr-{size}-whole.tar"
    if path.exists() and path.stat().st_size == size:
        return path
    WORK.mkdir(parents=True, exist_ok=True)
    tar = subprocess.Popen(["tar", "-c", "--ignore-failed-read", "/usr"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    with open(path, "w+b") as out:
        header, end = _copy_members(tar.stdout, out, size)
        while out.tell() < size and (block := tar.stdout.read(min(size - out.tell(), 1 << 20))):
            out.write(block)
        tar.kill()
        tar.wait()
        if out.tell() < size:
            raise SystemExit(f"/usr holds less than {size} bytes of tar")
        if header is not None:
            _shorten(out, header, end)
        out.seek(end)
        out.write(bytes(size - end))          # end-of-archive blocks, then padding
    return path


def _copy_members(src, out, size: int) -> tuple[int | None, int]:
    """Copy the first ``size`` bytes of a tar stream.  Return the offset of the
    header of the member that does not fit whole (None: the cut falls between
    members) and where the member data kept ends, 1024 bytes or more before
    ``size``."""
    import tarfile

    class Tee:
        pos = 0

        def read(self, n=-1):
            data = src.read(n)
            if self.pos < size:
                out.write(data[:size - self.pos])
            self.pos += len(data)
            return data

    end = 0
    with tarfile.open(fileobj=Tee(), mode="r|") as tar:
        for member in tar:
            stop = member.offset_data + (-(-member.size // 512) * 512 if member.isreg() else 0)
            if stop > size - 1024:
                if member.isreg() and member.offset_data <= size - 1024:
                    return member.offset, (size - 1024) // 512 * 512
                return None, end
            end = stop
    return None, end


def _shorten(out, header: int, end: int) -> None:
    """Rewrite the size (and checksum) of the ustar header at ``header`` so that
    its member ends at ``end``."""
    out.seek(header)
    block = bytearray(out.read(512))
    block[124:136] = b"%011o\0" % (end - header - 512)
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    out.seek(header)
    out.write(block)


def random_data(size: int = GIB) -> Path:
    """`size` random bytes (cached): what compression cannot shrink."""
    path = WORK / f"random-{size}"
    if path.exists() and path.stat().st_size == size:
        return path
    WORK.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        for left in range(size, 0, -(1 << 20)):
            out.write(os.urandom(min(left, 1 << 20)))
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
    (home / "key.pgp").chmod(0o600)
    return _fingerprint(env), home / "cert.pgp", home / "key.pgp"


def _fingerprint(env) -> str:
    out = subprocess.run(["gpg", "--with-colons", "--list-keys"], env=env, check=True,
                         capture_output=True, text=True).stdout
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr"))


def run(cmd, *, shell: bool = False, env=None, stdin=None, stdout=subprocess.DEVNULL
        ) -> tuple[float, int]:
    """Run a command; return (seconds, peak RSS in KiB of the largest process)."""
    use = measure(cmd, shell=shell, env=env, stdin=stdin, stdout=stdout)
    return use.seconds, use.rss_kib


@dataclasses.dataclass
class Usage:
    seconds: float      # wall
    cpu: float          # user + system of the command and its children
    rss_kib: int        # peak RSS of the largest process


def measure(cmd, *, shell: bool = False, env=None, stdin=None, stdout=subprocess.DEVNULL
            ) -> Usage:
    """Run a command to its end; its wall time, CPU time and peak RSS.  A
    non-zero exit ends the benchmark."""
    before = os.times()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, shell=shell, env=env, stdin=stdin, stdout=stdout,
                            executable="/bin/bash" if shell else None)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd} failed with {os.waitstatus_to_exitcode(status)}")
    after = os.times()      # wait4 reaped it: its children's times are counted
    cpu = (after.children_user - before.children_user
           + after.children_system - before.children_system)
    return Usage(seconds, cpu, usage.ru_maxrss)


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def rate(size: int, seconds: float) -> str:
    return f"{size / seconds / 1e6:7.1f} MB/s"


def best(runs: list):
    """The fastest of interleaved runs (anything with ``seconds``)."""
    return min(runs, key=lambda u: u.seconds)


def ratio(base_seconds: float, ours_seconds: float) -> str:
    """How many times faster ours is than the baseline (above 1: ours is faster)."""
    return f"ratio {base_seconds / ours_seconds:.2f}x"


def per_gib(size: int, cpu: float) -> str:
    return f"{cpu / (size / GIB):4.2f} CPU-s/GiB"
