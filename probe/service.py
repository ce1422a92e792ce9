"""The probe's kernel half as one object, and the loop that turns intervals into messages.

    load classifier ─ attach devices ─┐
                                      └─ every interval: poll (flip, grace, drain)
                                           └─ records ─ publish(envelope, records)
    on stop: detach, then one last drain, so no counted packet is left behind
"""
from __future__ import annotations

import asyncio
import logging
import socket
import threading
import uuid
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Sequence

from .devices import AttachedDevice, DeviceRegistry, FilterLoss
from .kernel import DEFAULT_CAPACITY, load_classifier
from .ownership import DEFAULT_LOCK_DIR, DeviceLocks
from .poller import DrainedInterval, MapPoller
from .record import Envelope, FlowRecord

log = logging.getLogger("connstats.probe")

Publish = Callable[[Envelope, Sequence[FlowRecord]], Awaitable[None]]


@dataclass
class ProbeSettings:
    ifaces: list[str] = field(default_factory=list)
    interval: float = 10.0
    capacity: int = DEFAULT_CAPACITY
    direction: str = "auto"
    host: str = field(default_factory=socket.gethostname)
    device_locks: str = DEFAULT_LOCK_DIR  # one flock per attached device (ownership.py)


class KernelProbe:
    """Classifier, attached devices and poller.

    Its methods block (netlink, map syscalls), so the daemon calls them in worker
    threads; one lock keeps attach, detach and poll from interleaving.
    """

    def __init__(self, settings: ProbeSettings) -> None:
        self.settings = settings
        self.boot_id = uuid.uuid4().hex[:12]
        self.program = load_classifier(settings.capacity)
        self.devices = DeviceRegistry(self.program, DeviceLocks(settings.device_locks))
        self.poller = MapPoller(self.program)
        # ifindex -> (container_id, container_name, container_image), kept after detach
        # so the final drain of a device that went away is still labelled.
        self.labels: dict[int, tuple[str, str, str]] = {}
        self._released: set[int] = set()  # detached; forget names and labels after one more drain
        self._lock = threading.Lock()

    def attach(self, name: str | int, mode: str | None = None,
               labels: tuple[str, str, str] | None = None) -> AttachedDevice:
        """Attach; ``labels`` (container id, name, image) apply from the first packet on."""
        with self._lock:
            device = self.devices.attach(name, mode or self.settings.direction)
            self._released.discard(device.ifindex)
            if labels is not None and any(labels):
                self.labels[device.ifindex] = labels
            elif labels is not None:  # nobody behind it (any more): drop an old owner's labels
                self.labels.pop(device.ifindex, None)
        log.info("attached %s (ifindex %d, %s, direction %s)", device.name, device.ifindex,
                 device.link.kind or "device", "inverted" if device.inverted else "normal")
        return device

    def detach(self, name: str | int) -> AttachedDevice:
        with self._lock:
            device = self.devices.detach(name)
            self._released.add(device.ifindex)
        log.info("detached %s (ifindex %d)", device.name, device.ifindex)
        return device

    def check_filters(self) -> list[FilterLoss]:
        """Release devices whose filter someone else replaced or removed (theirs stays).

        The filter dumps run without the lock (200 devices: ~0.1 s); only devices that
        look lost are looked at again, and released, under it."""
        with self._lock:
            devices = self.devices.devices()
        suspects = self.devices.suspects(devices)
        if not suspects:
            return []
        with self._lock:
            lost = self.devices.check_filters(suspects)
            self._released.update(loss.device.ifindex for loss in lost)
        return lost

    def poll(self) -> tuple[Envelope, list[FlowRecord]]:
        with self._lock:
            interval = self.poller.poll()
            envelope, records = self.envelope(interval), self._records(interval)
            self._forget_released()
        _log_interval(interval)
        return envelope, records

    def _forget_released(self) -> None:
        """Devices detached before this drain have had their last counts labelled: forget them."""
        for ifindex in self._released:
            self.devices.forget_name(ifindex)
            self.labels.pop(ifindex, None)
        self._released.clear()

    def peek(self) -> list[FlowRecord]:
        """The current, not yet published interval's counters."""
        with self._lock:
            return self._records(self.poller.peek())

    def _records(self, interval: DrainedInterval) -> list[FlowRecord]:
        return interval.records(self.devices.names(), self.labels)

    def envelope(self, interval: DrainedInterval) -> Envelope:
        return Envelope(
            host=self.settings.host, boot_id=self.boot_id, interval_seq=interval.seq,
            interval_start=interval.start_ns, interval_end=interval.end_ns,
            overflow=interval.overflow_counts(self.devices.names()),
        )

    def close(self) -> tuple[Envelope, list[FlowRecord]]:
        """Detach everywhere, then drain the last partial interval (nothing counted is lost)."""
        with self._lock:
            self.devices.detach_all()
        last = self.poll()
        self.devices.close()
        self.program.close()
        return last


async def poll_forever(probe: KernelProbe, publish: Publish, stop: asyncio.Event) -> None:
    """Poll every interval until ``stop`` is set; then publish the final partial interval."""
    loop = asyncio.get_running_loop()
    next_tick = loop.time() + probe.settings.interval
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=max(0.0, next_tick - loop.time()))
        except asyncio.TimeoutError:
            pass
        if stop.is_set():
            break
        next_tick += probe.settings.interval
        envelope, records = await asyncio.to_thread(probe.poll)
        await publish(envelope, records)
    envelope, records = await asyncio.to_thread(probe.close)
    await publish(envelope, records)


def _log_interval(interval: DrainedInterval) -> None:
    """One line per interval, summed from the drained arrays (no pass over the records)."""
    lost = sum(o[2] for o in interval.overflow)
    log.info("interval %d: %d connections, %d packets, %d bytes%s", interval.seq, len(interval),
             int(interval.values["packets"].sum()), int(interval.values["bytes"].sum()),
             f", {lost} packets over capacity" if lost else "")
