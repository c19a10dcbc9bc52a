"""cryophile status: what the spool's queues hold, while work goes on; as
text, as JSON (--json) or as a Prometheus textfile (--prometheus FILE)."""

from __future__ import annotations

import datetime
import json
import os
import sys

from .. import health, metrics
from ..spool import QUEUES
from .common import Context, escape, human

WHAT = {"backup": "being written", "freeze": "waiting to be frozen",
        "thaw": "fragments asked from cold storage", "restore": "thawed, waiting for restore"}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "status", help="show the spool's queues",
        description="Show what the spool's queues hold: archives being written, fragments "
                    "waiting to be frozen, thaws asked for and fragments thawed, the age of "
                    "the oldest fragment not yet frozen, the last freeze into each vault, "
                    "thaws that failed for good, and whether a `cryophile thaw` and a "
                    "`cryophile freeze` (or a mount) serve the spool, with their pids.  "
                    "Works while backups, freezes, thaws or a cryophilefs mount run; reads "
                    "the spool only (no vault, no key).")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true",
                      help="print the status as one JSON object (keys in cryophile(1))")
    form.add_argument("--prometheus", metavar="FILE",
                      help="write the status to FILE in Prometheus' text format (for "
                           "node_exporter's textfile collector; replaced atomically) "
                           "and print nothing")
    p.set_defaults(run=run)


def run(args) -> int:
    ctx = Context(args)
    status = health.collect(ctx.spool)
    if args.prometheus:
        metrics.write(args.prometheus, metrics.render(status))
    elif args.json:
        json.dump(status, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        show(status, sys.stdout)
    return 0


def show(status: dict, out) -> None:
    missing = "" if os.path.isdir(status["spool"]) else (
        " (does not exist: nothing has used it yet, or a typo in -S or the configuration)")
    out.write(f"spool {status['spool']}{missing}\n")
    out.write(f"{'QUEUE':<8} {'ARCHIVES':>8} {'FRAGMENTS':>9} {'BYTES':>11}\n")
    for queue in QUEUES:
        q = status["queues"][queue]
        shown = "-" if q["bytes"] is None else human(q["bytes"])
        out.write(f"{queue:<8} {q['archives']:>8} {q['fragments']:>9} {shown:>11}  "
                  f"{WHAT[queue]}\n")
    thaw, freeze = status["daemons"]["thaw"], status["daemons"]["freeze"]
    holder = ""
    if thaw["running"] and thaw["pid"]:
        command = f": {escape(thaw['command'])}" if thaw["command"] else ""
        holder = f" (pid {thaw['pid']}{command})"
    out.write(f"thaw daemon: {'running' if thaw['running'] else 'not running'}{holder}\n")
    pids = f" (pid {', '.join(map(str, freeze['pids']))})" if freeze["pids"] else ""
    out.write(f"freeze daemon: {'running' if freeze['running'] else 'not running'}{pids}\n")
    if status["oldest_unfrozen_age"] is not None:
        out.write(f"oldest unfrozen fragment: {ago(status['oldest_unfrozen_age'])}\n")
    for vault, last in status["last_freeze"].items():
        when = datetime.datetime.fromtimestamp(last["time"], datetime.timezone.utc)
        out.write(f"last freeze into {vault}: {when:%Y-%m-%d %H:%M:%S}Z "
                  f"({ago(status['time'] - last['time'])}), {last['archive']}\n")
    if status["thaw_requests"]:
        out.write(f"thaws in flight: {status['thaw_requests']} fragment(s)\n")
    for failure in status["thaw_failures"]:
        out.write(f"  thaw failed {failure['archive']} chunk.{failure['fragment']}: "
                  f"{escape(failure['error'])}\n")
    for a in status["archives"]:
        state = f", {a['state']}" if a["state"] else ""
        out.write(f"  {a['queue']:<8} {a['archive']}: {a['fragments']} fragment(s){state}\n")


def ago(seconds: float) -> str:
    """2 min ago, 5 h ago, 3 d ago."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"
