"""The operator's log lines (xmppd.oplog), the log set-up (xmppd.logsetup) and the
lock-free latency histogram (xmppd.metrics.LatencyHistogram) as pure functions."""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from xmppd import oplog
from xmppd.config import ServerSection
from xmppd.logsetup import JsonFormatter, UtcFormatter, configure
from xmppd.metrics import Metrics


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, restored after the test (configure replaces its handlers)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("alice", "alice"),
        ("a b", '"a b"'),
        ('x"y', '"x\\"y"'),
        ("line\nbreak", '"line\\nbreak"'),
        ("jörg", '"j\\u00f6rg"'),
        ("", '""'),
    ],
)
def test_values_a_client_chooses_cannot_forge_fields(value: str, shown: str) -> None:
    assert oplog.field(value) == shown


def test_long_values_are_cut() -> None:
    assert len(json.loads(oplog.field("x y" * 1000))) == 256


def test_a_failed_login_line_and_its_fields(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="xmppd.auth"):
        oplog.login_failed(
            address="192.0.2.1",
            user="",
            mechanism="PLAIN",
            reason="not-authorized",
            transport="tcp",
        )
    (record,) = caplog.records
    assert record.getMessage() == (
        "login failed: address=192.0.2.1 user=- mechanism=PLAIN reason=not-authorized transport=tcp"
    )
    assert record.fields["event"] == "login failed"  # type: ignore[attr-defined]


def test_plain_and_json_formats() -> None:
    record = logging.LogRecord(
        "xmppd.session", logging.INFO, __file__, 1, "hello %s", ("you",), None
    )
    record.created = 0.5
    record.msecs = 500
    record.fields = {"event": "x"}
    plain = UtcFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s").format(record)
    assert plain == "1970-01-01T00:00:00.500Z INFO xmppd.session: hello you"
    line = json.loads(JsonFormatter().format(record))
    assert line == {
        "time": "1970-01-01T00:00:00.500Z",
        "level": "INFO",
        "logger": "xmppd.session",
        "message": "hello you",
        "fields": {"event": "x"},
    }


def test_commands_other_than_run_log_only_warnings(root_logger: logging.Logger) -> None:
    configure(ServerSection(log_level="debug"), command="users")
    assert root_logger.level == logging.WARNING
    configure(ServerSection(log_level="debug"), command="run")
    assert root_logger.level == logging.DEBUG


def test_a_log_file_relative_to_the_data_dir(root_logger: logging.Logger, tmp_path: Path) -> None:
    configure(ServerSection(data_dir=tmp_path, log_target="file", log_format="json"))
    logging.getLogger("xmppd.test").info("to the file")
    for handler in root_logger.handlers:
        handler.flush()
    (line,) = (tmp_path / "xmppd.log").read_text().splitlines()
    assert json.loads(line)["message"] == "to the file"


@pytest.mark.skipif(
    importlib.util.find_spec("systemd") is not None, reason="python-systemd is installed"
)
def test_the_journal_without_python_systemd_falls_back_to_stderr(
    root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    configure(ServerSection(log_target="journal"))
    (handler,) = root_logger.handlers
    assert type(handler) is logging.StreamHandler
    assert "needs python3-systemd" in capsys.readouterr().err


def test_the_fast_histogram_is_a_prometheus_histogram() -> None:
    metrics = Metrics(process=False)
    hist = metrics.fast_histogram("test_seconds", "A test.", buckets=(0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 2.0):
        hist.observe(value)
    assert metrics.fast_histogram("test_seconds", "A test.", buckets=(0.1, 1.0)) is hist
    (family,) = text_string_to_metric_families(metrics.render().decode())
    assert family.type == "histogram"
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples[("xmppd_test_seconds_bucket", "0.1")] == 2  # le: 0.1 included
    assert samples[("xmppd_test_seconds_bucket", "1.0")] == 3
    assert samples[("xmppd_test_seconds_bucket", "+Inf")] == 4
    assert samples[("xmppd_test_seconds_count", None)] == 4
    assert samples[("xmppd_test_seconds_sum", None)] == pytest.approx(2.65)
    with pytest.raises(ValueError, match="already declared"):
        metrics.counter("test_seconds", "clash")
