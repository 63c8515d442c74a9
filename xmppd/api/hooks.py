"""Hook specs and their payload types (see docs/hooks.md)."""

from __future__ import annotations

from xmppd.hooks import *  # noqa: F403
from xmppd.hooks import __all__ as _core_all

__all__ = list(_core_all)
