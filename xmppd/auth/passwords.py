"""The one password policy of the server (``accounts.min_password_length``).

Every way of setting a password goes through :func:`password_problem` first: the
``xmppd`` CLI (``adduser``, ``passwd``, ``import-users``), the admin REST API and
in-band registration (``mod_register``, through ``ModuleContext.password_problem``).
"""

from __future__ import annotations

from typing import Final

from xmppd.auth.scram import prepare_password

MAX_PASSWORD_LENGTH: Final = 1024
"""Longer passwords are refused: PBKDF2 over megabytes is a denial of service."""


def password_problem(password: str, min_length: int) -> str | None:
    """Why ``password`` is refused by the policy, ``None`` when it is acceptable."""
    if len(password) < min_length:
        return f"password too short (at least {min_length} characters)"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"password too long (at most {MAX_PASSWORD_LENGTH} characters)"
    try:
        prepare_password(password)
    except ValueError:
        return "password contains characters PRECIS OpaqueString (RFC 8265) forbids"
    return None
