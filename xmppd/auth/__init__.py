"""Authentication: SCRAM credentials and server-side SASL mechanisms."""

from __future__ import annotations
