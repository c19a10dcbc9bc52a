"""`status --prometheus FILE`: the spool's health in Prometheus' text format,
for node_exporter's textfile collector.  The metric names are stable
(cryophile(1), "MONITORING"); the file is replaced atomically (a temporary
file in its directory, renamed), so the collector never reads half of it."""

from __future__ import annotations

from . import errors, fsutil

# name -> (type, help)
METRICS = {
    "cryophile_status_timestamp_seconds":
        ("gauge", "When this status was taken (Unix time)."),
    "cryophile_queue_archives":
        ("gauge", "Archives in each spool queue."),
    "cryophile_queue_fragments":
        ("gauge", "Fragments in each spool queue (chunk.0 not counted)."),
    "cryophile_queue_bytes":
        ("gauge", "Bytes of the fragments in each spool queue (not for thaw: requests)."),
    "cryophile_oldest_unfrozen_fragment_age_seconds":
        ("gauge", "Age of the oldest fragment waiting in backup/ or freeze/ (0: none)."),
    "cryophile_last_freeze_timestamp_seconds":
        ("gauge", "When a freeze last completed an archive into each vault (Unix time)."),
    "cryophile_thaw_requests":
        ("gauge", "Fragments asked for and not yet thawed (thaws in flight)."),
    "cryophile_thaw_failures":
        ("gauge", "Fragments recorded as permanently failed by thaw (damaged or missing)."),
    "cryophile_daemon_up":
        ("gauge", "1 if a freeze or thaw daemon (or a mount) serves the spool, else 0."),
    "cryophile_daemon_pid":
        ("gauge", "The pid holding the daemon's lock (thaw: one; freeze: each holder)."),
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _sample(name: str, value: float, **labels: str) -> str:
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
    text = repr(float(value)) if isinstance(value, float) else str(int(value))
    return f"{name}{{{inner}}} {text}" if inner else f"{name} {text}"


def render(status: dict) -> str:
    """The text exposition of ``health.collect()``'s answer."""
    spool = status["spool"]
    samples: dict[str, list[str]] = {name: [] for name in METRICS}

    def add(name, value, **labels):
        samples[name].append(_sample(name, value, spool=spool, **labels))
    add("cryophile_status_timestamp_seconds", float(status["time"]))
    for queue, q in status["queues"].items():
        add("cryophile_queue_archives", q["archives"], queue=queue)
        add("cryophile_queue_fragments", q["fragments"], queue=queue)
        if q["bytes"] is not None:
            add("cryophile_queue_bytes", q["bytes"], queue=queue)
    add("cryophile_oldest_unfrozen_fragment_age_seconds",
        float(status["oldest_unfrozen_age"] or 0.0))
    for vault, last in status["last_freeze"].items():
        add("cryophile_last_freeze_timestamp_seconds", float(last["time"]), vault=vault)
    add("cryophile_thaw_requests", status["thaw_requests"])
    add("cryophile_thaw_failures", len(status["thaw_failures"]))
    daemons = status["daemons"]
    for which in ("freeze", "thaw"):
        add("cryophile_daemon_up", int(daemons[which]["running"]), daemon=which)
    if daemons["thaw"]["pid"]:
        add("cryophile_daemon_pid", daemons["thaw"]["pid"], daemon="thaw")
    for pid in daemons["freeze"]["pids"]:
        add("cryophile_daemon_pid", pid, daemon="freeze")
    lines = []
    for name, (kind, text) in METRICS.items():
        if samples[name]:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", *samples[name]]
    return "\n".join(lines) + "\n"


def write(path: str, text: str) -> None:
    """Replace ``path`` with ``text`` atomically, readable by the collector (0644)."""
    try:
        fsutil.replace_file(path, text.encode(), 0o644)
    except OSError as exc:
        raise errors.from_oserror(exc, f"cannot write {path}") from None
