"""Federation (server-to-server, RFC 6120): DNS, dialback keys, certificate checks,
policies and the outgoing links that make up the router's default route. The s2s
streams themselves are kinds of the stream machine (:mod:`xmppd.stream.s2s`)."""
