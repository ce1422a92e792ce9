"""connstats sink: consumes flow messages from JetStream and stores them."""
