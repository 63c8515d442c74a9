"""The operator's log lines: one INFO line per login, failed login and session end.

The lines are a stable interface (fail2ban filters, log shippers and scripts match
them), documented in docs/admin-guide.md ("Logs and fail2ban"); change them only with
that page and ``docs/fail2ban/``. Each is ``<event>: key=value ...`` on the
``xmppd.auth`` (logins) or ``xmppd.session`` (session end) logger, with the
address first, so a filter can anchor on it::

    login: address=203.0.113.5 jid=alice@example.org/phone mechanism=SCRAM-SHA-256 transport=tcp
    login failed: address=203.0.113.5 user=alice mechanism=PLAIN reason=not-authorized transport=tcp
    session ended: address=203.0.113.5 jid=alice@example.org/phone reason=... transport=websocket

Values a peer chooses (the attempted user, a resource) are quoted when they hold
anything but printable non-space ASCII, so a crafted name cannot forge a second field
or line. The same fields are passed as ``extra={"fields": {...}}`` for the JSON log
format. No password, token or SASL payload is ever logged.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Final

auth_log: Final = logging.getLogger("xmppd.auth")
session_log: Final = logging.getLogger("xmppd.session")

_PLAIN: Final = re.compile(r"[!#-~]{1,256}\Z")  # printable ASCII, no space, no double quote


def field(value: str) -> str:
    """``value`` as it appears after ``key=``: bare when safe, else JSON-quoted (and cut
    to 256 characters)."""
    if _PLAIN.match(value):
        return value
    return json.dumps(value[:256], ensure_ascii=True)


def _emit(logger: logging.Logger, event: str, fields: dict[str, str]) -> None:
    if logger.isEnabledFor(logging.INFO):
        text = " ".join(f"{k}={field(v)}" for k, v in fields.items())
        logger.info("%s: %s", event, text, extra={"fields": {"event": event, **fields}})


def login(*, address: str, jid: str, mechanism: str, transport: str) -> None:
    """A client authenticated and bound a resource (``jid`` is the full JID)."""
    _emit(
        auth_log,
        "login",
        {"address": address, "jid": jid, "mechanism": mechanism, "transport": transport},
    )


def login_failed(*, address: str, user: str, mechanism: str, reason: str, transport: str) -> None:
    """Authentication failed (``user``: the attempted username, ``-`` when unknown)."""
    _emit(
        auth_log,
        "login failed",
        {
            "address": address,
            "user": user or "-",
            "mechanism": mechanism,
            "reason": reason,
            "transport": transport,
        },
    )


def session_ended(*, address: str, jid: str, reason: str, transport: str) -> None:
    """A bound session ended (closed, lost, replaced, timed out, resumption expired)."""
    _emit(
        session_log,
        "session ended",
        {"address": address, "jid": jid, "reason": reason, "transport": transport},
    )
