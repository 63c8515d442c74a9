"""XEP-0060 namespaces and the limits PEP and the PubSub service share."""

from __future__ import annotations

from typing import Final

NS_PUBSUB: Final = "http://jabber.org/protocol/pubsub"
NS_OWNER: Final = "http://jabber.org/protocol/pubsub#owner"
NS_EVENT: Final = "http://jabber.org/protocol/pubsub#event"
NS_ERRORS: Final = "http://jabber.org/protocol/pubsub#errors"
NS_PUBLISH_OPTIONS: Final = "http://jabber.org/protocol/pubsub#publish-options"
NS_NODE_CONFIG: Final = "http://jabber.org/protocol/pubsub#node_config"
NS_SUBSCRIBE_OPTIONS: Final = "http://jabber.org/protocol/pubsub#subscribe_options"

MAX_NAME_BYTES: Final = 512
"""Longest node name and item id (UTF-8 bytes): with the host and owner they must fit
in one primary-key index entry on PostgreSQL (about 2.7 KB)."""
RESULT_BYTES: Final = 1024 * 1024
"""Payload bytes an items result carries at most (the newest items first; at least one)."""
NODE_CACHE: Final = 4096
"""Owners whose node configurations are kept in memory (least recently used dropped)."""
