"""The benchmark generator's group chat fast path (``bench/xmpp.py``): every stamped
groupchat copy timed once, however the stream is cut, and presence floods not buffered."""

from __future__ import annotations

from bench.xmpp import Connection, MucRecorder


def _stream(messages: int, presences: int) -> bytes:
    parts: list[bytes] = []
    for i in range(messages):
        parts.append(
            b"<presence from='bench100@conference.bench.local/u%d'><x xmlns='"
            b"http://jabber.org/protocol/muc#user'><item affiliation='none' role="
            b"'participant'/></x></presence>" % i * (presences // messages)
        )
        parts.append(
            b"<message type='groupchat' from='bench100@conference.bench.local/u0' to='u1@"
            b"bench.local/b0'><body>0:7:%d</body><occupant-id xmlns='urn:xmpp:occupant-id:0' "
            b"id='x'/></message>" % (1000 + i)
        )
    return b"".join(parts)


def _feed(data: bytes, size: int) -> tuple[Connection, MucRecorder]:
    conn = Connection()
    rec = MucRecorder()
    conn.muc_rec = rec
    for i in range(0, len(data), size):
        conn.data_received(data[i : i + size])
    return conn, rec


def test_every_copy_is_timed_once_whatever_the_cuts() -> None:
    data = _stream(messages=20, presences=100)
    for size in (1, 2, 7, 64, 333, len(data)):
        conn, rec = _feed(data, size)
        assert len(rec.lat[7]) == 20, size
        assert rec.errors == 0
        assert conn.tail == b"", size


def test_a_presence_flood_is_not_buffered() -> None:
    flood = (
        b"<presence from='r@conference.bench.local/n'><x xmlns='http://jabber.org/protocol/"
        b"muc#user'><item affiliation='none' role='participant'/></x></presence>"
    ) * 5000
    conn, rec = _feed(flood, 4096)
    assert rec.presences == 5000
    assert len(conn.tail) <= 16
    assert rec.lat == {}


def test_error_copies_are_counted() -> None:
    data = (
        b"<message type='error' from='r@conference.bench.local'><body>0:3:5</body>"
        b"<error type='modify'><not-acceptable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
        b"</error></message>"
    )
    _, rec = _feed(data, 10)
    assert rec.errors == 1


class _Wire:
    """What a connection writes back."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


def test_server_pings_are_answered_once_wherever_the_stream_is_cut() -> None:
    """A server that pings idle clients (xmppd: after 5 minutes of silence) gets its
    answer in every mode of the generator, so long runs keep their connections."""
    ping = (
        b"<iq type='get' id='p%d' from='bench.local' to='u1@bench.local/b0'>"
        b"<ping xmlns='urn:xmpp:ping'/></iq>"
    )
    data = _stream(messages=3, presences=30) + ping % 1 + _stream(1, 5) + ping % 2
    for size in (1, 5, 13, 64, 200, len(data)):
        for mode in ("muc", "login"):
            conn = Connection()
            wire = _Wire()
            conn.transport = wire  # type: ignore[assignment]
            if mode == "muc":
                conn.muc_rec = MucRecorder()
            for i in range(0, len(data), size):
                conn.data_received(data[i : i + size])
            assert wire.written == [
                b"<iq type='result' id='p1' to='bench.local'/>",
                b"<iq type='result' id='p2' to='bench.local'/>",
            ], (size, mode)
