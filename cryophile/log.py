"""Logging as CRYOPHILE_LOG and CRYOPHILE_LOG_STYLE say (env_logger syntax).

``CRYOPHILE_LOG=warn,cryophile.freeze=trace`` (``::`` works like ``.``):
a bare level sets the default, ``target=level`` one logger and below.
Levels: error, warn, info (the default), debug, trace, off.

On a stream systemd connected to the journal (JOURNAL_STREAM), each line
carries its syslog priority as sd-daemon(3) describes, and no timestamp.

Every handler we install redacts credentials (``Redact``): boto3's own debug
and trace output carries Authorization headers, session tokens and request
signatures, and credentials must never reach a log.
"""

from __future__ import annotations

import datetime
import logging
import logging.handlers
import os
import re
import sys
import urllib.parse

from . import errors

TRACE = 5
logging.addLevelName(TRACE, "TRACE")
LEVELS = {"error": logging.ERROR, "warn": logging.WARNING, "warning": logging.WARNING,
          "info": logging.INFO, "debug": logging.DEBUG, "trace": TRACE,
          "off": logging.CRITICAL + 10}
COLORS = {logging.ERROR: "\033[31m", logging.WARNING: "\033[33m", logging.DEBUG: "\033[2m",
          TRACE: "\033[2m"}


REDACTED = "[REDACTED]"
_NAMES = ("x-amz-security-token|x-amz-signature|aws_secret_access_key|aws_session_token|"
          "aws_security_token|secret_?access_?key|secret_key|session_?token|security_?token|"
          "\\btoken|signature")
# Each keeps group "pre" and replaces group "secret".
_SECRETS = [
    # a quoted Authorization header: the value holds spaces and commas
    re.compile(r"""(?P<pre>authorization['"]?\s*[:=]\s*b?(?P<q>['"]))(?P<secret>.*?)(?=(?P=q))""",
               re.I | re.S),
    # a raw Authorization header line
    re.compile(r"""(?P<pre>(?:^|(?<=\s))authorization\s*:\s*)(?P<secret>[^\r\n'"]+)""",
               re.I | re.M),
    # session tokens, secret keys, signatures: in headers, URLs, dicts, files, JSON
    re.compile(rf"""(?P<pre>(?:{_NAMES})['"]?\s*[:=]\s*b?['"]?)(?P<secret>[^'"\s,;&}}<>]+)""",
               re.I),
    # XML answers of STS or the instance metadata service
    re.compile(r"(?P<pre><(?:SecretAccessKey|SessionToken|Token|Signature)>)(?P<secret>[^<]*)",
               re.I),
    # botocore.auth's "Signature:\n<hex>"
    re.compile(r"(?P<pre>Signature:\s*)(?P<secret>[0-9a-f]{32,})", re.I),
]
_ENV_SECRETS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def redact(text: str) -> str:
    """``text`` without credentials: known header, parameter and field names'
    values, and the values of the credential variables in the environment."""
    for name in _ENV_SECRETS:
        value = os.environ.get(name, "")
        if len(value) >= 4:
            for form in {value, urllib.parse.quote(value, safe=""), urllib.parse.quote(value)}:
                text = text.replace(form, REDACTED)
    for pattern in _SECRETS:
        text = pattern.sub(lambda m: m.group("pre") + REDACTED, text)
    return text


class Redact(logging.Filter):
    """On a handler: every record it emits, message and traceback, is redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class Formatter(logging.Formatter):
    """``PROGRAM: error: message``; with ``timestamps``, a UTC time and the pid
    first (a log file shared by long-running processes)."""

    def __init__(self, program: str, color: bool, timestamps: bool = False):
        super().__init__()
        self.program, self.color, self.timestamps = program, color, timestamps

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.ERROR:
            msg = f"error: {msg}"
        elif record.levelno >= logging.WARNING:
            msg = f"warning: {msg}"
        elif record.levelno < logging.INFO:
            msg = f"{record.levelname.lower()} {record.name}: {msg}"
        if record.exc_text or record.exc_info:
            msg += "\n" + (record.exc_text or self.formatException(record.exc_info))
        if self.color and record.levelno in COLORS:
            msg = f"{COLORS[record.levelno]}{msg}\033[0m"
        if self.timestamps:
            when = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            return f"{when.isoformat(timespec='milliseconds')[:-6]}Z " \
                   f"{self.program}[{record.process}]: {msg}"
        return f"{self.program}: {msg}"


# sd-daemon(3): a "<N>" line prefix is the line's syslog priority for journald
PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
              (logging.INFO, 6))


def priority(levelno: int) -> int:
    return next((p for level, p in PRIORITIES if levelno >= level), 7)


class JournalFormatter(logging.Formatter):
    """For a stream that journald reads: each line starts with its syslog
    priority (``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>`` debug), so
    that journalctl shows and filters levels; no timestamp, program or pid
    (the journal records them), no colours."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno < logging.INFO:
            msg = f"{record.levelname.lower()} {record.name}: {msg}"
        if record.exc_text or record.exc_info:
            msg += "\n" + (record.exc_text or self.formatException(record.exc_info))
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in msg.split("\n"))


def to_journal(stream, environ=os.environ) -> bool:
    """Is ``stream`` connected to the journal?  systemd sets JOURNAL_STREAM to
    the device and inode of the stream it connects (systemd.exec(5)); a child
    whose stderr was redirected elsewhere inherits the variable but not the
    stream, so the two must match."""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (int(device), int(inode)) == (st.st_dev, st.st_ino)
    except (ValueError, OSError, AttributeError):
        return False


class _StreamHandler(logging.StreamHandler):
    """A line logged while progress bars are on the screen clears them first
    and has them drawn again below it."""

    def emit(self, record: logging.LogRecord) -> None:
        from . import progress
        if not progress.ACTIVE:
            return super().emit(record)
        from tqdm import tqdm
        with tqdm.external_write_mode(file=self.stream):
            super().emit(record)


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


def file_handler(program: str, path: str) -> logging.Handler:
    """A handler appending to ``path`` (created 0600), with timestamps; it reopens
    the file when logrotate moved it away."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600))
        handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
    except OSError as exc:
        raise errors.from_oserror(exc, f"cannot write the log file {path}") from None
    handler.setFormatter(Formatter(program, False, timestamps=True))
    return handler


def install(handler: logging.Handler) -> None:
    """``handler`` becomes the only one, redacting like every handler of ours."""
    handler.addFilter(Redact())
    logging.getLogger().handlers[:] = [handler]


def setup(program: str = "cryophile", verbosity: int = 0, stream=None,
          log_file: str | None = None) -> None:
    """verbosity: -q → -1, default 0, -d → 1 (debug), -dd → 2 (trace).
    ``log_file``: append there, with timestamps, instead of ``stream`` (stderr);
    a ``stream`` connected to the journal gets priority prefixes (to_journal)."""
    if log_file:
        handler = file_handler(program, log_file)
    else:
        stream = stream or sys.stderr
        style = os.environ.get("CRYOPHILE_LOG_STYLE", "auto").lower()
        color = style == "always" or (style == "auto" and stream.isatty())
        handler = _StreamHandler(stream)
        handler.setFormatter(JournalFormatter() if to_journal(stream)
                             else Formatter(program, color))
    install(handler)
    root = logging.getLogger()
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
