"""The metrics registry: one per server, prefixed names, idempotent declarations,
scrape-time functions, and a module's view with its host label."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from xmppd.auth.throttle import FailedLoginThrottle
from xmppd.config import parse_config
from xmppd.metrics import Metrics, ModuleMetrics
from xmppd.module import Module, ModuleContext, NoOptions
from xmppd.server import Server


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the text exposition, parsed back as Prometheus would."""
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def test_names_are_prefixed_and_rendered_in_the_text_format() -> None:
    m = Metrics(process=False)
    m.counter("things", "Things done.").inc(3)
    m.gauge("level", "A level.", ["zone"]).labels("a").set(7)
    m.histogram("wait_seconds", "Waits.", buckets=[0.1, 1]).observe(0.5)
    text = m.render().decode()
    assert "# HELP xmppd_things_total Things done." in text
    assert "# TYPE xmppd_level gauge" in text
    got = samples(m)
    assert got["xmppd_things_total", ()] == 3
    assert got["xmppd_level", (("zone", "a"),)] == 7
    assert got["xmppd_wait_seconds_bucket", (("le", "1.0"),)] == 1
    assert got["xmppd_wait_seconds_bucket", (("le", "0.1"),)] == 0
    assert m.value("xmppd_things_total") == 3
    assert m.value("xmppd_nothing") is None


def test_two_registries_in_one_process_do_not_collide() -> None:
    one, two = Metrics(), Metrics()
    one.counter("logins", "Logins.").inc()
    two.counter("logins", "Logins.").inc(5)
    assert one.value("xmppd_logins_total") == 1
    assert two.value("xmppd_logins_total") == 5
    # The process and runtime collectors are registered in each registry too.
    assert b"python_info" in one.render() and b"python_info" in two.render()


def test_declaring_again_returns_the_same_metric_and_a_conflict_raises() -> None:
    m = Metrics(process=False)
    first = m.counter("events", "Events.", ["kind"])
    assert m.counter("events_total", "Events.", ["kind"]) is first
    with pytest.raises(ValueError, match="already declared as a counter"):
        m.gauge("events", "Events.", ["kind"])
    with pytest.raises(ValueError, match="already declared"):
        m.counter("events", "Events.", ["other"])
    m.gauge_function("sessions", "Sessions.", lambda: 1)
    with pytest.raises(ValueError, match="already declared as a gauge function"):
        m.gauge("sessions", "Sessions.")


@pytest.mark.parametrize("name", ["Bad", "xmppd-x", "a b", "", "a__b", "9lives"])
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="invalid metric name"):
        Metrics(process=False).counter(name, "x")


def test_functions_are_read_only_when_scraped() -> None:
    m = Metrics(process=False)
    calls = []
    value = {"n": 0}

    def read() -> float:
        calls.append(1)
        return value["n"]

    m.gauge_function("open", "Open things.", read)
    value["n"] = 4
    assert calls == []
    assert m.value("xmppd_open") == 4
    value["n"] = 9
    assert samples(m)["xmppd_open", ()] == 9


def test_counter_function_exposes_a_plain_integer() -> None:
    m = Metrics(process=False)
    count = [0]
    m.counter_function("routed", "Routed.", lambda: count[0])
    count[0] += 2
    assert m.value("xmppd_routed_total") == 2
    assert "# TYPE xmppd_routed_total counter" in m.render().decode()


def test_labelled_functions_share_one_family_and_replace_by_key() -> None:
    m = Metrics(process=False)
    m.gauge_function("users", "Users.", lambda: 1, labels={"host": "a.example"})
    m.gauge_function("users", "Users.", lambda: 2, labels={"host": "b.example"})
    m.gauge_function("users", "Users.", lambda: 3, labels={"host": "a.example"})
    got = samples(m)
    assert got["xmppd_users", (("host", "a.example"),)] == 3
    assert got["xmppd_users", (("host", "b.example"),)] == 2


def test_samples_function_reports_a_whole_family() -> None:
    m = Metrics(process=False)
    throttle = FailedLoginThrottle()
    throttle.succeeded("192.0.2.1", "PLAIN")
    throttle.failed("192.0.2.1", "PLAIN")
    throttle.failed("192.0.2.1", "PLAIN")
    m.samples_function(
        "counter",
        "logins",
        "Logins.",
        ["mechanism", "result"],
        lambda: [
            ((mech, "success" if ok else "failure"), n)
            for (mech, ok), n in throttle.outcomes.items()
        ],
    )
    assert m.value("xmppd_logins_total", {"mechanism": "PLAIN", "result": "failure"}) == 2
    assert m.value("xmppd_logins_total", {"mechanism": "PLAIN", "result": "success"}) == 1


def test_a_failing_function_is_left_out_not_the_whole_scrape(
    caplog: pytest.LogCaptureFixture,
) -> None:
    m = Metrics(process=False)

    def broken() -> float:
        raise RuntimeError("boom")

    m.gauge_function("broken", "Broken.", broken, labels={"host": "a.example"})
    m.gauge_function("broken", "Broken.", lambda: 5, labels={"host": "b.example"})
    m.gauge_function("fine", "Fine.", lambda: 1)
    with caplog.at_level(logging.ERROR, logger="xmppd.metrics"):
        got = samples(m)
    assert got["xmppd_fine", ()] == 1
    assert got["xmppd_broken", (("host", "b.example"),)] == 5
    assert ("xmppd_broken", (("host", "a.example"),)) not in got
    assert "xmppd_broken" in caplog.text and "boom" in caplog.text


def test_module_metrics_share_one_metric_across_hosts() -> None:
    m = Metrics(process=False)
    a = ModuleMetrics(m, "push", "a.example")
    b = ModuleMetrics(m, "push", "b.example")
    a.counter("notifications", "Pushes sent.", ["outcome"]).inc(outcome="delivered")
    b.counter("notifications", "Pushes sent.", ["outcome"]).inc(2, outcome="delivered")
    a.gauge("queued", "Queued.").set(4)
    b.histogram("latency_seconds", "Latency.", buckets=[1.0]).observe(0.3)
    a.gauge_function("registrations", "Registrations.", lambda: 10)
    b.gauge_function("registrations", "Registrations.", lambda: 20)
    got = samples(m)
    name = "xmppd_mod_push_notifications_total"
    assert got[name, (("host", "a.example"), ("outcome", "delivered"))] == 1
    assert got[name, (("host", "b.example"), ("outcome", "delivered"))] == 2
    assert got["xmppd_mod_push_queued", (("host", "a.example"),)] == 4
    assert got["xmppd_mod_push_latency_seconds_count", (("host", "b.example"),)] == 1
    assert got["xmppd_mod_push_registrations", (("host", "a.example"),)] == 10
    assert got["xmppd_mod_push_registrations", (("host", "b.example"),)] == 20
    with pytest.raises(ValueError, match="'host' label"):
        a.counter("bad", "Bad.", ["host"])


def test_module_context_declares_into_the_servers_registry(tmp_path: Path) -> None:
    config = parse_config(
        {
            "server": {"data_dir": str(tmp_path)},
            "storage": {"url": f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}"},
            "hosts": {"a.example": {}, "b.example": {}},
            "modules": {},
        }
    )
    server = Server(config)
    module: Module[NoOptions] = Module("demo", "A demonstration.")
    peers: dict[str, ModuleContext[NoOptions]] = {}
    for host in server.hosts.values():
        ctx = peers[host.domain] = ModuleContext(module, host, NoOptions(), server.core, peers)
        ctx.metrics.counter("greetings", "Greetings.").inc()
    assert server.metrics.value("xmppd_mod_demo_greetings_total", {"host": "a.example"}) == 1
    assert server.metrics.value("xmppd_mod_demo_greetings_total", {"host": "b.example"}) == 1
    # The core's own metrics are there from construction, read at scrape time.
    assert server.metrics.value("xmppd_c2s_sessions") == 0
    assert server.metrics.value("xmppd_info", {"version": "0.1.0"}) == 1
