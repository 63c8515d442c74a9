"""OMEMO (XEP-0384) clients for tests: the slixmpp-omemo plugin with the pieces an
application must supply (storage, trust decisions), and slixmpp clients that use it.

slixmpp-omemo leaves storage to the application. :class:`MemoryStorage` keeps an account's
OMEMO state (identity key, pre-keys, sessions, known devices) in a dict that the test owns,
so a client that logs in again with the same storage is the same OMEMO device. Trust is
"blind trust before verification": every new device is trusted, as the plugin's example
does; the tests are about the server, not about key verification.
"""

from __future__ import annotations

from typing import Any, Final

from omemo.storage import Just, Maybe, Nothing, Storage
from omemo.types import DeviceInformation, JSONType
from slixmpp.plugins import register_plugin
from slixmpp_omemo import XEP_0384

from tests.support.clients import Slix
from tests.support.e2e import ALL_PLUGINS, PASSWORD, manual_subscriptions, take
from tests.support.server import XmppdServer

OLDMEMO: Final = "eu.siacs.conversations.axolotl"
"""OMEMO 0.3: the version slixmpp-omemo 2.x encrypts message bodies with."""
TWOMEMO: Final = "urn:xmpp:omemo:2"
DEVICE_LIST_NODES: Final = (f"{OLDMEMO}.devicelist", f"{TWOMEMO}:devices")
FALLBACK: Final = "This message is OMEMO encrypted (test fallback)."
OMEMO_PLUGINS: Final = (*ALL_PLUGINS, "xep_0004", "xep_0060", "xep_0115", "xep_0163", "xep_0334")


class MemoryStorage(Storage):
    """The plugin's key/value storage, in memory (values are JSON-compatible)."""

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, JSONType] = {}

    async def _load(self, key: str) -> Maybe[JSONType]:
        if key in self.data:
            return Just(self.data[key])
        return Nothing()

    async def _store(self, key: str, value: JSONType) -> None:
        self.data[key] = value

    async def _delete(self, key: str) -> None:
        self.data.pop(key, None)


class OmemoPlugin(XEP_0384):
    """``xep_0384`` with in-memory storage (config ``omemo_storage``) and blind trust."""

    default_config = {"fallback_message": FALLBACK, "omemo_storage": None}

    def plugin_init(self) -> None:
        configured = self.config.get("omemo_storage")
        self._memory: MemoryStorage = configured if configured is not None else MemoryStorage()
        self.blindly_trusted: list[DeviceInformation] = []
        super().plugin_init()

    @property
    def storage(self) -> Storage:
        return self._memory

    @property
    def _btbv_enabled(self) -> bool:
        return True

    async def _devices_blindly_trusted(
        self, blindly_trusted: frozenset[DeviceInformation], identifier: str | None
    ) -> None:
        self.blindly_trusted.extend(blindly_trusted)

    async def _prompt_manual_trust(
        self, manually_trusted: frozenset[DeviceInformation], identifier: str | None
    ) -> None:
        raise AssertionError(f"blind trust should have decided for {manually_trusted}")


register_plugin(OmemoPlugin)


async def omemo_client(
    server: XmppdServer, jid: str, storage: MemoryStorage, *, password: str = PASSWORD
) -> Slix:
    """An available slixmpp client with OMEMO whose device list and bundle are published
    (the plugin does that when the session starts)."""
    client = manual_subscriptions(
        Slix(server, jid, password, plugins=OMEMO_PLUGINS, initial_presence=False)
    )
    client.xmpp.register_plugin("xep_0384", {"omemo_storage": storage})
    await client.start()
    # slixmpp files disco features and the XEP-0115 verification string under the JID
    # the client has at that moment: the plugin declared its +notify interests before
    # binding, under the bare JID, so the caps of the bound JID would lack them (and the
    # server would send no device lists). Declare them again now, then send presence.
    for node in DEVICE_LIST_NODES:
        client.xmpp.plugin["xep_0163"].add_interest(node)
    await client.xmpp.plugin["xep_0115"].update_caps(broadcast=False)
    client.xmpp.send_presence()
    await take(client.presences, lambda p: p["from"] == client.xmpp.boundjid)
    await omemo(client).get_session_manager()
    return client


def omemo(client: Slix) -> Any:
    """The client's OMEMO plugin."""
    plugins: Any = client.xmpp.plugin  # slixmpp types only its own plugins
    return plugins["xep_0384"]
