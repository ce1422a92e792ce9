"""connstats probe: the TC classifier, its loader and the map poller.

Importing this package does not import bcc; only ``connstats.probe.kernel.loader`` does.
"""
