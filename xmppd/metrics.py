"""Metrics: one registry of prometheus-client metrics per server process.

Every metric is named ``xmppd_<name>`` (modules: ``xmppd_mod_<module>_<name>``) and
lives in the server's own :class:`prometheus_client.CollectorRegistry`, never in the
library's global default one, so several servers in one process (tests) do not collide.
:meth:`Metrics.render` returns the Prometheus text exposition; serving it over HTTP is
the job of the HTTP layer.

Two ways of counting, chosen by frequency:

* **Scrape-time functions** (:meth:`Metrics.gauge_function`,
  :meth:`Metrics.counter_function`, :meth:`Metrics.samples_function`) read numbers the
  server already keeps (the size of the session map, plain integer counters bumped where
  the event happens) only when someone reads the metrics. They cost nothing on the
  message path; use them for anything that happens per stanza.
* **prometheus-client metrics** (:meth:`Metrics.counter`, :meth:`Metrics.gauge`,
  :meth:`Metrics.histogram`) take a lock per update: fine for logins, registrations,
  module events, not for every routed stanza.

Declaring a metric again with the same kind and labels returns the existing one (a
module loaded on several hosts declares its metrics once per host); any other
redeclaration is a programming error and raises ``ValueError``.
"""

from __future__ import annotations

import logging
import re
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Final, Literal, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

log = logging.getLogger(__name__)

PREFIX: Final = "xmppd_"
"""Every metric of the server starts with this."""

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
"""The media type of :meth:`Metrics.render`'s output (for the HTTP layer)."""

DEFAULT_BUCKETS: Final = Histogram.DEFAULT_BUCKETS

_NAME: Final = re.compile(r"[a-z][a-z0-9_]*\Z")

Kind = Literal["counter", "gauge"]
Samples = Iterable[tuple[Sequence[str], float]]
"""What a samples function returns: (label values, value) pairs."""

M = TypeVar("M", Counter, Gauge, Histogram)
K = TypeVar("K")


def _check_name(name: str) -> None:
    if not _NAME.match(name) or "__" in name:
        raise ValueError(f"invalid metric name {name!r}: use lower_snake_case")


def _check_labels(labels: Sequence[str]) -> tuple[str, ...]:
    names = tuple(labels)
    for label in names:
        if not _NAME.match(label):
            raise ValueError(f"invalid label name {label!r}: use lower_snake_case")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate label names: {names}")
    return names


class _FunctionFamily:
    """A collector for one metric whose samples are read from functions at scrape time.

    Several sources may feed one family (one per fixed label set, e.g. per host); a
    source that raises is logged and left out of that scrape rather than failing it.
    """

    __slots__ = ("documentation", "kind", "label_names", "name", "sources")

    def __init__(self, name: str, documentation: str, kind: Kind, labels: tuple[str, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.kind: Kind = kind
        self.label_names = labels
        self.sources: dict[tuple[tuple[str, str], ...], Callable[[], Samples]] = {}

    def _family(self) -> CounterMetricFamily | GaugeMetricFamily:
        if self.kind == "counter":
            return CounterMetricFamily(self.name, self.documentation, labels=self.label_names)
        return GaugeMetricFamily(self.name, self.documentation, labels=self.label_names)

    def describe(self) -> Iterator[Metric]:
        # Lets the registry learn the names without calling the functions.
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for key, source in list(self.sources.items()):
            try:
                samples = list(source())
            except Exception:
                log.exception("metric %s: reading %s failed; left out", self.name, key)
                continue
            for values, value in samples:
                family.add_metric([str(v) for v in values], float(value))
        yield family


class LatencyHistogram:
    """A histogram cheap enough for the message path: :meth:`observe` is a bisect and
    two additions (no lock: one event loop owns it), read only when scraped.

    Declare it with :meth:`Metrics.fast_histogram`.
    """

    __slots__ = ("bounds", "buckets", "count", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        self.buckets = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.buckets[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, cumulative count)`` pairs as the exposition format wants them."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.buckets, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out


class _HistogramFamily:
    """The collector behind :meth:`Metrics.fast_histogram`: one histogram per label set."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.label_names = labels
        self.children: dict[tuple[str, ...], LatencyHistogram] = {}

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.label_names)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.label_names)
        for values, hist in list(self.children.items()):
            family.add_metric(list(values), hist.cumulative(), hist.total)
        yield family


class StanzaTraffic:
    """Client stanzas in and out, counted where they pass (plain tallies, no lock).

    ``inbound`` is keyed by the stanza's tag; ``outbound`` by the first byte after
    ``<`` of what is written (``m``, ``p``, ``i``), which names the kind without
    parsing. :mod:`xmppd.observe` turns both into ``xmppd_c2s_stanzas_total``.
    """

    __slots__ = ("inbound", "outbound")

    def __init__(self) -> None:
        self.inbound: defaultdict[str, int] = tally()
        self.outbound: defaultdict[int, int] = tally()


def tally() -> defaultdict[K, int]:
    """A plain tally for the message path: ``t[key] += 1`` on a ``defaultdict(int)``
    costs a third of what it costs on a ``collections.Counter``, whose Python-level
    ``__delitem__`` sends every item assignment through a slot wrapper."""
    return defaultdict(int)


class Metrics:
    """The metrics registry of one server (``server.metrics``).

    Names given to the methods leave out the ``xmppd_`` prefix, which is added.
    """

    def __init__(self, *, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        """The underlying prometheus-client registry (owned by this server)."""
        self._declared: dict[str, tuple[str, tuple[str, ...], object]] = {}
        if process:
            # Process CPU, memory and file descriptors, and the Python runtime: read
            # from /proc and the interpreter only when scraped.
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    # ------------------------------------------------------------------ declaring

    def _declare(
        self,
        kind: str,
        name: str,
        labels: Sequence[str],
        make: Callable[[str, tuple[str, ...]], M],
        metric_type: type[M],
    ) -> M:
        _check_name(name)
        label_names = _check_labels(labels)
        full = PREFIX + name
        existing = self._declared.get(full)
        if existing is not None:
            old_kind, old_labels, metric = existing
            if old_kind != kind or old_labels != label_names or not isinstance(metric, metric_type):
                raise ValueError(
                    f"metric {full} is already declared as a {old_kind} with labels {old_labels}"
                )
            return metric
        metric = make(full, label_names)
        self._declared[full] = (kind, label_names, metric)
        return metric

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        """A counter ``xmppd_<name>_total`` (prometheus-client appends ``_total``).

        Call ``.inc()`` (or ``.labels(...).inc()`` when ``labels`` are declared).
        """
        return self._declare(
            "counter",
            name.removesuffix("_total"),
            labels,
            lambda full, ls: Counter(full, documentation, ls, registry=self.registry),
            Counter,
        )

    def gauge(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
        """A gauge ``xmppd_<name>`` to ``set``/``inc``/``dec``."""
        return self._declare(
            "gauge",
            name,
            labels,
            lambda full, ls: Gauge(full, documentation, ls, registry=self.registry),
            Gauge,
        )

    def histogram(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        *,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> Histogram:
        """A histogram ``xmppd_<name>`` (``_bucket``, ``_sum``, ``_count``) to ``observe``."""
        return self._declare(
            "histogram",
            name,
            labels,
            lambda full, ls: Histogram(
                full, documentation, ls, registry=self.registry, buckets=tuple(buckets)
            ),
            Histogram,
        )

    def fast_histogram(
        self,
        name: str,
        documentation: str,
        *,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        labels: Mapping[str, str] | None = None,
    ) -> LatencyHistogram:
        """A histogram ``xmppd_<name>`` for the hot path (see :class:`LatencyHistogram`);
        ``labels`` tell several of one name apart (same label names for each)."""
        _check_name(name)
        names = _check_labels(tuple(labels or {}))
        full = PREFIX + name
        existing = self._declared.get(full)
        if existing is None:
            family = _HistogramFamily(full, documentation, names)
            self.registry.register(family)
            self._declared[full] = ("fast histogram", names, family)
        else:
            old_kind, old_labels, family_obj = existing
            if old_kind != "fast histogram" or old_labels != names:
                raise ValueError(
                    f"metric {full} is already declared as a {old_kind} with labels {old_labels}"
                )
            assert isinstance(family_obj, _HistogramFamily)
            family = family_obj
        values = tuple((labels or {})[n] for n in names)
        hist = family.children.get(values)
        if hist is None:
            hist = family.children[values] = LatencyHistogram(buckets)
        return hist

    def _function_family(
        self, kind: Kind, name: str, documentation: str, labels: Sequence[str]
    ) -> _FunctionFamily:
        _check_name(name)
        label_names = _check_labels(labels)
        full = PREFIX + name
        existing = self._declared.get(full)
        if existing is not None:
            old_kind, old_labels, family = existing
            if (
                old_kind != f"{kind} function"
                or old_labels != label_names
                or not isinstance(family, _FunctionFamily)
            ):
                raise ValueError(
                    f"metric {full} is already declared as a {old_kind} with labels {old_labels}"
                )
            return family
        family = _FunctionFamily(full, documentation, kind, label_names)
        self.registry.register(family)
        self._declared[full] = (f"{kind} function", label_names, family)
        return family

    def samples_function(
        self,
        kind: Kind,
        name: str,
        documentation: str,
        labels: Sequence[str],
        fn: Callable[[], Samples],
        *,
        key: Mapping[str, str] | None = None,
    ) -> None:
        """Read a whole labelled family at scrape time: ``fn`` returns
        ``(label values, value)`` pairs, label values in the order of ``labels``.

        ``key`` tells sources of one family apart (e.g. ``{"host": domain}``); adding a
        source with the same key replaces it. A counter's values must only grow.
        """
        family = self._function_family(kind, name, documentation, labels)
        family.sources[tuple(sorted(key.items())) if key else ()] = fn

    def gauge_function(
        self,
        name: str,
        documentation: str,
        fn: Callable[[], float],
        *,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """A gauge whose value is ``fn()`` at scrape time (e.g. the number of sessions).

        Declaring the same name again with other ``labels`` values adds a sample to the
        same metric (one per host, say); with the same values it replaces the function.
        """
        self._single_function("gauge", name, documentation, fn, labels or {})

    def counter_function(
        self,
        name: str,
        documentation: str,
        fn: Callable[[], float],
        *,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """A counter ``xmppd_<name>_total`` whose value is ``fn()`` at scrape time: expose
        a plain integer the code bumps where the event happens (no lock, no lookup)."""
        self._single_function(
            "counter", name.removesuffix("_total"), documentation, fn, labels or {}
        )

    def _single_function(
        self,
        kind: Kind,
        name: str,
        documentation: str,
        fn: Callable[[], float],
        labels: Mapping[str, str],
    ) -> None:
        names = tuple(labels)
        values = tuple(labels[n] for n in names)
        self.samples_function(
            kind, name, documentation, names, lambda: ((values, fn()),), key=labels
        )

    # ------------------------------------------------------------------ reading

    def render(self) -> bytes:
        """Every metric in the Prometheus text exposition format (:data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)

    def value(self, sample: str, labels: Mapping[str, str] | None = None) -> float | None:
        """The current value of one sample by its full name (``xmppd_logins_total``),
        or ``None`` when there is no such sample (for tests and the admin tools)."""
        return self.registry.get_sample_value(sample, dict(labels or {}))


class HostCounter:
    """A module's counter on one host: the ``host`` label is filled in."""

    __slots__ = ("_host", "_metric")

    def __init__(self, metric: Counter, host: str) -> None:
        self._metric = metric
        self._host = host

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount``; pass the module's own labels by name."""
        self._metric.labels(host=self._host, **labels).inc(amount)

    def labels(self, **labels: str) -> Counter:
        """The underlying child for these labels (keep it to skip the lookup)."""
        return self._metric.labels(host=self._host, **labels)


class HostGauge:
    """A module's gauge on one host: the ``host`` label is filled in."""

    __slots__ = ("_host", "_metric")

    def __init__(self, metric: Gauge, host: str) -> None:
        self._metric = metric
        self._host = host

    def set(self, value: float, **labels: str) -> None:
        self._metric.labels(host=self._host, **labels).set(value)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self._metric.labels(host=self._host, **labels).inc(amount)

    def dec(self, amount: float = 1.0, **labels: str) -> None:
        self._metric.labels(host=self._host, **labels).dec(amount)

    def labels(self, **labels: str) -> Gauge:
        """The underlying child for these labels (keep it to skip the lookup)."""
        return self._metric.labels(host=self._host, **labels)


class HostHistogram:
    """A module's histogram on one host: the ``host`` label is filled in."""

    __slots__ = ("_host", "_metric")

    def __init__(self, metric: Histogram, host: str) -> None:
        self._metric = metric
        self._host = host

    def observe(self, value: float, **labels: str) -> None:
        self._metric.labels(host=self._host, **labels).observe(value)

    def labels(self, **labels: str) -> Histogram:
        """The underlying child for these labels (keep it to skip the lookup)."""
        return self._metric.labels(host=self._host, **labels)


class ModuleMetrics:
    """``ctx.metrics``: declare a module's metrics on its host.

    Names become ``xmppd_mod_<module>_<name>`` with a ``host`` label first, so the same
    module on several hosts shares one metric and each host has its own samples::

        sent = ctx.metrics.counter("notifications", "Push notifications sent", ["outcome"])
        sent.inc(outcome="delivered")

        ctx.metrics.gauge_function("rooms", "Rooms in memory", lambda: len(rooms))

    Count in the handlers of events that are not per message (a login, a push, a room
    created); for per-message numbers keep a plain integer and expose it with
    :meth:`counter_function`, which is read only when the metrics are scraped.
    """

    __slots__ = ("_host", "_metrics", "_prefix")

    def __init__(self, metrics: Metrics, module: str, host: str) -> None:
        self._metrics = metrics
        self._prefix = f"mod_{module}_"
        self._host = host

    def _labels(self, labels: Sequence[str]) -> list[str]:
        if "host" in labels:
            raise ValueError("the 'host' label is added by the server")
        return ["host", *labels]

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> HostCounter:
        """A counter ``xmppd_mod_<module>_<name>_total`` with ``host`` and ``labels``."""
        metric = self._metrics.counter(self._prefix + name, documentation, self._labels(labels))
        return HostCounter(metric, self._host)

    def gauge(self, name: str, documentation: str, labels: Sequence[str] = ()) -> HostGauge:
        """A gauge ``xmppd_mod_<module>_<name>`` with ``host`` and ``labels``."""
        metric = self._metrics.gauge(self._prefix + name, documentation, self._labels(labels))
        return HostGauge(metric, self._host)

    def histogram(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        *,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> HostHistogram:
        """A histogram ``xmppd_mod_<module>_<name>`` with ``host`` and ``labels``."""
        metric = self._metrics.histogram(
            self._prefix + name, documentation, self._labels(labels), buckets=buckets
        )
        return HostHistogram(metric, self._host)

    def gauge_function(self, name: str, documentation: str, fn: Callable[[], float]) -> None:
        """A gauge read from ``fn()`` at scrape time, for this host."""
        self._metrics.gauge_function(
            self._prefix + name, documentation, fn, labels={"host": self._host}
        )

    def counter_function(self, name: str, documentation: str, fn: Callable[[], float]) -> None:
        """A counter read from ``fn()`` (an integer the module bumps) at scrape time."""
        self._metrics.counter_function(
            self._prefix + name, documentation, fn, labels={"host": self._host}
        )
