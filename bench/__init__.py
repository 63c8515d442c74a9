"""Benchmark suite comparing xmppd with Prosody and ejabberd on loopback.

Run it with ``python -m bench all|sessions|chat|echo-ceiling`` from the repository root;
see ``docs/benchmarks.md`` for what each scenario measures.
"""

from __future__ import annotations

__all__: list[str] = []
