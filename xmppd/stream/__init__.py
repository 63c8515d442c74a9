"""XMPP streams: the restricted XML reader and the stream state machines (no I/O)."""
