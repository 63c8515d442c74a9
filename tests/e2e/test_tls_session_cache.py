"""TLS 1.3 sessions leave nothing behind on the server. xmppd issues no session
tickets (``num_tickets = 0`` beside ``OP_NO_TICKET``): with ``OP_NO_TICKET`` alone,
OpenSSL sends *stateful* tickets in TLS 1.3 and keeps every connection's session in
the context's cache, about 1 KiB each, up to 20,480 of them: ``python -m bench soak``
saw RSS grow by ~5 KiB per login and logout until the cache filled."""

from __future__ import annotations

from pathlib import Path

from tests.support.rawstream import RawClient
from tests.support.server import running_server


async def test_no_session_ticket_is_issued(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        for direct in (False, True):
            client = RawClient(server)
            await client.connect(direct_tls=direct)
            if not direct:
                await client.starttls()
            # The features come after the handshake: a ticket would have arrived before.
            await client.open_stream()
            assert client.writer is not None
            sslobj = client.writer.get_extra_info("ssl_object")
            assert sslobj.version() == "TLSv1.3"
            session = sslobj.session
            assert session is None or not session.has_ticket, "a session ticket was issued"
            await client.close()
