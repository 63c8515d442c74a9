"""XEP-0050 ad-hoc commands for modules: declare a :class:`Command` and add it to the
host's :data:`ADHOC` registry (``mod_adhoc``); see ``xmppd.adhoc``."""

from __future__ import annotations

from xmppd.adhoc import *  # noqa: F403
from xmppd.adhoc import __all__ as _adhoc_all

__all__ = list(_adhoc_all)
