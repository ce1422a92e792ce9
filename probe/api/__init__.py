"""How others ask the probe: the HTTP API (http.py) on its totals since attach (totals.py,
key_index.py), the control plane on NATS (control.py), and the probe's self-metrics (metrics.py)."""
