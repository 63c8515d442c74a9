"""Names of the cluster's Redis keys (docs/architecture.md lists what each holds)."""

from __future__ import annotations


class Keys:
    """Every key starts with ``[cluster] key_prefix``."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def sessions(self, bare: str) -> str:
        """Hash: resource → ``<stream id>\\0<signed record>`` of an account's sessions."""
        return f"{self.prefix}:sess:{bare}"

    def sessions_pattern(self) -> str:
        return f"{self.prefix}:sess:*"

    def session_log(self) -> str:
        """Stream of session changes every node tails to keep its view current."""
        return f"{self.prefix}:sesslog"

    def nodes(self) -> str:
        """Hash: node name → what it told about itself (JSON), while it is a member."""
        return f"{self.prefix}:nodes"

    def heartbeat(self, node: str) -> str:
        """The node's liveness: expires ``node_timeout`` after its last renewal."""
        return f"{self.prefix}:alive:{node}"

    def node_sessions(self, node: str) -> str:
        """Set of the full JIDs a node has bound (what survivors remove when it dies)."""
        return f"{self.prefix}:nodesess:{node}"

    def inbox(self, node: str) -> str:
        """Stream of stanzas and session operations for a node's sessions and services.
        (The braces make it and :meth:`reaped_inbox` one Redis Cluster slot.)"""
        return f"{self.prefix}:in:{{{node}}}"

    def reaped_inbox(self, node: str) -> str:
        """A dead node's inbox, renamed atomically by the survivor that empties it."""
        return f"{self.prefix}:in:{{{node}}}:reaped"

    def listing(self, node: str) -> str:
        """Hash: what a node holds and lists for everyone (``<kind>\\0<key>`` → value:
        its temporary public rooms), removed with the node."""
        return f"{self.prefix}:list:{node}"

    def reaping(self, node: str) -> str:
        """Lock: one survivor cleans up after a dead node."""
        return f"{self.prefix}:reap:{node}"

    def resumption(self, sm_id: str) -> str:
        """The node holding a resumable stream-management session (XEP-0198)."""
        return f"{self.prefix}:sm:{sm_id}"

    def sm_mirror(self, sm_id: str) -> str:
        """Hash: a resumable session's stream-management copy (signed Handover ``r``,
        counters ``i``/``a``, holder ``n``, bare JID ``j``, last inbox entry queued
        from each node ``x:<node>``). Braces: one Redis Cluster slot with its queue."""
        return f"{self.prefix}:smr:{{{sm_id}}}"

    def sm_queue(self, sm_id: str) -> str:
        """List: the session's unacknowledged stanzas, oldest first."""
        return f"{self.prefix}:smq:{{{sm_id}}}"

    def node_mirrors(self, node: str) -> str:
        """Set of the resumption ids a node mirrors (what a survivor adopts)."""
        return f"{self.prefix}:nodesm:{node}"

    def components(self) -> str:
        """Hash: component domain → the node it is connected to (XEP-0114)."""
        return f"{self.prefix}:components"

    def secret(self) -> str:
        return f"{self.prefix}:secret"
