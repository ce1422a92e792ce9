"""The probe's self-metrics, read from what the probe keeps anyway (``ProbePort.status``),
plus per-interval sums of the published batches (one vectorised group-by per interval).

    build_probe ─ ProbeMetrics(probe, policy service), then wires it:
        probe.on_interval ──> add_interval(batch): packets and bytes per (iface, direction),
                              overflow included; records per interval; poll and drain times
                              verdicts and drops per (iface, direction[, verdict]);
                              kernel drops per (ifname, reason), retransmits per ifname
        telemetry.registry ─> collect() at scrape time: the sums, map fill, outbox, publisher,
                              NATS reconnects, attached devices, attach failures, the policy
        telemetry /readyz  ─> not_ready() as "probe": classifier loaded and NATS connected

``connstats_packets_total``/``connstats_bytes_total`` count exactly what the published
intervals carry (the records plus the envelope's overflow counts), so they equal the
store's totals for the same intervals.

The policy counters come from the same intervals, in the same group-by: packets and bytes
per (iface, direction, verdict) of the governed records, and those of the deny records
whose verdict the kernel judged under a protect word (the record keeps the word of its
last packet), i.e. dropped. At a mode switch within an interval, a connection's packets
from before the switch count under the mode after it (its verdict is judged again then):
protect -> monitor leaves those dropped packets out of the dropped counter, monitor ->
protect counts the passed ones in; overflow has no verdict. The active policy (mode,
rules, governed devices, violation events, failed applies) is read from the policy
service at scrape time.

The quality counters come from the quality columns and the envelope's drops
(``quality_sums``): ``connstats_drops_total``/``connstats_drop_bytes_total`` per device and
reason count every drop the intervals carry (a record's drops all count under its
``drop_reason``, the most frequent of its interval, since a record names only that one; the
envelope's drops of no record are per reason already), and
``connstats_retransmits_total`` the retransmitted segments per device.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Iterable, NamedTuple, TypeVar

import numpy as np
from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..contract.flow_batch import FlowBatch
from ..contract.record import VERDICTS
from ..policy.tables import MODES
from ..seams import PolicyReport, PolicyReporter, ProbePort, ProbeStatus

log = logging.getLogger("connstats.probe")

FILL_WARNING = 0.8  # of a flow map's capacity
FILL_WARNING_EVERY = 300.0  # seconds between repeated warnings while it stays full
UNATTRIBUTED = "unattributed"  # iface of overflow not even the overflow map could attribute
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LOOKUP_LIMIT = 1 << 20  # ifindexes below this are grouped through a lookup table
RECORD_BUCKETS = (0, 10, 100, 1000, 10_000, 50_000, 100_000, 250_000, 1_000_000)

PROTECT = MODES.index("protect")
ALLOW, DENY = VERDICTS.index("allow"), VERDICTS.index("deny")  # the record's (and kernel's) verdict codes
DROPPED = DENY + 1  # a group kind: deny, judged under protect

Sums = dict[tuple[str, str], list[int]]  # (iface, direction) -> [packets, bytes]
VerdictSums = dict[tuple[str, str, str], list[int]]  # (iface, direction, verdict) -> [packets, bytes]
SumKey = TypeVar("SumKey", tuple[str, str], tuple[str, str, str])  # of Sums, of VerdictSums


class IntervalSums(NamedTuple):
    records: Sums  # packets and bytes per (iface, direction) of the records
    overflow: Sums  # ... of the envelope's overflow counts
    verdicts: VerdictSums  # ... per (iface, direction, verdict) of the governed records
    dropped: Sums  # ... of the deny records judged under protect


def interval_sums(batch: FlowBatch, mode_now: str = "off") -> IntervalSums:
    """The sums of one interval, from one group-by of the records by (device, direction,
    kind: no verdict, allow, deny passed, deny dropped). The mode a record was judged under
    is the kernel's (``batch.judged``); a batch without it counts as judged under ``mode_now``."""
    sums = IntervalSums({}, {}, {}, {})
    if len(batch):
        verdict, mode = judgement(batch, mode_now)
        kind = verdict + ((verdict == DENY) & (mode == PROTECT))
        for iface, direction, k, p, b in _group_sums(batch, kind.astype(np.uint8), 4):
            _add(sums.records, (iface, direction), p, b)
            if k:
                _add(sums.verdicts, (iface, direction, VERDICTS[min(k, DENY)]), p, b)
            if k == DROPPED:
                _add(sums.dropped, (iface, direction), p, b)
    for o in batch.envelope.overflow:
        _add(sums.overflow, (iface_label(o.ifindex, o.ifname), o.direction), o.packets, o.bytes)
    return sums


class QualitySums(NamedTuple):
    drops: dict[tuple[str, str], list[int]]  # (ifname, reason) -> [packets, bytes]
    retransmits: dict[str, int]  # ifname -> retransmitted segments


def quality_sums(batch: FlowBatch) -> QualitySums:
    """Drops per (device, reason) of the records and the envelope's drops, retransmits per
    device, grouped column-wise over the records that have some."""
    sums = QualitySums({}, {})
    names = {d.ifindex: d.ifname for d in batch.devices}
    cols = batch.columns
    ifindex = np.asarray(cols.ifindex, dtype=np.int64)
    if len(batch) and len(cols.drop_packets) == len(batch):
        packets = np.asarray(cols.drop_packets, dtype=np.uint64)
        at = np.flatnonzero(packets)
        reason = np.asarray(cols.drop_reason, dtype=object)[at].astype(str)
        for i, why, p, b in _grouped(ifindex[at], reason, packets[at],
                                     np.asarray(cols.drop_bytes, dtype=np.uint64)[at]):
            _add(sums.drops, (iface_label(i, names.get(i, "")), why), p, b)
    if len(batch) and len(cols.retransmits) == len(batch):
        segments = np.asarray(cols.retransmits, dtype=np.uint64)
        at = np.flatnonzero(segments)
        for i, _, count in _grouped(ifindex[at], np.zeros(len(at), np.uint8), segments[at]):
            label = iface_label(i, names.get(i, ""))
            sums.retransmits[label] = sums.retransmits.get(label, 0) + count
    for d in batch.envelope.drops:
        _add(sums.drops, (iface_label(d.ifindex, d.ifname), d.reason), d.packets, d.bytes)
    return sums


def _grouped(ifindex: np.ndarray, label: np.ndarray, *values: np.ndarray) -> Iterable[tuple[Any, ...]]:
    """(ifindex, label, the sums of ``values``) per distinct (ifindex, label), exact in uint64."""
    devices, device_at = np.unique(ifindex, return_inverse=True)
    labels, label_at = np.unique(label, return_inverse=True)
    groups, group_at = np.unique(device_at.ravel() * len(labels) + label_at.ravel(), return_inverse=True)
    sums = [np.zeros(len(groups), np.uint64) for _ in values]
    for total, value in zip(sums, values, strict=True):
        np.add.at(total, group_at.ravel(), value)
    for g, *totals in zip(groups.tolist(), *(total.tolist() for total in sums), strict=True):
        device, n = divmod(g, len(labels))
        yield (int(devices[device]), labels[n].item(), *totals)


def judgement(batch: FlowBatch, mode_now: str) -> tuple[np.ndarray, np.ndarray]:
    """(verdict as its index in VERDICTS, the mode it was judged under) per record: the
    kernel's numbers when the batch has them, else from the text column and ``mode_now``."""
    if batch.judged is not None:
        return batch.judged["verdict"], batch.judged["mode"]
    text = np.asarray(batch.columns.verdict, dtype=object)
    verdict = (text == "allow") * ALLOW + (text == "deny") * DENY
    return verdict.astype(np.uint8), np.full(len(batch), MODES.index(mode_now), np.uint8)


def _group_sums(batch: FlowBatch, kind: np.ndarray, kinds: int) -> Iterable[tuple[str, str, int, int, int]]:
    """(iface, direction, kind, packets, bytes) per group of the records, each of a ``kind``
    below ``kinds``: one stable sort of small group numbers (a radix sort) and exact uint64
    sums per group."""
    names = {d.ifindex: d.ifname for d in batch.devices}
    cols = batch.columns
    ifindexes, position = _device_positions(np.asarray(cols.ifindex, dtype=np.int64), names)
    egress = np.asarray(cols.direction, dtype=object) == "egress"
    group = (position.astype(np.int64) * 2 + egress) * kinds + kind
    group = group.astype(np.uint16 if len(ifindexes) * 2 * kinds <= 1 << 16 else np.int64)
    order = np.argsort(group, kind="stable")
    sorted_groups = group[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    packets = np.add.reduceat(np.asarray(cols.packets, dtype=np.uint64)[order], starts)
    nbytes = np.add.reduceat(np.asarray(cols.bytes, dtype=np.uint64)[order], starts)
    for g, p, b in zip(sorted_groups[starts].tolist(), packets.tolist(), nbytes.tolist(), strict=True):
        device, k = divmod(g, kinds)
        ifindex = int(ifindexes[device // 2])
        yield iface_label(ifindex, names.get(ifindex, "")), "egress" if device % 2 else "ingress", k, p, b


def _device_positions(ifindex: np.ndarray, names: dict[int, str]) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct ifindexes, sorted; each record's position in them): through a lookup
    table of the batch's devices when they name every record's (they do for a probe's
    batches; ifindexes are small numbers), else found by sorting."""
    known = np.array(sorted(names), dtype=np.int64)
    if len(known) and 0 <= known[0] and known[-1] < LOOKUP_LIMIT and 0 <= ifindex.min() and ifindex.max() <= known[-1]:
        table = np.full(known[-1] + 1, -1, dtype=np.int32)
        table[known] = np.arange(len(known), dtype=np.int32)
        position = table[ifindex]
        if position.min() >= 0:
            return known, position
    return np.unique(ifindex, return_inverse=True)


def iface_label(ifindex: int, ifname: str) -> str:
    if ifname:
        return ifname
    return UNATTRIBUTED if ifindex == 0 else f"ifindex-{ifindex}"


def _add(sums: dict[SumKey, list[int]], key: SumKey, packets: int, nbytes: int) -> None:
    total = sums.setdefault(key, [0, 0])
    total[0] += packets
    total[1] += nbytes


def _add_all(into: dict[SumKey, list[int]], found: dict[SumKey, list[int]]) -> None:
    for key, (packets, nbytes) in found.items():
        _add(into, key, packets, nbytes)


class ProbeMetrics:
    """The collector of one probe; see the module docstring. Making one subscribes it to
    nothing: whoever composes the probe registers it, its readiness and ``add_interval``."""

    def __init__(self, probe: ProbePort, policy: PolicyReporter | None = None) -> None:
        self.probe = probe
        self.policy = policy
        self.traffic: Sums = {}  # records and overflow
        self.overflow: Sums = {}
        self.verdicts: VerdictSums = {}  # governed records
        self.dropped: Sums = {}  # deny records judged under protect
        self.kernel_drops: dict[tuple[str, str], list[int]] = {}  # (ifname, reason) -> [packets, bytes]
        self.retransmits: dict[str, int] = {}  # ifname -> retransmitted segments
        self.intervals = 0
        self._polled_seq = -1
        self._warned_at = {4: -1e9, 6: -1e9}
        # on no registry of their own: collect() yields them with the rest
        self.poll_seconds = Histogram("connstats_poll_duration_seconds", "One poll: flip the buffers, "
                                      "wait for the grace period, drain the flow maps, build the batch",
                                      buckets=DURATION_BUCKETS, registry=None)
        self.drain_seconds = Histogram("connstats_drain_duration_seconds", "The batch read of the flow "
                                       "maps within one poll", buckets=DURATION_BUCKETS, registry=None)
        self.records = Histogram("connstats_interval_records", "Connection records per published interval",
                                 buckets=RECORD_BUCKETS, registry=None)

    # -- per interval --------------------------------------------------------------------

    def add_interval(self, batch: FlowBatch) -> None:
        """Called before each interval is published; a failure here never stops the probe."""
        try:
            self._add(batch)
        except Exception:  # noqa: BLE001 - a bug in the metrics must not cost counts
            log.exception("the self-metrics missed interval %d", batch.envelope.interval_seq)

    def _add(self, batch: FlowBatch) -> None:
        sums = interval_sums(batch, self._policy().mode)
        for into, found in ((self.traffic, sums.records), (self.traffic, sums.overflow),
                            (self.overflow, sums.overflow), (self.dropped, sums.dropped)):
            _add_all(into, found)
        _add_all(self.verdicts, sums.verdicts)
        quality = quality_sums(batch)
        _add_all(self.kernel_drops, quality.drops)
        for ifname, count in quality.retransmits.items():
            self.retransmits[ifname] = self.retransmits.get(ifname, 0) + count
        self.intervals += 1
        self.records.observe(len(batch))
        report = self.probe.status().last_poll
        if report is not None and report.read.seq == batch.envelope.interval_seq != self._polled_seq:
            self._polled_seq = report.read.seq
            self.poll_seconds.observe(report.seconds)
            self.drain_seconds.observe(report.read.seconds)
            self._warn_if_full(4, report.read.entries4, report.capacity)
            self._warn_if_full(6, report.read.entries6, report.capacity)

    def _warn_if_full(self, family: int, entries: int, capacity: int) -> None:
        now = time.monotonic()
        if entries <= FILL_WARNING * capacity or now - self._warned_at[family] < FILL_WARNING_EVERY:
            return
        self._warned_at[family] = now
        log.warning("the IPv%d flow map was %d%% full (%d of %d connections) in the last interval; "
                    "beyond it packets are counted per device only: raise --capacity or shorten --interval",
                    family, 100 * entries // capacity, entries, capacity)

    # -- at scrape time ------------------------------------------------------------------

    def not_ready(self) -> str | None:
        status = self.probe.status()
        if not status.loaded:
            return "the classifier is not loaded yet"
        if status.publisher is None or not status.publisher.connected:
            return "NATS is not connected"
        return None

    def _policy(self) -> PolicyReport:
        return self.policy.report() if self.policy is not None else PolicyReport()

    def collect(self) -> Iterable[Metric]:
        status = self.probe.status()
        yield from _traffic("connstats", self.traffic, "in published intervals, overflow included")
        yield from _traffic("connstats_overflow", self.overflow,
                            "counted per device only because the flow map was full")
        yield _counter("connstats_intervals", "Intervals published", self.intervals)
        yield from _map_fill(status)
        yield from _publisher(status)
        yield _gauge("connstats_attached_devices", "Devices the classifier is attached to", status.attached_devices)
        yield _counter("connstats_attach_failures", "Attach requests that failed", status.attach_failures)
        yield _gauge("connstats_process_naming", "1 while the probe names the processes of connections",
                     int(status.naming_processes))
        yield _counter("connstats_process_naming_failures", "Naming steps that failed (those records went out "
                       "without process names)", status.naming_failures)
        yield from self._quality_metrics(status)
        yield from self._policy_metrics()
        for histogram in (self.poll_seconds, self.drain_seconds, self.records):
            yield from histogram.collect()

    def _quality_metrics(self, status: ProbeStatus) -> Iterable[Metric]:
        packets = CounterMetricFamily("connstats_drops", "Packets the kernel dropped on a watched device, by "
                                      "reason, in published intervals", labels=["ifname", "reason"])
        nbytes = CounterMetricFamily("connstats_drop_bytes", "Their bytes", labels=["ifname", "reason"])
        for key, (p, b) in sorted(self.kernel_drops.items()):
            packets.add_metric(list(key), p)
            nbytes.add_metric(list(key), b)
        retransmits = CounterMetricFamily("connstats_retransmits", "TCP segments retransmitted by the sockets "
                                          "behind a device, in published intervals", labels=["ifname"])
        for ifname, count in sorted(self.retransmits.items()):
            retransmits.add_metric([ifname], count)
        yield from (packets, nbytes, retransmits)
        yield _gauge("connstats_quality", "1 while the probe measures RTT, retransmits and drops",
                     int(status.measuring_quality))
        yield _counter("connstats_quality_failures", "Quality steps that failed (those records went out "
                       "without their quality)", status.quality_failures)
        yield _counter("connstats_quality_sockets_expired", "Socket stats that found no record in two "
                       "intervals, given up", status.quality_sockets_expired)

    def _policy_metrics(self) -> Iterable[Metric]:
        """Verdict and drop counters, 0 for every device and direction counted until seen (so
        a rate has a start), and the active policy read from the policy service."""
        seen = set(self.traffic) | {key[:2] for key in self.verdicts}
        verdicts = {(*key, v): self.verdicts.get((*key, v), [0, 0]) for key in seen for v in VERDICTS[1:]}
        yield from _traffic("connstats_policy", verdicts, "the policy judged, by verdict (governed devices "
                            "only), in published intervals", ("iface", "direction", "verdict"))
        dropped = {key: self.dropped.get(key, [0, 0]) for key in seen}
        yield from _traffic("connstats_policy_dropped", dropped, "judged deny in protect mode: counted, "
                            "then dropped in the kernel")
        report = self._policy()
        yield _gauge("connstats_policy_mode", "The policy mode: 0 off, 1 monitor, 2 protect",
                     MODES.index(report.mode))
        yield _gauge("connstats_policy_rules", "Allow rules in the active policy", report.rules)
        yield _gauge("connstats_policy_groups", "Groups in the active policy", report.groups)
        yield _gauge("connstats_policy_governed_devices", "Attached devices the policy governs",
                     report.governed_devices)
        yield _counter("connstats_policy_violation_events", "Violation events published",
                       report.violation_events)
        yield _counter("connstats_policy_violation_events_failed", "Violation events not published (NATS errors)",
                       report.violation_events_failed)
        yield _counter("connstats_policy_apply_failures", "Policy applies refused or failed (invalid, "
                       "too big for the kernel's tables, or the saved policy at start)", report.apply_failures)


def _traffic(prefix: str, sums: dict[SumKey, list[int]], meaning: str, labels: tuple[str, ...] = ("iface", "direction")) -> Iterable[Metric]:
    packets = CounterMetricFamily(f"{prefix}_packets", f"Packets {meaning}", labels=labels)
    nbytes = CounterMetricFamily(f"{prefix}_bytes", f"Bytes {meaning}", labels=labels)
    for key, (p, b) in sorted(sums.items()):
        packets.add_metric(list(key), p)
        nbytes.add_metric(list(key), b)
    return packets, nbytes


def _map_fill(status: ProbeStatus) -> Iterable[Metric]:
    entries = GaugeMetricFamily("connstats_map_entries", "Connections in the flow map at the last drain",
                                labels=["family"])
    capacity = GaugeMetricFamily("connstats_map_capacity", "Connections the flow map holds", labels=["family"])
    report = status.last_poll
    if report is not None:
        for family, count in (("ipv4", report.read.entries4), ("ipv6", report.read.entries6)):
            entries.add_metric([family], count)
            capacity.add_metric([family], report.capacity)
    return entries, capacity


def _publisher(status: ProbeStatus) -> Iterable[Metric]:
    stats = status.publisher
    value = (lambda name: getattr(stats, name)) if stats is not None else (lambda name: 0)
    yield _counter("connstats_published_messages", "Flow messages JetStream acknowledged",
                   value("published_messages"))
    yield _counter("connstats_published_records", "Records in them", value("published_records"))
    yield _gauge("connstats_outbox_messages", "Flow messages waiting in the outbox", value("outbox_depth"))
    yield _gauge("connstats_outbox_bytes", "Their bytes", value("outbox_bytes"))
    yield _counter("connstats_outbox_dropped_messages", "Messages dropped: the outbox was full",
                   value("dropped_messages"))
    yield _counter("connstats_outbox_dropped_records", "Records in them", value("dropped_records"))
    errors = CounterMetricFamily("connstats_publish_errors", "Publishes sent again (retried) or refused "
                                 "for good (rejected)", labels=["kind"])
    errors.add_metric(["retried"], value("retries"))
    errors.add_metric(["rejected"], value("rejected"))
    yield errors
    yield _counter("connstats_nats_reconnects", "Times the NATS connection came back", value("reconnects"))


def _counter(name: str, documentation: str, value: float) -> Metric:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> Metric:
    return GaugeMetricFamily(name, documentation, value=value)
