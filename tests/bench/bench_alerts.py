"""The alert engine: 20 rules on one interval of 131,072 records, against the time the engine
takes to decode that interval's messages, in the same run.

The interval is built like the probe builds one (``FlowBatch.from_arrays``: 8 containers'
veths, 65,536 sources, 1,000 peers, 48 ports, TCP and UDP), encoded into its 1 MiB chunks
as the probe publishes them; then, per round, side by side:

  decode    ``decode_message`` of every chunk (what the engine's consumer does first)
  evaluate  ``AlertEngine.on_interval`` of those chunks with 20 rules of every kind,
            after a first interval (the baselines learned, windows filled)

CPU seconds of this process, best of the rounds. No root needed.

    .venv/bin/python tests/bench/bench_alerts.py
"""
import resource
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from connstats.probe.contract import Envelope, OverflowCount, decode_message  # noqa: E402
from connstats.probe.contract.flow_batch import FlowBatch  # noqa: E402
from connstats.probe.kernel.loader import FLOW_COUNTERS, FLOW_KEY  # noqa: E402
from connstats.probe.publish.publisher import encode_interval, payload_limit  # noqa: E402
from connstats.sink.alerts import AlertEngine  # noqa: E402
from connstats.sink.alerts.rules import parse_rules  # noqa: E402

RECORDS = 131_072
ROUNDS = 5
SECOND = 10**9
WALL = 1_790_000_000 * SECOND
DEVICES = {10 + i: (f"veth{i:07x}", (f"{i:012x}", f"app-{i}", "nginx:1.25")) for i in range(8)}

RULES = [
    {"name": "udp-burst", "kind": "threshold", "metric": "packets", "by": ["ifname", "dst_port"],
     "where": {"proto": "udp", "direction": "egress"}, "window": "30s", "above": 100000},
    {"name": "bytes-per-container", "kind": "threshold", "metric": "bytes", "by": ["container_name"],
     "window": "1m", "above": 10**12},
    {"name": "conns-per-source", "kind": "threshold", "metric": "connections", "by": ["src_ip"],
     "window": "1m", "above": 1000},
    {"name": "peer-port", "kind": "threshold", "metric": "bytes", "by": ["dst_ip", "dst_port"],
     "where": {"direction": "egress"}, "window": "30s", "above": 10**11},
    {"name": "per-host", "kind": "threshold", "metric": "packets", "by": ["host"], "window": "10s", "above": 10**12},
    {"name": "ssh", "kind": "threshold", "metric": "connections", "by": ["container_name", "src_ip"],
     "where": {"dst_port": 22}, "window": "1m", "above": 5},
    {"name": "dns-quiet", "kind": "threshold", "metric": "packets", "by": ["ifname"],
     "where": {"dst_port": 53, "proto": "udp"}, "window": "30s", "below": 1},
    {"name": "tcp-all", "kind": "threshold", "metric": "bytes", "by": [], "where": {"proto": "tcp"},
     "window": "30s", "above": 10**13},
    {"name": "image-traffic", "kind": "threshold", "metric": "bytes", "by": ["container_image", "direction"],
     "window": "1m", "above": 10**13},
    {"name": "ifindex-proto", "kind": "threshold", "metric": "packets", "by": ["ifindex", "proto"],
     "window": "30s", "above": 10**12},
    {"name": "spike-container", "kind": "spike", "metric": "bytes", "by": ["container_name"], "window": "10s",
     "factor": 5},
    {"name": "spike-port", "kind": "spike", "metric": "packets", "by": ["dst_port"], "window": "10s", "factor": 10},
    {"name": "spike-peer", "kind": "spike", "metric": "bytes", "by": ["dst_ip"], "where": {"direction": "egress"},
     "window": "10s", "factor": 10},
    {"name": "new-port", "kind": "new_port", "by": ["container_name"], "where": {"direction": "egress"}},
    {"name": "new-peer", "kind": "new_peer", "by": ["container_name"], "where": {"direction": "egress"}},
    {"name": "new-source", "kind": "new_peer", "by": ["ifname"], "field": "src_ip"},
    {"name": "map-full", "kind": "overflow", "by": ["host", "ifname"]},
    {"name": "map-full-direction", "kind": "overflow", "by": ["direction"], "metric": "bytes"},
    {"name": "silent", "kind": "silent_host", "for": "1m"},
    {"name": "udp-conns", "kind": "threshold", "metric": "connections", "by": ["ifname", "direction"],
     "where": {"proto": "udp"}, "window": "30s", "above": 10**6},
]


def drained_arrays(seq: int) -> tuple[np.ndarray, np.ndarray]:
    i = np.arange(RECORDS)
    keys = np.zeros(RECORDS, dtype=FLOW_KEY)
    keys["ifindex"], keys["direction"], keys["family"] = 10 + i % 8, i & 1, 4
    keys["proto"] = np.where(i % 3 == 0, 17, 6)
    src = np.zeros((RECORDS, 16), dtype=np.uint8)
    src[:, 0], src[:, 1], src[:, 2], src[:, 3] = 10, 1, (i >> 9) & 0xFF, (i >> 1) & 0xFF
    keys["src"] = src.view("V16").ravel()
    dst = np.zeros((RECORDS, 16), dtype=np.uint8)
    dst[:, 0], dst[:, 1], dst[:, 2], dst[:, 3] = 172, 17, (i % 1000) >> 8, (i % 1000) & 0xFF
    keys["dst"] = dst.view("V16").ravel()
    keys["sport"], keys["dport"] = 1024 + i % 60000, np.array([22, 53, 80, 443] + list(range(8000, 8044)))[i % 48]
    values = np.zeros(RECORDS, dtype=FLOW_COUNTERS)
    values["packets"], values["bytes"] = 1 + i % 977, 1387 * (1 + i % 977)
    values["first_seen_ns"], values["last_seen_ns"] = 1, 2
    return keys, values


def interval_messages(seq: int) -> list[bytes]:
    keys, values = drained_arrays(seq)
    envelope = Envelope("bench", "b00t", seq, WALL + seq * 10 * SECOND, WALL + (seq + 1) * 10 * SECOND,
                        overflow=(OverflowCount(10, DEVICES[10][0], "egress", 37, 51800),))
    batch = FlowBatch.from_arrays(envelope, keys, values, mono_to_wall_ns=WALL,
                                  ifnames={k: v[0] for k, v in DEVICES.items()},
                                  labels={k: v[1] for k, v in DEVICES.items()})
    return [payload for _, payload in encode_interval(batch, payload_limit(1024 * 1024))]


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    rules = parse_rules({"rule": RULES})
    assert len(rules) == 20
    warm_up = [decode_message(m) for m in interval_messages(0)]
    messages = interval_messages(1)
    decode_times, evaluate_times = [], []
    for _ in range(ROUNDS):
        engine = AlertEngine(rules, "bench-engine", clock=lambda: WALL + 20 * SECOND)
        engine.on_interval(warm_up)
        start = cpu()
        chunks = [decode_message(m) for m in messages]
        decoded = cpu()
        sent = engine.on_interval(chunks)
        evaluate_times.append(cpu() - decoded)
        decode_times.append(decoded - start)
    assert engine.stats.rule_errors == 0, "a rule failed"
    decode, evaluate = min(decode_times), min(evaluate_times)
    print(f"{len(messages)} messages, {RECORDS} records, {len(rules)} rules, {len(sent)} alerts sent")
    print(f"decode   {decode * 1000:7.1f} ms CPU (best of {ROUNDS})")
    print(f"evaluate {evaluate * 1000:7.1f} ms CPU (best of {ROUNDS})")
    print(f"evaluate / decode = {evaluate / decode:.2f}x (target <= 1x)")


if __name__ == "__main__":
    main()
