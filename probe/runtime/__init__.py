"""The runtime every connstats process shares (probe, sink, alerts, web page, CLI).

    telemetry.py   the Prometheus registry, /metrics, /healthz, /readyz; its listener
    listener.py    ADDR:PORT settings, one way to listen, who may call by Host and Origin
    callers.py     who is calling: the kernel's peer uid, the group, the token file
    lifecycle.py   stop on SIGINT/SIGTERM
    backoff.py     retry delays
    private.py     files and directories only root may read
    durations.py   15m, 1h30m, 0.5s -> nanoseconds: the one duration parser

It imports nothing of connstats but ``connstats.probe.contract`` (its errors).
"""
