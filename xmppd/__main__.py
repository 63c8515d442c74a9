"""Allow ``python -m xmppd``."""

from __future__ import annotations

from xmppd.cli import main

raise SystemExit(main())
