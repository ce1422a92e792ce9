"""How others ask the probe: the HTTP API (http.py) on its totals since attach (totals.py,
key_index.py), the control service on NATS (control.py; its client is
``connstats.probe.contract.control``), and the probe's self-metrics (metrics.py)."""
