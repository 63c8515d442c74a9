"""``/metrics`` under ``server.workers``: one scrape sees every worker.

The kernel hands each HTTP connection to any worker, so a worker answering alone would
show Prometheus a different process at each scrape. Instead the worker that answers
asks every other worker of the machine for its own metrics, over their control
sockets (``GET /metrics`` there, not reachable from the network), adds the label
``node="<worker's node name>"`` to every series and serves the union: one scrape
target per machine, a series per worker. A worker that is restarting is left out of
that scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Final

import aiohttp
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

NODE_LABEL: Final = "node"
NODE_HEADER: Final = "X-Xmppd-Node"
"""The control socket's ``/metrics`` answer names its worker's node in this header."""
_TIMEOUT: Final = 3.0


def label_and_merge(texts: Iterable[tuple[str, str]]) -> bytes:
    """(node, Prometheus text) pairs → one exposition with ``node`` on every sample
    (families of the same name are merged, so each ``# TYPE`` appears once)."""
    families: dict[str, Metric] = {}
    for node, text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            for s in family.samples:
                merged.samples.append(
                    Sample(s.name, {**s.labels, NODE_LABEL: node}, s.value, s.timestamp, s.exemplar)
                )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families.values())))
    return generate_latest(registry)


class _Fixed:
    """A collector that yields families already built."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


async def gather(
    data_dir: Path, own_socket: Path, own_node: str, own: Callable[[], bytes]
) -> bytes:
    """This worker's metrics and those of the other workers whose control sockets are
    in ``data_dir``, labelled with their node."""
    others = await asyncio.to_thread(_other_sockets, data_dir, own_socket)
    answers = await asyncio.gather(*(_fetch(p) for p in others))
    texts = [(own_node, own().decode())]
    texts.extend(answer for answer in answers if answer is not None)
    return await asyncio.to_thread(label_and_merge, texts)


def _other_sockets(data_dir: Path, own_socket: Path) -> list[Path]:
    own = own_socket.resolve()
    return [p for p in sorted(data_dir.resolve().glob("xmppd-w*.ctl")) if p != own]


async def _fetch(sock: Path) -> tuple[str, str] | None:
    connector = aiohttp.UnixConnector(path=str(sock))
    timeout = aiohttp.ClientTimeout(total=_TIMEOUT)
    with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.get("http://xmppd/metrics") as response,
        ):
            if response.status != 200:
                return None
            node = response.headers.get(NODE_HEADER, sock.stem)
            return node, await response.text()
    return None
