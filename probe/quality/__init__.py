"""How well: RTT, retransmitted segments and kernel drops per connection, from tracepoints,
joined to the classifier's records at each interval (see tables.py for the shapes)."""
