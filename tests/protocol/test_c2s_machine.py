"""The c2s stream machine on its own: bytes in, bytes out, no sockets and no ``Server``.

The stream gets its services assembled by hand (as hypercorn's protocol tests give
h11 a bare connection): real accounts in SQLite, a real session registry (both
implementations) and throttle, and a one-host delivery (``OneHost``) standing in for the routing table,
which has its own tests. ``scenario`` runs once in this process and once in a fresh
interpreter, where it also proves that ``xmppd.server`` was never imported.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from tests.support.memtransport import MemoryTransport
from xmppd.auth.accounts import Accounts
from xmppd.auth.throttle import FailedLoginThrottle
from xmppd.config import AuthSection, C2SSection
from xmppd.errors import StanzaError
from xmppd.events import EventBus
from xmppd.jid import JID
from xmppd.module import Scope
from xmppd.sessions import RegistryKind, Session, SessionRegistry, make_registry
from xmppd.stanza import Element
from xmppd.storage.database import Database
from xmppd.stream.c2s import C2S_TRANSITIONS, C2SServices, C2SStream
from xmppd.stream.component import COMPONENT_TRANSITIONS
from xmppd.stream.machine import IllegalTransition, StreamMachine, StreamState

DOMAIN = "example.org"
HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
    b"xmlns:stream='http://etherx.jabber.org/streams' to='example.org' version='1.0'>"
)
REPO = Path(__file__).resolve().parents[2]


class OneHost:
    """One virtual host with no modules, and the router in front of it: stanzas for
    a full JID reach that session, for a bare JID every available one."""

    def __init__(self, sessions: SessionRegistry) -> None:
        self.domain = DOMAIN
        self.jid = JID.parse(DOMAIN)
        self.bus = EventBus(f"host:{DOMAIN}")
        self._sessions = sessions

    async def dispatch_iq(
        self,
        stanza: Element,
        scope: Scope,
        to: JID,
        from_: JID | None,
        origin: Session | None,
    ) -> Element | None:
        raise StanzaError("service-unavailable")

    async def deliver(self, stanza: Element, to: JID, from_: JID, origin: Session | None) -> None:
        if to.resource:
            session = self._sessions.get(to)
            targets = [] if session is None else [session]
        else:
            targets = self._sessions.available(to)
        for session in targets:
            await self._sessions.deliver(session, stanza)

    async def route(self, stanza: Element, origin: Session | None) -> None:
        to, from_ = JID.parse(stanza.get("to", "")), JID.parse(stanza.get("from", ""))
        assert to.domain == DOMAIN, "only one host here"
        await self.deliver(stanza, to, from_, origin)


class Tasks:
    """The background tasks streams start (``resource_unbound``), awaited at the end."""

    def __init__(self) -> None:
        self.running: set[asyncio.Task[None]] = set()

    def __call__(
        self, coro: Coroutine[Any, Any, None], *, name: str | None = None
    ) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.running.add(task)
        return task


def state(stream: StreamMachine) -> StreamState:
    """The stream's state, read afresh (mypy would keep a narrowed one across calls)."""
    return stream.state


def plain(user: str, password: str) -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


async def login(
    services: C2SServices, user: str, password: str, resource: str
) -> tuple[C2SStream, MemoryTransport]:
    """A stream through header, SASL PLAIN (no TLS), restart and bind."""
    t = MemoryTransport()
    stream = C2SStream(services, t, offer_starttls=False)
    assert state(stream) is StreamState.CONNECTED
    stream.data_received(HEADER)
    features = await t.until(b"</stream:features>")
    assert features.startswith(b"<?xml version='1.0'?><stream:stream ")
    assert b"<mechanism>PLAIN</mechanism>" in features
    stream.data_received(
        b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
        + plain(user, password)
        + b"</auth>"
    )
    assert b"<success" in await t.until(b"success")
    assert state(stream) is StreamState.AUTHENTICATED
    assert (stream.is_authenticated, stream.is_bound) == (True, False)
    stream.data_received(HEADER)
    assert b"urn:ietf:params:xml:ns:xmpp-bind" in await t.until(b"</stream:features>")
    stream.data_received(
        b"<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>"
        + resource.encode()
        + b"</resource></bind></iq>"
    )
    bound = await t.until(b"</iq>")
    assert f"<jid>{user}@{DOMAIN}/{resource}</jid>".encode() in bound
    assert state(stream) is StreamState.BOUND
    assert (stream.is_authenticated, stream.is_bound, stream.is_detached) == (True, True, False)
    return stream, t


async def scenario(tmp: Path, registry: RegistryKind) -> None:
    """Login, bind, a message to a second session, a stanza error, a stream error."""
    db = Database(f"sqlite+aiosqlite:///{tmp / 'db.sqlite3'}")
    await db.start()
    try:
        accounts = Accounts(db)
        await accounts.create(JID.parse(f"alice@{DOMAIN}"), "wonderland")
        await accounts.create(JID.parse(f"bob@{DOMAIN}"), "builder")
        sessions = make_registry(registry)
        host = OneHost(sessions)
        tasks = Tasks()
        services = C2SServices(
            c2s=C2SSection(require_encryption=False),
            auth=AuthSection(allow_insecure_plain=True),
            hosts={DOMAIN: host},
            router=host,
            sessions=sessions,
            accounts=accounts,
            throttle=FailedLoginThrottle(),
            start_task=tasks,
            resumable={},
        )
        alice, ta = await login(services, "alice", "wonderland", "phone")
        bob, tb = await login(services, "bob", "builder", "laptop")
        assert sessions.is_online(JID.parse(f"alice@{DOMAIN}"))

        alice.data_received(
            b"<message to='bob@example.org/laptop' type='chat' id='m1'><body>hi</body></message>"
        )
        got = await tb.until(b"</message>")
        assert b'from="alice@example.org/phone"' in got and b"<body>hi</body>" in got

        # A bad address is the sender's stanza error; the stream stays up.
        alice.data_received(b"<message to='a@b@c' id='m2'><body>x</body></message>")
        error = await ta.until(b"</message>")
        assert b'type="error"' in error and b"<jid-malformed" in error
        assert state(alice) is StreamState.BOUND

        # Restricted XML (RFC 6120 §11.1) is a stream error: the stream closes.
        alice.data_received(b"<!-- a comment -->")
        closing = await ta.until(b"</stream:stream>")
        assert closing.startswith(b"<stream:error") and b"<restricted-xml" in closing
        assert ta.closed
        assert state(alice) is StreamState.CLOSED and alice.closed
        assert not alice.is_bound and not alice.is_authenticated
        assert sessions.get(JID.parse(f"alice@{DOMAIN}/phone")) is None
        assert sessions.get(JID.parse(f"bob@{DOMAIN}/laptop")) is not None
        await alice.wait_closed()

        bob.data_received(b"</stream:stream>")
        await tb.until(b"</stream:stream>")
        assert state(bob) is StreamState.CLOSED and tb.closed
        await asyncio.gather(*tasks.running)
    finally:
        await db.close()


@pytest.mark.parametrize("registry", ["memory", "serialised"])
async def test_login_bind_message_and_stream_error_without_a_server(
    tmp_path: Path, registry: RegistryKind
) -> None:
    await scenario(tmp_path, registry)


def test_the_stream_machine_never_imports_the_server(tmp_path: Path) -> None:
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from tests.protocol.test_c2s_machine import scenario\n"
        "asyncio.run(scenario(Path(sys.argv[1]), 'memory'))\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('xmppd'))\n"
        "assert 'xmppd.stream.c2s' in loaded, loaded\n"
        "assert 'xmppd.server' not in loaded, loaded\n"
        "print('ok', len(loaded))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok ")


async def test_an_illegal_transition_raises(tmp_path: Path) -> None:
    services = C2SServices(
        c2s=C2SSection(require_encryption=False),
        auth=AuthSection(),
        hosts={},
        router=OneHost(make_registry("memory")),
        sessions=make_registry("memory"),
        accounts=Accounts(Database(f"sqlite+aiosqlite:///{tmp_path / 'unused.sqlite3'}")),
        throttle=FailedLoginThrottle(),
        start_task=Tasks(),
        resumable={},
    )
    t = MemoryTransport()
    stream = C2SStream(services, t, offer_starttls=False)
    with pytest.raises(IllegalTransition) as raised:
        stream._enter(StreamState.BOUND)  # binding needs authentication first
    assert (raised.value.current, raised.value.new) == (StreamState.CONNECTED, StreamState.BOUND)
    assert state(stream) is StreamState.CONNECTED
    stream.close()
    assert state(stream) is StreamState.CLOSED and t.closed
    with pytest.raises(IllegalTransition):
        stream._enter(StreamState.CONNECTED)  # nothing leaves CLOSED


def test_transition_tables_are_closed_over_their_states() -> None:
    """Every state a table names as a target is a state of that table, and only
    CLOSED is final; the component never binds or detaches."""
    for table in (C2S_TRANSITIONS, COMPONENT_TRANSITIONS):
        for targets in table.values():
            assert targets <= table.keys()
        assert [s for s, targets in table.items() if not targets] == [StreamState.CLOSED]
    assert set(C2S_TRANSITIONS) == set(StreamState)
    assert StreamState.BOUND not in COMPONENT_TRANSITIONS
