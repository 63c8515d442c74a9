"""Parsing helpers of the web benchmarks (``bench/web.py``, ``bench/wsclient.py``): slot
requests and answers (XEP-0363), upload URLs pointed at the server under test, and
stanzas qualified for XMPP over WebSocket (RFC 7395)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from bench.web import WebSettings, direct_url, parse_slot, slot_request
from bench.wsclient import open_element, qualify
from bench.xmpp import XmppError

SLOT = (
    b"<iq type='result' id='s1' from='upload.bench.local'>"
    b"<slot xmlns='urn:xmpp:http:upload:0'>"
    b"<put url='http://upload.bench.local:5280/file_share/abc/f.bin?a=1&amp;b=2'>"
    b"<header name='Authorization'>Bearer x.y\n.z</header>"
    b"<header name='X-Evil'>no</header>"
    b"<header name='Expires'>Tue, 01 Dec 2026 00:00:00 GMT</header>"
    b"</put><get url='http://upload.bench.local:5280/file_share/abc/f.bin'/></slot></iq>"
)


def test_a_slot_answer_gives_the_urls_and_only_the_allowed_headers() -> None:
    slot = parse_slot(SLOT)
    assert slot.put_url == "http://upload.bench.local:5280/file_share/abc/f.bin?a=1&b=2"
    assert slot.get_url == "http://upload.bench.local:5280/file_share/abc/f.bin"
    assert slot.headers == {
        "Authorization": "Bearer x.y.z",
        "Expires": "Tue, 01 Dec 2026 00:00:00 GMT",
    }


@pytest.mark.parametrize(
    "answer",
    [
        b"<iq type='error' id='s1'><error type='modify'><not-acceptable "
        b"xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
        b"<iq type='result' id='s1'/>",
        b"<iq type='result' id='s1'><slot xmlns='urn:xmpp:http:upload:0'><put url='http://a/'/>"
        b"</slot></iq>",
        b"<iq type='result' id='s1'><slot",
    ],
)
def test_refusals_and_malformed_answers_raise(answer: bytes) -> None:
    with pytest.raises(XmppError):
        parse_slot(answer)


def test_the_slot_request_escapes_the_file_name() -> None:
    iq = ET.fromstring(slot_request("r1", "upload.bench.local", "a'<b>&.bin", 10_000_000))
    assert iq.get("to") == "upload.bench.local"
    assert iq.get("type") == "get"
    request = iq.find("{urn:xmpp:http:upload:0}request")
    assert request is not None
    assert request.get("filename") == "a'<b>&.bin"
    assert request.get("size") == "10000000"


def test_upload_urls_go_to_the_loopback_port_with_the_original_host() -> None:
    assert direct_url("http://upload.bench.local:5280/f/a%20b.bin?t=1", 40001) == (
        "http://127.0.0.1:40001/f/a%20b.bin?t=1",
        "upload.bench.local",
    )
    assert direct_url("https://127.0.0.1/upload/x", 40001) == (
        "http://127.0.0.1:40001/upload/x",
        "127.0.0.1",
    )
    with pytest.raises(ValueError):
        direct_url("ftp://example.org/x", 1)


@pytest.mark.parametrize(
    ("stanza", "expected"),
    [
        (b"<presence/>", b"<presence xmlns='jabber:client'/>"),
        (
            b"<message type='chat' to='u1@d'><body>u1:1:2</body></message>",
            b"<message xmlns='jabber:client' type='chat' to='u1@d'><body>u1:1:2</body></message>",
        ),
        (b"<iq type='get' id='p'/>", b"<iq xmlns='jabber:client' type='get' id='p'/>"),
        # already qualified, or not a stanza: unchanged
        (b"<iq xmlns='jabber:client' id='p'/>", b"<iq xmlns='jabber:client' id='p'/>"),
        (
            b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AA==</auth>",
            b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AA==</auth>",
        ),
        (b"<iqx/>", b"<iqx/>"),
    ],
)
def test_stanzas_over_websocket_carry_their_namespace(stanza: bytes, expected: bytes) -> None:
    assert qualify(stanza) == expected
    ET.fromstring(qualify(stanza))


def test_open_element() -> None:
    element = ET.fromstring(open_element("bench.local"))
    assert element.tag == "{urn:ietf:params:xml:ns:xmpp-framing}open"
    assert element.get("to") == "bench.local"
    assert element.get("version") == "1.0"


def test_accounts_needed() -> None:
    web = WebSettings(ws_sessions=30, ws_pairs=20)
    assert web.accounts_needed(["ws-sessions"]) == 30
    assert web.accounts_needed(["ws-sessions", "ws-chat"]) == 40
    assert web.accounts_needed(["upload"]) == 1
    assert web.accounts_needed(["chat"]) == 0


def test_rss_peak_growth_is_never_negative() -> None:
    from bench.web import _peak_growth, _peak_kb

    assert _peak_kb([100, 180, 150], 100) == 80
    assert _peak_kb([90, 95], 100) == 0
    assert _peak_kb([], 100) is None
    step = {"put_rss_peak_growth_kb": 0, "get_rss_peak_growth_kb": 0}
    assert _peak_growth(step) == 0
    assert _peak_growth({"put_rss_peak_growth_kb": 5, "get_rss_peak_growth_kb": None}) == 5
    assert _peak_growth(None) is None
