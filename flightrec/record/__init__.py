"""Recording: topology, forwarder, traffic and the session that ties them together."""
