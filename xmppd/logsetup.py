"""Where the server's log goes and how it looks: ``[server]`` ``log_level``,
``log_target`` (``stderr``, ``file``, ``journal``), ``log_file`` and ``log_format``
(``plain`` or ``json``: one JSON object per line).

Plain lines are ``<time> <LEVEL> <logger>: <message>`` (time in UTC, ISO 8601);
JSON lines carry ``time``, ``level``, ``logger``, ``message`` and, for the operator's
events (:mod:`xmppd.oplog`), their ``fields``. The systemd journal needs the
``python3-systemd`` bindings (``systemd.journal``); without them the server says so
and logs to stderr, which systemd also puts in the journal.

Commands other than ``run`` log only warnings and errors, so that what they print is
their result alone.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from xmppd.config import ServerSection

PLAIN_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_NOISY: Final = ("aiosqlite", "asyncio")


class UtcFormatter(logging.Formatter):
    """``2026-01-31T12:00:00.123Z INFO xmppd.auth: ...``"""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


class JsonFormatter(UtcFormatter):
    """One JSON object per line (with ``process``: which worker or the supervisor,
    under ``server.workers``)."""

    def __init__(self, process: str | None = None) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.process is not None:
            out["process"] = self.process
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out["fields"] = fields
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def _journal_handler() -> logging.Handler | None:
    try:
        from systemd import journal  # type: ignore[import-not-found]
    except ImportError:
        return None
    handler: logging.Handler = journal.JournalHandler(SYSLOG_IDENTIFIER="xmppd")
    return handler


def configure(section: ServerSection, *, command: str = "run", process: str | None = None) -> None:
    """Set up the root logger for ``command`` from the ``[server]`` section.
    ``process``: the name of this process among the workers of ``server.workers``
    (``w0``, ``w1``, ``supervisor``), shown on each line."""
    level = logging.getLevelName(section.log_level.upper())
    if command != "run":
        level = max(level, logging.WARNING)
    note = ""
    handler: logging.Handler | None = None
    if section.log_target == "journal":
        handler = _journal_handler()
        if handler is None:
            note = "log_target = 'journal' needs python3-systemd; logging to stderr instead"
    elif section.log_target == "file" and command == "run":
        path = section.log_file
        if not path.is_absolute():
            path = section.data_dir / path
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
    plain = (
        PLAIN_FORMAT
        if process is None
        else PLAIN_FORMAT.replace("%(name)s", f"[{process}] %(name)s")
    )
    formatter = JsonFormatter(process) if section.log_format == "json" else UtcFormatter(plain)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(max(logging.INFO, level))
    if note:
        logging.getLogger("xmppd").warning(note)
