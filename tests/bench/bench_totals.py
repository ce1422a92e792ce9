"""The HTTP API's since-attach totals: CPU per full interval of 131,072 connections.

The same batches (built with ``FlowBatch.from_arrays`` from arrays shaped like a drained
flow map, as the probe publishes them) go through, side by side:

  dict     a Python dict entry per connection, updated row by row from ``batch.rows``:
           what ``ConnectionTotals`` did before it went column-wise (reproduced here)
  columns  ``ConnectionTotals``: packed keys, a hash index, numpy counters

The first interval creates every connection; the later ones add to them (the steady state).
CPU seconds of this process (``resource.getrusage``), best of the rounds. No root needed.

    .venv/bin/python tests/bench/bench_totals.py
"""
import resource
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from connstats.probe.api.totals import ConnectionTotals  # noqa: E402
from connstats.probe.contract.flow_batch import FlowBatch  # noqa: E402
from connstats.probe.contract.record import Envelope  # noqa: E402
from connstats.probe.kernel.loader import FLOW_COUNTERS, FLOW_KEY  # noqa: E402

CONNECTIONS = 131_072
INTERVALS = 4  # the first creates the connections, the others add to them
ROUNDS = 3
WALL = 1_790_000_000 * 10**9
SECOND = 10**9


def drained_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Keys and counters as ``MapPoller`` reads them: one device, 131,072 UDP connections."""
    i = np.arange(CONNECTIONS)
    keys = np.zeros(CONNECTIONS, dtype=FLOW_KEY)
    keys["ifindex"], keys["direction"], keys["family"], keys["proto"] = 7, i & 1, 4, 17
    src = np.zeros((CONNECTIONS, 16), dtype=np.uint8)
    src[:, 0], src[:, 1], src[:, 2], src[:, 3] = 10, 1, (i >> 8) & 0xFF, i & 0xFF
    keys["src"] = src.view("V16").ravel()
    keys["dst"] = np.frombuffer(bytes([10, 2, 0, 1] + [0] * 12), dtype="V16")[0]
    keys["sport"], keys["dport"] = 1024 + i % 60000, 443
    values = np.zeros(CONNECTIONS, dtype=FLOW_COUNTERS)
    values["packets"], values["bytes"] = i + 1, 1500 * (i + 1)
    values["first_seen_ns"], values["last_seen_ns"], values["tcp_flags"] = 1, 2, 0
    return keys, values


def batches() -> list[FlowBatch]:
    keys, values = drained_arrays()
    out = []
    for seq in range(INTERVALS):
        envelope = Envelope("bench", "b00t", seq, WALL + seq * 10 * SECOND, WALL + (seq + 1) * 10 * SECOND)
        values = values.copy()
        values["first_seen_ns"] += 10 * SECOND
        values["last_seen_ns"] += 10 * SECOND
        out.append(FlowBatch.from_arrays(envelope, keys, values, mono_to_wall_ns=WALL,
                                         ifnames={7: "veth0"}))
    return out


# -- the dict per connection, as ConnectionTotals kept it before (forget and views left out) --

_ROW = ("ifindex", "direction", "proto", "src_ip", "dst_ip", "src_port", "dst_port",
        "ifname", "family", "container_name", "packets", "bytes", "first_seen", "last_seen")


class _Entry:
    __slots__ = ("id", "ifname", "family", "container_name", "packets", "bytes",
                 "first_seen", "last_seen")

    def __init__(self, id: int, row: tuple) -> None:
        self.id = id
        (self.ifname, self.family, self.container_name, self.packets, self.bytes,
         self.first_seen, self.last_seen) = row[7:]


class DictTotals:
    def __init__(self) -> None:
        self.table: dict[tuple, _Entry] = {}

    def __call__(self, batch: FlowBatch) -> None:
        table = self.table
        for row in batch.rows(_ROW):
            key = row[:7]
            entry = table.get(key)
            if entry is None:
                table[key] = _Entry(len(table) + 1, row)
                continue
            entry.packets += row[10]
            entry.bytes += row[11]
            if row[12] < entry.first_seen:
                entry.first_seen = row[12]
            if row[13] > entry.last_seen:
                entry.last_seen = row[13]


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def per_interval(make, intervals: list[FlowBatch]) -> list[float]:
    """CPU seconds of each interval, best of ``ROUNDS`` fresh totals."""
    best = [float("inf")] * len(intervals)
    for _ in range(ROUNDS):
        totals = make()
        for n, batch in enumerate(intervals):
            start = cpu()
            totals(batch)
            best[n] = min(best[n], cpu() - start)
    return best


def same_totals(intervals: list[FlowBatch]) -> None:
    """Both sides agree on every connection's counters (a check, not timed)."""
    reference, totals = DictTotals(), ConnectionTotals()
    for batch in intervals:
        reference(batch)
        totals(batch)
    got = {(t.ifindex, t.direction, t.proto, t.src_ip, t.dst_ip, t.src_port, t.dst_port):
           (t.id, t.packets, t.bytes, t.first_seen, t.last_seen) for t in totals.view()}
    want = {key: (e.id, e.packets, e.bytes, e.first_seen, e.last_seen) for key, e in reference.table.items()}
    assert got == want, "the column-wise totals differ from the dict's"


def main() -> None:
    intervals = batches()
    same_totals(intervals)
    old = per_interval(DictTotals, intervals)
    new = per_interval(ConnectionTotals, intervals)
    print(f"since-attach totals, {CONNECTIONS:,} connections per interval, CPU-s (best of {ROUNDS}):")
    print(f"{'':24}{'dict':>10}{'columns':>10}{'ratio':>8}")
    print(f"{'first interval (new)':24}{old[0]:10.3f}{new[0]:10.3f}{old[0] / new[0]:8.1f}")
    steady_old, steady_new = statistics.median(old[1:]), statistics.median(new[1:])
    print(f"{'later intervals (median)':24}{steady_old:10.3f}{steady_new:10.3f}{steady_old / steady_new:8.1f}")


if __name__ == "__main__":
    main()
