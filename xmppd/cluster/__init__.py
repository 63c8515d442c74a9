"""Clustering: several xmppd processes (on one machine or many) serving the same hosts,
sharing live sessions through Redis and everything stored through the database.

* :mod:`~xmppd.cluster.registry`: the session registry with a view of every node's
  sessions (the :class:`~xmppd.sessions.SessionRegistry` interface);
* :mod:`~xmppd.cluster.feed`: session records out to Redis and the others' in;
* :mod:`~xmppd.cluster.bus`: the node-to-node stanza bus (a Redis stream per node);
* :mod:`~xmppd.cluster.membership`: heartbeats, live nodes, rendezvous placement;
* :mod:`~xmppd.cluster.writer`: ordered, batched writes that survive a Redis outage;
* :mod:`~xmppd.cluster.node`: the node that assembles them and cleans up after dead
  nodes.
"""
