"""The probe's kernel half as one object, and the loop that turns intervals into messages.

    load classifier (maps pinned per state directory) ─ adopt the devices and the
    pending interval of the probe before ─ attach devices ─┐
        └─ every interval: poll (flip [and the enrichers' tables], grace, read) ─
           [enrichers: name the processes, join the quality tables] ─
           publish(batch) until durable ─ commit (empty the read buffer)
    on stop: [detach,] one last poll, publish, commit; --on-exit keep leaves the filters
    and the pinned maps counting for the next start, detach removes both
"""
from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable, Protocol, Sequence

import numpy as np

from ..contract.errors import ConfigError, ConnstatsError
from ..contract.flow_batch import FlowBatch
from ..contract.record import NO_OWNER, Envelope, Owner
from ..policy.tables import PolicyTables
from ..runtime.memory import drop_compiler_pages, release_freed_memory
from .devices import AttachedDevice, DeviceRegistry, FilterLoss
from .handover import OldLayout, read_old_layout
from .leftovers import attached_in_pins
from .loader import DEFAULT_CAPACITY, FLOW4_KEY, FLOW_COUNTERS, FLOW_KEY, load_classifier, wait_for_grace_period
from .ownership import DEFAULT_LOCK_DIR, DeviceLocks
from .pins import PinnedInstance, ProbeLock, ensure_bpffs, layout_name, remove_pins
from .poller import DrainedInterval, MapPoller, MapRead

log = logging.getLogger("connstats.probe")

Publish = Callable[[FlowBatch], Awaitable[None]]


@dataclass
class ProbeSettings:
    ifaces: list[str] = field(default_factory=list)
    interval: float = 10.0
    capacity: int = DEFAULT_CAPACITY
    direction: str = "auto"
    host: str = field(default_factory=socket.gethostname)
    device_locks: str = DEFAULT_LOCK_DIR  # one flock per attached device (ownership.py)
    state_dir: Path | None = None  # pins the maps per state directory; None: no pins
    on_exit: str = "detach"  # "keep": leave filters and pinned maps counting for the next start

    def __post_init__(self) -> None:
        if self.on_exit not in ON_EXIT:
            raise ConfigError(f"--on-exit {self.on_exit!r} is not one of {', '.join(ON_EXIT)}")
        if self.on_exit == "keep" and self.state_dir is None:
            raise ConfigError("--on-exit keep needs a state directory to pin the maps in")


ON_EXIT = ("keep", "detach")
_DOING = {"processes": "naming processes", "quality": "joining the quality tables"}


class Enricher(Protocol):
    """Fills optional columns of each drained interval from tables of its own: the process
    names (identity/naming.py ``ProcessNamer``), the quality (quality/enricher.py
    ``QualityEnricher``). A failing step costs only its columns (``KernelProbe.failures``).

    attached/forget: a device was attached / its last interval is drained
    flip:            at the classifier's flip, before the grace period (tables that flip too)
    enrich:          the drained batch (made from ``keys``, FLOW_KEY) with its columns
    sweep:           after each poll: forget what the interval no longer needs
    """

    @property
    def kind(self) -> str:
        """What it fills, for logs and metrics: "processes", "quality"."""
        ...

    def attached(self, device: AttachedDevice) -> None: ...

    def forget(self, ifindex: int) -> None: ...

    def flip(self) -> None: ...

    def enrich(self, batch: FlowBatch, keys: np.ndarray) -> FlowBatch: ...

    def sweep(self) -> int: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class PollReport:
    """The last ``poll()``: its map read (interval, drain time, entries), the whole poll's
    time (flip, grace period, read, batch), and the maps' capacity (per family)."""

    read: MapRead
    seconds: float
    capacity: int


def map_layout(capacity: int) -> str:
    """The name of the maps' shapes: another layout means other maps (see pins.py)."""
    return layout_name(FLOW4_KEY.descr, FLOW_KEY.descr, FLOW_COUNTERS.descr, capacity, "state-v1",
                       "policy-v1")


class KernelProbe:
    """Classifier, attached devices and poller.

    Its methods block (netlink, map syscalls), so the daemon calls them in worker
    threads; one lock keeps attach, detach and poll from interleaving.
    """

    def __init__(self, settings: ProbeSettings, *enrichers: Enricher) -> None:
        self.settings = settings
        self.enrichers: Sequence[Enricher] = enrichers  # in order; ours to close from here on
        self.failures: dict[str, int] = {e.kind: 0 for e in enrichers}  # failed steps per kind
        try:
            self.pins, self._probe_lock, pin_dir = self._take_pins(settings)
        except BaseException:
            self._close_enrichers()
            raise
        try:
            self.program = load_classifier(settings.capacity, pin_dir=pin_dir)
        except BaseException:
            self._release_pins(remove=False)
            self._close_enrichers()
            raise
        # every BPF program is loaded (the enrichers' before): what clang and LLVM freed, and
        # their code's pages, go back (runtime/memory.py)
        self.released_kib = release_freed_memory(), drop_compiler_pages()
        log.debug("loaded the BPF programs; released %d KiB the compilers freed and %d KiB of their code",
                  *self.released_kib)
        self.devices = DeviceRegistry(self.program, DeviceLocks(settings.device_locks))
        self.policy = PolicyTables(self.program)  # the policy service's way into the kernel
        self.poller = MapPoller(self.program)
        self.boot_id = self.poller.instance  # the same across restarts: message ids repeat
        # ifindex -> (container_id, container_name, container_image), kept after detach
        # so the final drain of a device that went away is still labelled.
        self.owners: dict[int, Owner] = {}
        self._released: set[int] = set()  # detached; forget names and owners after one more drain
        self._lock = threading.Lock()
        self.last_poll: PollReport | None = None

    def enricher(self, kind: str) -> Enricher | None:
        """The enricher of that kind, if the probe runs one."""
        return next((e for e in self.enrichers if e.kind == kind), None)

    @property
    def naming_failures(self) -> int:
        return self.failures.get("processes", 0)

    @staticmethod
    def _take_pins(settings: ProbeSettings):
        if settings.state_dir is None:
            return None, None, None
        ensure_bpffs()
        pins = PinnedInstance.for_state_dir(settings.state_dir)
        lock = ProbeLock(pins, settings.state_dir)
        lock.acquire()
        pin_dir = pins.layout_dir(map_layout(settings.capacity))
        try:
            pin_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            lock.release()
            raise ConfigError(f"cannot create {pin_dir} in bpffs: {exc.strerror}; run as root") from exc
        return pins, lock, pin_dir

    def _release_pins(self, remove: bool) -> None:
        if self.pins is not None and remove:
            self.pins.remove()
        if self._probe_lock is not None:
            self._probe_lock.release()

    def adopt(self, marked: dict[int, str] | None = None) -> list[AttachedDevice]:
        """Attach again, replacing the program in place, every device that the probe before
        this one left attached and that still exists; forget the others."""
        adopted = []
        for ifindex, mode in self.devices.previously_attached(marked).items():
            try:
                adopted.append(self.attach(ifindex, mode))
            except ConnstatsError as exc:
                self.devices.forget_config(ifindex)
                log.info("not adopting ifindex %d from the previous probe: %s", ifindex, exc)
        return adopted

    def take_over_old_layouts(self) -> list[tuple[OldLayout, list[tuple[Envelope, FlowBatch]]]]:
        """Adopt the devices of older map layouts, then read their maps (see handover.py);
        per old layout, the intervals to publish before ``retire`` unpins it."""
        if self.pins is None:
            return []
        olds = [path for path in self.pins.layouts() if path != self.program.pin_dir]
        for path in olds:
            self.adopt(attached_in_pins(path))
        if not olds:
            return []
        wait_for_grace_period()  # no program of the old layout runs any more
        wall, mono = time.time_ns(), time.monotonic_ns()
        taken = []
        for path in olds:
            old = read_old_layout(path, wall, mono)
            with self._lock:
                messages = [(self.envelope(i, old.instance), self._records(i)) for i in old.intervals]
            taken.append((old, messages))
        return taken

    def retire(self, old: OldLayout) -> None:
        """Its counts are durable (or reported lost): unpin the old layout."""
        remove_pins(old.path)

    def recover(self) -> FlowBatch | None:
        """The interval the probe before this one counted and did not store, if any."""
        with self._lock:
            interval = self.poller.recover()
            if interval is None:
                return None
            batch = self._records(interval)
        log.info("recovered interval %d from the previous probe", interval.seq)
        _log_interval(interval)
        return batch

    def commit(self) -> None:
        """The last polled interval is durable: empty its buffer."""
        with self._lock:
            self.poller.commit()

    def attach(self, name: str | int, mode: str | None = None,
               owner: Owner | None = None) -> AttachedDevice:
        """Attach; ``owner`` names the records from the first packet on."""
        with self._lock:
            device = self.devices.attach(name, mode or self.settings.direction)
            self._released.discard(device.ifindex)
            if owner is not None and owner != NO_OWNER:
                self.owners[device.ifindex] = owner
            elif owner is not None:  # nobody behind it (any more): drop an old owner
                self.owners.pop(device.ifindex, None)
        for enricher in self.enrichers:  # reads /proc, netlink: not under the lock the poll waits for
            self._safely(enricher, enricher.attached, device)
        log.info("attached %s (ifindex %d, %s, direction %s)", device.name, device.ifindex,
                 device.link.kind or "device", "inverted" if device.inverted else "normal")
        return device

    def label(self, ifindex: int, owner: Owner) -> None:
        """Name ``ifindex``'s owner unless it is named already (a device attached by
        somebody else, then found to be a container's or a namespace's)."""
        if owner == NO_OWNER:
            return
        with self._lock:
            self.owners.setdefault(ifindex, owner)

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

    def poll(self) -> FlowBatch:
        started = time.perf_counter()
        with self._lock:
            interval = self.poller.poll(on_flip=self._flip)
            batch = self._records(interval)
            for enricher in self.enrichers:
                self._safely(enricher, enricher.sweep)
            self._forget_released()
        self.last_poll = PollReport(self.poller.last_read, time.perf_counter() - started,
                                    self.settings.capacity)
        _log_interval(interval)
        return batch

    def _flip(self) -> None:
        """At the classifier's flip: the enrichers' tables flip with it."""
        for enricher in self.enrichers:
            self._safely(enricher, enricher.flip)

    def _forget_released(self) -> None:
        """Devices detached before this drain have had their last counts enriched: forget them."""
        for ifindex in self._released:
            self.devices.forget_name(ifindex)
            self.owners.pop(ifindex, None)
            for enricher in self.enrichers:
                self._safely(enricher, enricher.forget, ifindex)
        self._released.clear()

    def peek(self) -> FlowBatch:
        """The current, not yet published interval's counters."""
        with self._lock:
            return self._records(self.poller.peek())

    def _records(self, interval: DrainedInterval) -> FlowBatch:
        """The interval as one batch of columns (its envelope: this probe's), filled by each
        enricher in turn."""
        batch = interval.batch(self.envelope(interval), self.devices.names(), self.owners)
        for enricher in self.enrichers:
            enriched = self._safely(enricher, enricher.enrich, batch, interval.keys)
            batch = batch if enriched is None else enriched
        return batch

    def _safely(self, enricher: Enricher, step, *args):
        """An enricher's step; its failure is logged and costs only its columns (None)."""
        try:
            return step(*args)
        except Exception as exc:  # noqa: BLE001 (the interval goes out without them rather than not at all)
            self.failures[enricher.kind] = self.failures.get(enricher.kind, 0) + 1
            log.warning("%s failed (%s): %s", _DOING.get(enricher.kind, enricher.kind),
                        getattr(step, "__name__", step), exc)
            return None

    def _close_enrichers(self) -> None:
        for enricher in self.enrichers:
            try:
                enricher.close()
            except Exception as exc:  # noqa: BLE001 (one that fails to close does not keep the rest open)
                log.warning("closing the %s enricher failed: %s", enricher.kind, exc)

    def envelope(self, interval: DrainedInterval, boot_id: str | None = None) -> Envelope:
        return Envelope(
            host=self.settings.host, boot_id=boot_id or self.boot_id, interval_seq=interval.seq,
            interval_start=interval.start_ns, interval_end=interval.end_ns,
            overflow=interval.overflow_counts(self.devices.names()),
        )

    @property
    def keeps_counting(self) -> bool:
        return self.settings.on_exit == "keep"

    def finish(self) -> FlowBatch:
        """The last interval: detach first (unless keeping), so nothing counted is left behind."""
        if not self.keeps_counting:
            with self._lock:
                self.devices.detach_all()
        return self.poll()

    def close(self) -> None:
        """Release the program; with ``on_exit`` detach, also unpin the maps."""
        if not self.keeps_counting:
            with self._lock:
                self.devices.detach_all()
        # An interval that was polled and not committed stays pinned for the next start;
        # maps that nothing counts into and that hold nothing (a probe that failed to
        # start) are not worth keeping.
        idle = not self.devices.devices() and not len(self.poller.peek())
        remove = not self.poller.pending and (not self.keeps_counting or idle)
        self.devices.close()
        self.program.close()
        self._close_enrichers()
        self._release_pins(remove)


async def poll_forever(probe: KernelProbe, publish: Publish, stop: asyncio.Event) -> None:
    """Poll every interval until ``stop`` is set, then publish the final partial interval.

    ``publish`` returns once the interval is durable; only then is its buffer emptied.
    """
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
        await publish(await asyncio.to_thread(probe.poll))
        await asyncio.to_thread(probe.commit)
    await publish(await asyncio.to_thread(probe.finish))
    await asyncio.to_thread(probe.commit)


async def publish_recovered(probe: KernelProbe, publish: Publish) -> list[OldLayout]:
    """Publish what the probes before this one left: the pending interval of our layout
    (then commit it), and every count in older layouts (then unpin them). Returns the
    old layouts, whose ``lost_*`` say what could not be read."""
    pending = await asyncio.to_thread(probe.recover)
    if pending is not None:
        await publish(pending)
        await asyncio.to_thread(probe.commit)
    olds = []
    for old, intervals in await asyncio.to_thread(probe.take_over_old_layouts):
        for envelope, batch in intervals:
            await publish(batch.with_envelope(envelope))
        if old.lost_entries:
            log.warning("the maps of the previous probe's layout %s have a shape this version cannot "
                        "read: %d connections (%d packets, %d bytes) were given up", old.path.name,
                        old.lost_entries, old.lost_packets, old.lost_bytes)
        await asyncio.to_thread(probe.retire, old)
        olds.append(old)
    return olds


def _log_interval(interval: DrainedInterval) -> None:
    """One line per interval, summed from the drained arrays (no pass over the records)."""
    lost = sum(o[2] for o in interval.overflow)
    log.info("interval %d: %d connections, %d packets, %d bytes%s", interval.seq, len(interval),
             int(interval.values["packets"].sum()), int(interval.values["bytes"].sum()),
             f", {lost} packets over capacity" if lost else "")
