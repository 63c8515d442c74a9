"""Namespace constants."""

from __future__ import annotations

from xmppd.ns import *  # noqa: F403
