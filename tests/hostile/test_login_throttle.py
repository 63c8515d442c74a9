"""Gap 4 of issue 15: failed logins are throttled by their source, with real sockets.

The server answers each failure of a source (an address, an account) in its own slot,
0.25 s apart and more (here capped at ``MAX_DELAY``): parallel connections from one
address share that schedule; a correct password is never held; a login with a valid
account does not clear the address's count.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator

import pytest

from tests.support.rawstream import RawClient
from tests.support.server import XmppdServer, running_server

MAX_DELAY = 0.5
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def throttled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[XmppdServer]:
    with running_server(
        tmp_path_factory.mktemp("throttle"),
        modules={"ping": {}},
        auth={"failures_before_delay": 1, "max_failure_delay": f"{MAX_DELAY}s"},
    ) as srv:
        for user in ("victim", "mallory", "alice", "target"):
            proc = srv.cli("adduser", f"{user}@{srv.domain}", input="right-password\n")
            assert proc.returncode == 0, proc.stderr
        yield srv


def _plain(user: str, password: str) -> str:
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    return f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>"


async def _ready(srv: XmppdServer, local: str = "127.0.0.1") -> RawClient:
    client = RawClient(srv)
    await _connect(client, local)
    return client


async def _connect(client: RawClient, local: str = "127.0.0.1") -> None:
    """Connect, STARTTLS and open the stream; the caller closes ``client`` whatever
    happens (a guesser is cancelled at any point when the attack ends)."""
    client.reader, client.writer = await asyncio.open_connection(
        "127.0.0.1", client.server.starttls_port, local_addr=(local, 0)
    )
    await client.starttls()
    await client.open_stream()


async def _attempt(client: RawClient, user: str, password: str) -> tuple[bool, float]:
    started = time.monotonic()
    client.send(_plain(user, password))
    reply = await client.read_until(b"<success|<failure", timeout=60)
    return b"<success" in reply, time.monotonic() - started


async def _guesser(srv: XmppdServer, user: str, answered: list[float], until: float) -> None:
    while time.monotonic() < until:
        client = RawClient(srv)
        try:
            await _connect(client)
            while time.monotonic() < until:
                ok, _ = await _attempt(client, user, "wrong-guess")
                assert not ok
                answered.append(time.monotonic())
        except (ConnectionError, TimeoutError):
            pass  # closed after MAX_SASL_FAILURES, or by the test's end
        finally:
            await client.close()


async def test_parallel_guessers_share_one_budget_and_a_correct_password_is_not_held(
    throttled: XmppdServer,
) -> None:
    guessers, duration = 20, 4.0
    answered: list[float] = []
    until = time.monotonic() + duration
    attack = [
        asyncio.create_task(_guesser(throttled, f"victim{i % 4}", answered, until))
        for i in range(guessers)
    ]
    await asyncio.sleep(duration / 2)  # the attack is under way (no event to await)
    # A correct password from the same address, during the attack: answered at once.
    client = await _ready(throttled)
    try:
        ok, took = await _attempt(client, "alice", "right-password")
    finally:
        await client.close()
    for task in attack:
        task.cancel()
    await asyncio.gather(*attack, return_exceptions=True)
    assert ok
    assert took < MAX_DELAY, f"a correct password waited {took:.2f} s"
    in_window = [t for t in answered if t <= until]
    # One schedule for the address: after the first free failure, one answer per
    # 0.25 s at the very least apart (0.5 s once the cap is reached); plus the
    # guesses already in flight when the schedule began.
    budget = duration / 0.25 + guessers + 2
    assert len(in_window) <= budget, f"{len(in_window)} guesses answered in {duration} s"


async def test_a_valid_login_does_not_reset_the_address(throttled: XmppdServer) -> None:
    local = "127.0.0.9"  # an address of its own: the other tests' failures do not count
    client = await _ready(throttled, local)
    try:
        for _ in range(3):
            ok, _ = await _attempt(client, "target", "wrong-guess")
            assert not ok
    finally:
        await client.close()
    # mallory logs in with its own valid account from the same address...
    client = await _ready(throttled, local)
    try:
        ok, _ = await _attempt(client, "mallory", "right-password")
        assert ok
    finally:
        await client.close()
    # ...and its next guess on another account is still slowed down.
    client = await _ready(throttled, local)
    try:
        ok, took = await _attempt(client, "target", "wrong-guess")
    finally:
        await client.close()
    assert not ok
    assert took >= 0.2, f"the address's count was reset: answered in {took:.2f} s"


async def test_guessing_one_account_from_many_addresses_is_slowed(
    throttled: XmppdServer,
) -> None:
    answered: list[float] = []
    for n in range(6):  # each from a fresh address: only the account's count grows
        client = await _ready(throttled, f"127.0.1.{n + 1}")
        try:
            ok, took = await _attempt(client, "victim", "wrong-guess")
        finally:
            await client.close()
        assert not ok
        answered.append(took)
    assert answered[0] < 0.2  # the first failure is free
    assert min(answered[2:]) >= 0.2, answered
