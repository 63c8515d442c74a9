"""The storm scenario's client (``bench/storm_client.py``) on its own: XEP-0198 counting
of what it receives however the stream is cut, acknowledgements of what it sent, the
server's pings answered, message ids recorded (duplicates counted), the back-off model's
bounds and the plan of storms per server."""

from __future__ import annotations

import asyncio
import random
import ssl

from bench.storm import storm_plan
from bench.storm_client import Backoff, StormConn, StormSession


class Wire:
    """Collects what the client writes (stands in for the socket)."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def is_closing(self) -> bool:
        return False


def live_session() -> tuple[StormSession, StormConn, Wire]:
    session = StormSession(
        3,
        "u00003",
        "pw",
        host="127.0.0.1",
        port=1,
        domain="bench.local",
        tls=ssl.create_default_context(),
    )
    session.peer = b"u00002@bench.local"
    conn = StormConn(session)
    wire = Wire()
    conn.transport = wire  # type: ignore[assignment]
    session._go_live(conn)
    return session, conn, wire


STANZAS = (
    b"<message from='u00002@bench.local/storm' to='u00003@bench.local/storm' type='chat' "
    b"id='2-1'><body>storm 2-1</body></message>"
    b"<presence from='u00002@bench.local/storm'/>"
    b"<iq type='get' id='srv-ping' from='bench.local'><ping xmlns='urn:xmpp:ping'/></iq>"
    b"<message type='chat' id='2-2'><body>storm 2-2</body></message>"
    b"<message type='chat' id='2-1'><body>storm 2-1</body></message>"
    b"<r xmlns='urn:xmpp:sm:3'/>"
)


def test_counts_stanzas_answers_r_and_pings_however_the_input_is_cut() -> None:
    for size in (1, 7, 50, len(STANZAS)):
        session, conn, wire = live_session()
        for i in range(0, len(STANZAS), size):
            conn.data_received(STANZAS[i : i + size])
        assert session.h_in == 5  # 3 messages, a presence, an iq; <r/> is not a stanza
        assert session.received == {b"2-1": 2, b"2-2": 1}
        sent = b"".join(wire.out)
        assert b"<iq type='result' id='srv-ping' to='bench.local'/>" in sent
        assert sent.endswith(b"<a xmlns='urn:xmpp:sm:3' h='5'/>")  # the answer to <r/>
        assert conn.buf == b""


def test_acknowledged_messages_leave_the_queue_in_order() -> None:
    session, conn, wire = live_session()
    for _ in range(5):
        assert session.send_message()
    assert [m for _, m, _ in session.unacked] == [b"3-1", b"3-2", b"3-3", b"3-4", b"3-5"]
    assert b"to='u00002@bench.local' id='3-1'" in wire.out[0]
    conn.data_received(b"<a xmlns='urn:xmpp:sm:3' h='3'/>")
    assert session.acked == [b"3-1", b"3-2", b"3-3"]
    conn.data_received(b"<a xmlns='urn:xmpp:sm:3' h='5'/>")
    assert session.acked == [b"3-1", b"3-2", b"3-3", b"3-4", b"3-5"]
    assert not session.unacked


def test_resumed_acknowledges_then_resends_the_rest() -> None:
    session, conn, wire = live_session()
    for _ in range(4):
        session.send_message()
    wire.out.clear()
    session._after_resume(conn, b"<resumed xmlns='urn:xmpp:sm:3' h='2' previd='x'/>")
    assert session.acked == [b"3-1", b"3-2"]
    assert [m for _, m, _ in session.unacked] == [b"3-3", b"3-4"]
    assert [seq for seq, _, _ in session.unacked] == [3, 4]  # counted on from h
    assert len(wire.out) == 2 and session.resent == 2


def test_backoff_stays_within_its_bounds() -> None:
    backoff = Backoff(first=1.0, base=0.5, cap=4.0, rng=random.Random(1))
    firsts = [backoff.delay(0) for _ in range(200)]
    assert all(0 <= d < 1.0 for d in firsts) and max(firsts) > 0.8
    assert all(0 <= backoff.delay(1) <= 0.5 for _ in range(100))
    assert all(0 <= backoff.delay(10) <= 4.0 for _ in range(100))
    assert max(backoff.delay(10) for _ in range(200)) > 3.0


def test_plan_fast_only_on_xmppd_and_resumption_only_when_cut() -> None:
    xmppd = {(s.drop, s.name) for s in storm_plan("xmppd")}
    assert ("cut", "fast+resume") in xmppd and ("restart", "fast") in xmppd
    prosody = {(s.drop, s.name) for s in storm_plan("prosody")}
    assert prosody == {("cut", "scram"), ("cut", "scram+resume"), ("restart", "scram")}
    assert not any(s.resume and s.drop == "restart" for s in storm_plan("xmppd"))


def test_a_session_is_created_outside_a_running_loop() -> None:
    # asyncio.Event() must not need a loop at construction (the fleet builds sessions first).
    asyncio.run(asyncio.sleep(0))
    live_session()


def test_the_bound_resource_is_asked_for_again() -> None:
    session, _, _ = live_session()
    session._bound(
        b"<success xmlns='urn:xmpp:sasl:2'><authorization-identifier>u00003@bench.local/"
        b"storm/Ab3x</authorization-identifier></success>"
    )
    assert session.resource == b"storm/Ab3x"
    session._bound(
        b"<iq type='result' id='bind1'><bind><jid>u00003@bench.local/r2</jid></bind></iq>"
    )
    assert session.resource == b"r2"
