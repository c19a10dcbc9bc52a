"""ls, chain, prune -n and check on a vault of 10,000 archives: time and S3
requests.

    .venv/bin/python benchmarks/catalog.py [--archives 10000] [--no-local | --no-s3] [--ls-only]
        [--seed-cache] [--page-latency S]... [--not-before HH:MM]

The archives are made with the project's own code but not by 10,000
backups: each gets a real chunk.0 (manifest.encode, encrypted to a real
key, its clear JSON naming the archive, a zfs stream identity: chains of
ten, a full send then nine incrementals) and a 512-byte chunk.1.  The
vault is written once as a local directory and once into a moto S3 server
(chunk.1 in GLACIER), read through the counting proxy of the tests.

Each figure is the whole command (`cryophile ls -H`, `cryophile chain -H`,
`cryophile prune --keep-last 100 -n`, `cryophile check` of the vault and of
its newest archive, whose chain's links are looked for among the other
9,999, Python's start included): cold (no chunk.0 cache in the spool) and warm.
The baseline is what listing cost before the cache: for each archive, a
GET of its chunk.0 and a HEAD of its first fragment, one after the other;
it is run on the first 1,000 archives only (its cost is linear in them).
On S3 each figure also gives the moto server's CPU time during the command
(its process's user + system time): moto answers a LIST of a big bucket far
more slowly than S3 does, and this is how much of the wall time is moto's.

moto's cost per LIST (about 0.3 CPU-s for a page of a 20,000-object
bucket, in one interpreter) hides the client's, so the warm ``ls`` is also
measured with moto's own answers replayed: a warm ``ls`` through moto is
recorded (every request forwarded, every answer kept), then the same
command is run again against a server that sends back the recorded answer
to each identical request (a request it has not seen goes on to moto and
is counted as a miss), each held back ``--page-latency`` seconds (default
0.1, a stand-in for S3's time to answer a page; 0 shows the client alone).
The answers are moto's, byte for byte: only moto's time to make them is
left out.  ``--seed-cache`` fills the spool's chunk.0 cache from the
objects made instead of by a cold ``ls`` (10,000 GETs through moto, 1.5
min), and ``--not-before HH:MM`` (UTC) waits until then after setting up,
before measuring.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import http.client
import http.server
import io
import os
import threading
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import CRYOPHILE, WORK, compiled, gpg_key  # noqa: E402
from tests.s3rig import FaultProxy, MotoServer, aws_test_env  # noqa: E402

from cryophile import keys, manifest  # noqa: E402
from cryophile.ids import new_ulid  # noqa: E402

PREFIX = "tank/fs"
FRAGMENT = os.urandom(512)
CHAIN = 10
PRUNE = ("prune", "--keep-last", "100", "-n")      # the plan of 10,000 archives
SAMPLE = 1000       # the baseline reads this many archives (it is linear; scale it)


def make_marks(vault: str, n: int, cert: Path) -> dict[str, bytes]:
    """key → bytes for n archives (chunk.0 and chunk.1 each)."""
    recipients = keys.load_certificates([str(cert)])
    session_key = os.urandom(32)
    pkesks = keys.make_pkesks(recipients, session_key)
    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    objects = {}
    for i in range(n):
        when = start + datetime.timedelta(hours=i)
        ulid = new_ulid(when)
        created = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        stream = {"kind": "zfs", "complete": True, "toguid": str(1000 + i),
                  "fromguid": None if i % CHAIN == 0 else str(999 + i), "package": False}
        frag = [manifest.Fragment(len(FRAGMENT), "0" * 64)]
        clear = manifest.ClearInfo(vault, PREFIX, ulid, created, 100, len(FRAGMENT),
                                   64 << 20, frag, stream=stream)
        body = {"format": 1, "backup_id": f"{vault}/{PREFIX}/{ulid}", "vault": vault,
                "prefix": PREFIX, "ulid": ulid, "name": f"snap{i}", "created": created,
                "size": 100, "fragments": [[len(FRAGMENT), "0" * 64]],
                "stream": {**stream, "toname": f"tank/fs@s{i}"}}
        objects[f"{PREFIX}/{ulid}/chunk.0"] = manifest.encode(clear, body, pkesks, session_key,
                                                              int(when.timestamp()))
        objects[f"{PREFIX}/{ulid}/chunk.1"] = FRAGMENT
    return objects


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(cmd, env, expect: bytes | None = None) -> str:
    """Wall-clock and CPU (user + system) seconds of a command: the machine is
    shared, so CPU time is the steadier figure.  With ``expect``, the
    command's output must be exactly that."""
    start = time.perf_counter()
    out = tempfile.TemporaryFile() if expect is not None else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, env=env, stdout=out)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd} failed with {os.waitstatus_to_exitcode(status)}")
    if expect is not None:
        out.seek(0)
        if out.read() != expect:
            raise SystemExit(f"{cmd}: its output differs from the run through moto")
        out.close()
    return f"{wall:6.2f} s wall {usage.ru_utime + usage.ru_stime:6.2f} s CPU"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--archives", type=int, default=10_000)
    only = ap.add_mutually_exclusive_group()
    only.add_argument("--no-local", action="store_true")
    only.add_argument("--no-s3", action="store_true")
    ap.add_argument("--ls-only", action="store_true", help="only ls, cold and warm")
    ap.add_argument("--seed-cache", action="store_true",
                    help="fill the chunk.0 cache from the objects made: no cold ls")
    ap.add_argument("--page-latency", type=float, action="append",
                    help="seconds each replayed LIST answer is held back (repeatable; "
                         "default 0.1 and 0)")
    ap.add_argument("--not-before", metavar="HH:MM",
                    help="after setting up, wait until this time (UTC) before measuring")
    opts = ap.parse_args()
    global OPTS
    OPTS = opts
    compiled()
    n = opts.archives
    _, cert, _ = gpg_key(WORK / "gpg")
    root = Path(tempfile.mkdtemp(prefix="catalog-", dir=WORK))
    env = {**os.environ, **aws_test_env(str(root)), "CRYOPHILE_LOG_STYLE": "never"}
    os.environ.update(env)
    try:
        print(f"load average {loadavg()}")
        # (waiting for a time, the S3 part goes first: its upload takes minutes)
        if not opts.no_s3 and opts.not_before:
            s3(root, n, cert, env, opts.ls_only)
        if not opts.no_local:
            local(root, n, cert, env, opts.ls_only)
        if not opts.no_s3 and not opts.not_before:
            s3(root, n, cert, env, opts.ls_only)
    finally:
        shutil.rmtree(root, ignore_errors=True)


OPTS = None


def loadavg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def seed_cache(spool: Path, vault: str, objects: dict[str, bytes]) -> None:
    """The chunk.0 cache a cold ls would leave (its index is made by the
    first warm ls, as after a cold one)."""
    for key, data in objects.items():
        if key.endswith("/chunk.0"):
            path = spool / "cache" / vault / (key[:-len("/chunk.0")] + ".chunk0")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


def wait_until() -> None:
    if OPTS is None or not OPTS.not_before:
        return
    hour, minute = map(int, OPTS.not_before.split(":"))
    now = datetime.datetime.now(datetime.timezone.utc)
    start = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if start > now:
        print(f"  (waiting until {OPTS.not_before} UTC)", flush=True)
        time.sleep((start - now).total_seconds())
    print(f"  load average {loadavg()} at {time.strftime('%H:%M:%S', time.gmtime())} UTC",
          flush=True)


class Replay:
    """An HTTP server in front of ``upstream`` that forwards every request
    and keeps each answer (``recording``), or sends back the answer kept
    for an identical request (method, path and query; the signature's date
    differs from run to run), each held back ``latency`` seconds.  A
    request without a kept answer is forwarded and counted in ``misses``."""

    def __init__(self, upstream: str):
        self.upstream = upstream.split("//", 1)[1]
        self.answers: dict[tuple[str, str], tuple[int, list, bytes]] = {}
        self.recording, self.latency = True, 0.0
        self.served = self.misses = 0
        self.lock = threading.Lock()
        replay = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                replay.handle(self)

            do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

            def log_message(self, *args):
                pass
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, req) -> None:
        body = req.rfile.read(int(req.headers.get("Content-Length") or 0))
        key = (req.command, req.path)
        kept = None if self.recording else self.answers.get(key)
        if kept is None:
            conn = http.client.HTTPConnection(self.upstream, timeout=300)
            headers = {k: v for k, v in req.headers.items() if k.lower() != "host"}
            conn.request(req.command, req.path, body=body or None, headers=headers)
            reply = conn.getresponse()
            kept = (reply.status, [(k, v) for k, v in reply.getheaders()
                                   if k.lower() not in ("transfer-encoding", "connection")],
                    reply.read())
            conn.close()
            with self.lock:
                if self.recording:
                    self.answers[key] = kept
                else:
                    self.misses += 1
        else:
            time.sleep(self.latency)
            with self.lock:
                self.served += 1
        status, headers, data = kept
        req.send_response(status)
        for k, v in headers:
            if k.lower() not in ("content-length", "date", "server"):
                req.send_header(k, v)
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        if req.command != "HEAD":
            req.wfile.write(data)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def local(root: Path, n: int, cert: Path, env, ls_only: bool = False) -> None:
    vault = str(uuid.uuid4())
    t0 = time.perf_counter()
    objects = make_marks(vault, n, cert)
    print(f"made {n} archives' objects in {time.perf_counter() - t0:.1f} s")
    for key, data in objects.items():
        path = root / "vaults" / vault / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    config = root / "local.toml"
    config.write_text(f'[vault.{vault}]\nurl = "file://{root / "vaults"}"\n')
    spool = root / "spool-local"
    cli = [*CRYOPHILE, "-S", str(spool), "-c", str(config)]
    last = sorted(objects)[-1].split("/")[-2]
    print(f"\nlocal vault, {n} archives ({len(objects)} files)")
    if OPTS is not None and OPTS.seed_cache:
        seed_cache(spool, vault, objects)
        print(f"  ls, index made {timed([*cli, 'ls', '-H', vault], env)}")
        wait_until()
    else:
        print(f"  ls cold    {timed([*cli, 'ls', '-H', vault], env)}")
    print(f"  ls warm    {timed([*cli, 'ls', '-H', vault], env)}")
    print(f"  ls warm again {timed([*cli, 'ls', '-H', vault], env)}")
    if ls_only:
        return
    print(f"  chain warm {timed([*cli, 'chain', '-H', f'{vault}/{PREFIX}/{last}'], env)}")
    print(f"  prune -n   {timed([*cli, *PRUNE, vault], env)}")
    print(f"  check      {timed([*cli, 'check', vault], env)}")
    print(f"  check one  {timed([*cli, 'check', f'{vault}/{PREFIX}/{last}'], env)}")


def s3(root: Path, n: int, cert: Path, env, ls_only: bool = False) -> None:
    import boto3
    server = MotoServer().start()
    proxy = FaultProxy(server.endpoint, max_log=10 * n).start()
    try:
        vault = str(uuid.uuid4())
        client = boto3.session.Session().client("s3", endpoint_url=server.endpoint)
        client.create_bucket(Bucket=vault)
        objects = make_marks(vault, n, cert)
        t0 = time.perf_counter()

        def put(item):
            key, data = item
            client.put_object(Bucket=vault, Key=key, Body=data,
                              StorageClass="GLACIER" if key.endswith("chunk.1") else "STANDARD")
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(put, objects.items()))
        print(f"\nS3 (moto through the proxy), {n} archives ({len(objects)} objects; "
              f"uploaded in {time.perf_counter() - t0:.0f} s)")
        config = root / "s3.toml"
        config.write_text(f'[vault.{vault}]\nendpoint_url = "{proxy.endpoint}"\n')
        spool = root / "spool-s3"
        cli = [*CRYOPHILE, "-S", str(spool), "-c", str(config)]
        last = sorted(objects)[-1].split("/")[-2]

        def measure(what, cmd):
            proxy.reset()
            moto = cpu_seconds(server.proc.pid)
            took = timed(cmd, env)
            moto = cpu_seconds(server.proc.pid) - moto
            reqs = proxy.requests()
            lists = sum(1 for r in reqs if r.method == "GET" and "list-type" in r.query)
            print(f"  {what:<24} {took} {moto:6.2f} s moto CPU {len(reqs):6d} requests "
                  f"({lists} LIST, {sum(1 for r in reqs if r.method == 'GET') - lists} GET, "
                  f"{sum(1 for r in reqs if r.method == 'HEAD')} HEAD)")
        if not ls_only:
            measure(f"baseline, {min(SAMPLE, n)} archives", [sys.executable, __file__, "--baseline",
                                                     proxy.endpoint, vault])
        if OPTS is not None and OPTS.seed_cache:
            seed_cache(spool, vault, objects)
            measure("ls, index made", [*cli, "ls", "-H", vault])
            wait_until()
        else:
            measure("ls cold", [*cli, "ls", "-H", vault])
        measure("ls warm", [*cli, "ls", "-H", vault])
        measure("ls warm again", [*cli, "ls", "-H", vault])
        replayed(root, vault, proxy, cli, env)
        if ls_only:
            return
        shutil.rmtree(spool / "cache")
        measure("chain cold", [*cli, "chain", "-H", f"{vault}/{PREFIX}/{last}"])
        measure("chain warm", [*cli, "chain", "-H", f"{vault}/{PREFIX}/{last}"])
        measure("prune -n", [*cli, *PRUNE, vault])
        measure("check", [*cli, "check", vault])
        measure("check one archive", [*cli, "check", f"{vault}/{PREFIX}/{last}"])
    finally:
        proxy.stop()
        server.stop()


def replayed(root: Path, vault: str, proxy: FaultProxy, cli: list, env) -> None:
    """The warm ls with moto's answers replayed (see the module docstring)."""
    replay = Replay(proxy.endpoint)
    config = root / "replay.toml"
    config.write_text(f'[vault.{vault}]\nendpoint_url = "{replay.endpoint}"\n')
    cmd = [*cli[:-2], "-c", str(config), "ls", "-H", vault]
    try:
        expected = subprocess.run(cmd, env=env, check=True, capture_output=True).stdout
        replay.recording = False
        for latency in (OPTS.page_latency if OPTS and OPTS.page_latency else (0.1, 0.0)):
            for attempt in range(2):
                replay.latency, replay.served, replay.misses = latency, 0, 0
                took = timed(cmd, env, expect=expected)
                print(f"  ls warm, replayed, {latency:.2f} s a page  {took} "
                      f"{replay.served:6d} answers replayed, {replay.misses} missed")
    finally:
        replay.stop()


def baseline(endpoint: str, vault: str) -> None:
    """The listing as it was: a LIST, then per archive GET chunk.0 + HEAD chunk.1."""
    from cryophile.store.s3 import S3Store
    store = S3Store(vault, endpoint_url=endpoint)
    marks = [i.key for i in store.list("") if i.key.endswith("/chunk.0")]
    for key in marks[:SAMPLE]:
        buf = io.BytesIO()
        store.get(key, buf)
        manifest.read_clear(buf.getvalue())
        store.head(key[:-1] + "1")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--baseline"]:
        baseline(sys.argv[2], sys.argv[3])
    else:
        main()
