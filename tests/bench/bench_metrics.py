"""What the probe's self-metrics cost per interval, next to what the probe does anyway.

One interval of 131,072 connections on 16 devices, as ``FlowBatch.from_arrays`` makes it
from drained arrays. Timed side by side in the same rounds:
  metrics:  ``ProbeMetrics.add_interval`` (the per-(iface, direction) sums, one numpy
            group-by, plus the histograms), called once per interval before publishing;
            with no policy, and with every record governed (allow/deny judged under
            protect: the second group-by, per verdict and dropped);
  publish:  ``encode_interval`` at a 1 MiB ``max_payload`` (the messages of the interval);
  scrape:   one ``/metrics`` exposition of the probe's registry.
No kernel needed.

    .venv/bin/python tests/bench/bench_metrics.py
"""
import statistics
import time

import numpy as np

from connstats.probe.api.metrics import ProbeMetrics
from connstats.probe.contract.record import Envelope
from connstats.probe.contract.wire import FlowBatch
from connstats.probe.kernel.loader import FLOW_COUNTERS, FLOW_KEY
from connstats.probe.publish.publisher import encode_interval, payload_limit
from connstats.probe.runtime.telemetry import Telemetry
from connstats.probe.seams import ProbeStatus

RECORDS, DEVICES, ROUNDS = 131_072, 16, 7
WALL = 1_790_000_000 * 10**9


class Probe:
    def on_interval(self, listener) -> None:
        self.listener = listener

    def status(self) -> ProbeStatus:
        return ProbeStatus(loaded=True, publisher=None, attached_devices=DEVICES, attach_failures=0, last_poll=None)


def interval(seq: int, governed: bool = False) -> FlowBatch:
    rng = np.random.default_rng(seq)
    keys = np.zeros(RECORDS, dtype=FLOW_KEY)
    keys["ifindex"] = 10 + rng.integers(0, DEVICES, RECORDS)
    keys["direction"] = rng.integers(0, 2, RECORDS)
    keys["family"], keys["proto"] = 4, 6
    keys["sport"], keys["dport"] = np.arange(RECORDS) % 60000, 443
    src = np.zeros((RECORDS, 16), dtype=np.uint8)
    src[:, :4] = rng.integers(0, 256, (RECORDS, 4))
    keys["src"] = src.view("V16").ravel()
    values = np.zeros(RECORDS, dtype=FLOW_COUNTERS)
    values["packets"] = rng.integers(1, 1000, RECORDS)
    values["bytes"] = values["packets"] * 900
    if governed:  # every device governed in protect mode: allow or deny, judged under protect
        values["verdict"] = rng.integers(1, 3, RECORDS)
        values["policy"] = 1 << 3 | 2
    envelope = Envelope("bench", "b00t", seq, WALL, WALL + 10 * 10**9)
    names = {10 + i: f"veth{i:02d}" for i in range(DEVICES)}
    return FlowBatch.from_arrays(envelope, keys, values, mono_to_wall_ns=WALL, ifnames=names)


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main() -> None:
    telemetry = Telemetry()
    probe = Probe()
    collector = ProbeMetrics(probe)  # wired as build_probe wires it
    telemetry.registry.register(collector)
    probe.on_interval(collector.add_interval)
    limit = payload_limit(1 << 20)
    metrics, governed, publish, scrape = [], [], [], []
    for seq in range(ROUNDS):
        batch, judged = interval(seq), interval(seq, governed=True)
        metrics.append(timed(lambda batch=batch: probe.listener(batch)))
        governed.append(timed(lambda judged=judged: probe.listener(judged)))
        publish.append(timed(lambda batch=batch: encode_interval(batch, limit)))
        scrape.append(timed(telemetry.exposition))
    m, g, p, s = (statistics.median(x) * 1000 for x in (metrics, governed, publish, scrape))
    print(f"{RECORDS:,} records on {DEVICES} devices per interval, median of {ROUNDS} rounds")
    print(f"  metrics (add_interval), no policy      {m:8.2f} ms")
    print(f"  metrics (add_interval), all governed   {g:8.2f} ms")
    print(f"  publish (encode_interval)              {p:8.2f} ms")
    print(f"  scrape (/metrics body)                 {s:8.2f} ms")
    print(f"  metrics / publish: {m / p:.3f} (no policy), {g / p:.3f} (all governed)")


if __name__ == "__main__":
    main()
