"""Tell systemd how a service is doing (sd_notify(3), without libsystemd).

A ``Type=notify`` unit starts a process with ``$NOTIFY_SOCKET``: a unix
datagram socket (a path, or ``@name`` in the abstract namespace) to which it
sends newline-separated ``KEY=VALUE`` lines, e.g. ``READY=1`` once it serves.
Without the variable (not started by systemd) this does nothing.  A failed
send is logged and otherwise ignored: readiness reporting must never take the
service down.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(*fields: str) -> bool:
    """Send ``fields`` (``"READY=1"``, ``"STATUS=…"``) to systemd; True if sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)     # called from the trio loop: never wait
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True
