"""How far the sink is behind: its durable consumer's backlog, read from JetStream.

    read_backlog(js) ─ consumer info (num_pending, num_ack_pending, ack floor)
                     ─ the oldest flow message not yet acknowledged (one STREAM.MSG.GET):
                       its age is the lag, its interval's length the unit of LagWarning
    SinkMetrics.refresh ─> the gauges, LagWarning.observe ─> a log warning
    connstats list / stats ─> one line under the table

The lag is the age of the oldest flow message the sink has not acknowledged (now minus its
stream timestamp, the server's clock), 0 when nothing waits: how long ago what the sink
stores next was published. It grows with the backlog; a sink that keeps pace shows less
than one interval.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from connstats.probe.contract import FLOWS_WILDCARD, STREAM_NAME, MessageError, decode_message

from .jetstream import DEFAULT_DURABLE

log = logging.getLogger("connstats.sink.backlog")

DEFAULT_LAG_WARNING_INTERVALS = 3  # SinkConfig.lag_warning_intervals, `[sink] lag_warning_intervals`


@dataclass(frozen=True)
class Backlog:
    consumer: str
    pending: int  # stored in the stream, not yet delivered to a sink (num_pending)
    ack_pending: int  # delivered, not yet acknowledged (num_ack_pending)
    lag_seconds: float  # age of the oldest flow message not yet acknowledged; 0 when none
    interval_seconds: float | None = None  # that message's interval length (None: nothing waits)

    @property
    def messages(self) -> int:
        return self.pending + self.ack_pending

    def describe(self) -> str:
        """One line for people: ``sink connstats-sink: 12 messages behind, 4.2 s``."""
        if not self.messages:
            return f"sink {self.consumer}: caught up (0 messages pending)"
        intervals = f", {self.lag_seconds / self.interval_seconds:.1f} intervals" if self.interval_seconds else ""
        return (f"sink {self.consumer}: {self.messages} messages behind ({self.pending} not yet delivered), "
                f"oldest {self.lag_seconds:.1f} s old{intervals}")


async def read_backlog(js: JetStreamContext, durable: str = DEFAULT_DURABLE) -> Backlog | None:
    """The consumer's backlog now; None if there is no such consumer (no sink ever ran).
    NATS errors other than "not found" are raised (``nats.errors.Error``, timeouts)."""
    try:
        info = await js.consumer_info(STREAM_NAME, durable)
    except nats.js.errors.NotFoundError:
        return None
    pending, ack_pending = info.num_pending or 0, info.num_ack_pending or 0
    if not pending + ack_pending:
        return Backlog(durable, 0, 0, 0.0)
    floor = (info.ack_floor.stream_seq or 0) if info.ack_floor is not None else 0
    try:
        oldest = await js.get_msg(STREAM_NAME, seq=floor + 1, subject=FLOWS_WILDCARD, next=True)
    except nats.js.errors.NotFoundError:  # gone meanwhile (acked, or the stream's limits)
        return Backlog(durable, pending, ack_pending, 0.0)
    lag = max(0.0, time.time() - oldest.time.timestamp()) if oldest.time is not None else 0.0
    return Backlog(durable, pending, ack_pending, lag, _interval_seconds(oldest.data))


def _interval_seconds(data: bytes | None) -> float | None:
    try:
        envelope = decode_message(data or b"").envelope
    except MessageError:
        return None
    return (envelope.interval_end - envelope.interval_start) / 1e9 or None


class LagWarning:
    """A warning when the sink is more than ``intervals`` intervals behind, again at most every
    ``repeat`` seconds while it lasts, and one line when it has caught up."""

    def __init__(self, intervals: float = DEFAULT_LAG_WARNING_INTERVALS, repeat: float = 60.0) -> None:
        self.intervals = intervals
        self.repeat = repeat
        self.behind_since: float | None = None  # monotonic, while behind
        self._last_warning = -1e9

    def observe(self, backlog: Backlog) -> None:
        interval = backlog.interval_seconds
        now = time.monotonic()
        if interval and backlog.lag_seconds > self.intervals * interval:
            if self.behind_since is None:
                self.behind_since = now
            if now - self._last_warning >= self.repeat:
                self._last_warning = now
                log.warning("the sink is %.1f intervals behind (%.1f s, %d messages): it stores slower than the "
                            "probes publish and the stream's backlog grows; add sinks, a faster store, or a longer "
                            "--interval (warning above %g intervals: [sink] lag_warning_intervals)",
                            backlog.lag_seconds / interval, backlog.lag_seconds, backlog.messages, self.intervals)
        elif self.behind_since is not None and (not backlog.messages or (interval and backlog.lag_seconds <= interval)):
            log.warning("the sink caught up after %.0f s behind", now - self.behind_since)
            self.behind_since = None
            self._last_warning = -1e9


async def read_backlog_quietly(js: JetStreamContext, durable: str) -> Backlog | None:
    """``read_backlog``, None (and a debug line) on a NATS failure: for the metrics' refresh."""
    try:
        return await read_backlog(js, durable)
    except (nats.errors.Error, asyncio.TimeoutError, OSError) as exc:
        log.debug("reading the sink's backlog failed: %r", exc)
        return None
