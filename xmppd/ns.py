"""XML namespaces used by the core and modules, as ``Final`` constants."""

from __future__ import annotations

from typing import Final

STREAMS: Final = "http://etherx.jabber.org/streams"
CLIENT: Final = "jabber:client"
SERVER: Final = "jabber:server"
COMPONENT: Final = "jabber:component:accept"
XML: Final = "http://www.w3.org/XML/1998/namespace"

STREAM_ERRORS: Final = "urn:ietf:params:xml:ns:xmpp-streams"
STANZA_ERRORS: Final = "urn:ietf:params:xml:ns:xmpp-stanzas"
TLS: Final = "urn:ietf:params:xml:ns:xmpp-tls"
SASL: Final = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND: Final = "urn:ietf:params:xml:ns:xmpp-bind"
SESSION: Final = "urn:ietf:params:xml:ns:xmpp-session"

ROSTER: Final = "jabber:iq:roster"
ROSTER_VER_FEATURE: Final = "urn:xmpp:features:rosterver"
PRESENCE_PREAPPROVAL: Final = "urn:xmpp:features:pre-approval"
DISCO_INFO: Final = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS: Final = "http://jabber.org/protocol/disco#items"
CAPS: Final = "http://jabber.org/protocol/caps"
DATA_FORMS: Final = "jabber:x:data"
PING: Final = "urn:xmpp:ping"
VERSION: Final = "jabber:iq:version"
TIME: Final = "urn:xmpp:time"
LAST: Final = "jabber:iq:last"
REGISTER: Final = "jabber:iq:register"
REGISTER_FEATURE: Final = "http://jabber.org/features/iq-register"
DELAY: Final = "urn:xmpp:delay"
SASL_CB: Final = "urn:xmpp:sasl-cb:0"
SASL2: Final = "urn:xmpp:sasl:2"
BIND2: Final = "urn:xmpp:bind:0"
FAST: Final = "urn:xmpp:fast:0"
PIE: Final = "urn:xmpp:pie:0"
PIE_SCRAM: Final = "urn:xmpp:pie:0#scram"
