"""Logging as CRYOPHILE_LOG and CRYOPHILE_LOG_STYLE say (env_logger syntax).

``CRYOPHILE_LOG=warn,cryophile.freeze=trace`` (``::`` works like ``.``):
a bare level sets the default, ``target=level`` one logger and below.
Levels: error, warn, info (the default), debug, trace, off.
"""

from __future__ import annotations

import logging
import os
import sys

TRACE = 5
logging.addLevelName(TRACE, "TRACE")
LEVELS = {"error": logging.ERROR, "warn": logging.WARNING, "warning": logging.WARNING,
          "info": logging.INFO, "debug": logging.DEBUG, "trace": TRACE,
          "off": logging.CRITICAL + 10}
COLORS = {logging.ERROR: "\033[31m", logging.WARNING: "\033[33m", logging.DEBUG: "\033[2m",
          TRACE: "\033[2m"}


class Formatter(logging.Formatter):
    def __init__(self, program: str, color: bool):
        super().__init__()
        self.program, self.color = program, color

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.ERROR:
            msg = f"error: {msg}"
        elif record.levelno >= logging.WARNING:
            msg = f"warning: {msg}"
        elif record.levelno < logging.INFO:
            msg = f"{record.levelname.lower()} {record.name}: {msg}"
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        if self.color and record.levelno in COLORS:
            msg = f"{COLORS[record.levelno]}{msg}\033[0m"
        return f"{self.program}: {msg}"


def parse(spec: str) -> tuple[int | None, dict[str, int]]:
    default, targets = None, {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        target, _, level = item.rpartition("=")
        if level.lower() not in LEVELS:
            if not target:          # a bare target means "everything" for it
                targets[item.replace("::", ".")] = TRACE
                continue
            raise ValueError(f"unknown log level {level!r} in CRYOPHILE_LOG")
        if target:
            targets[target.replace("::", ".")] = LEVELS[level.lower()]
        else:
            default = LEVELS[level.lower()]
    return default, targets


def setup(program: str = "cryophile", verbosity: int = 0, stream=None) -> None:
    """verbosity: -q → -1, default 0, -d → 1 (debug), -dd → 2 (trace)."""
    stream = stream or sys.stderr
    style = os.environ.get("CRYOPHILE_LOG_STYLE", "auto").lower()
    color = style == "always" or (style == "auto" and stream.isatty())
    handler = logging.StreamHandler(stream)
    handler.setFormatter(Formatter(program, color))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    level = {-2: logging.ERROR, -1: logging.WARNING, 0: logging.INFO,
             1: logging.DEBUG}.get(verbosity, TRACE if verbosity > 1 else logging.ERROR)
    try:
        default, targets = parse(os.environ.get("CRYOPHILE_LOG", ""))
    except ValueError as exc:
        default, targets = None, {}
        root.setLevel(level)
        logging.getLogger(program).warning("%s", exc)
    # our own loggers follow -d/-q; other libraries stay at warn unless asked
    root.setLevel(default if default is not None and not verbosity else logging.WARNING)
    if default is None or verbosity:
        logging.getLogger("cryophile").setLevel(level)
        logging.getLogger("cryophilefs").setLevel(level)
    else:
        logging.getLogger("cryophile").setLevel(logging.NOTSET)
        logging.getLogger("cryophilefs").setLevel(logging.NOTSET)
    for target, lvl in targets.items():
        logging.getLogger(target).setLevel(lvl)
