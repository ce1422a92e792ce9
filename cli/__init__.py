"""connstats command line."""
