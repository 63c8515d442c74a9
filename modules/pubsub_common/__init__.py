"""XEP-0060 parts shared by PEP (``mod_pep``) and the PubSub service (``mod_pubsub``).

Not a module (nothing to enable): the node and item store (each module declares its own
tables with :func:`~xmppd_modules.pubsub_common.store.node_tables`), the node configuration and
its data forms, the ``pubsub#errors`` conditions, and the protocol helpers both speak.
"""
