"""The probe process at run time: a kernel probe, a publisher, and services around them.

    KernelProbe ── poll every interval ──> FlowPublisher ──> JetStream
         ^                           └──> interval listeners (self-metrics, totals, violations)
         └── attach / detach / list / stats <── control plane (NATS request/reply, HTTP)
                                          <── watchers (netlink links, Docker containers)

``build_probe`` (compose.py) decides which parts and services a probe has and subscribes
the interval and detach listeners (``on_interval``, ``on_detach``); this module runs them. Services (control plane, HTTP API, watchers, guard) are small objects with
``start()`` and ``close()`` that see the daemon only through ``ProbePort`` (seams.py).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from .contract.events import Event, HandoverLost, device_event
from .contract.flow_batch import FlowBatch
from .contract.messaging import NatsOptions
from .contract.record import Owner
from .kernel.devices import AttachedDevice, FilterLoss
from .kernel.kernel_probe import Enricher, KernelProbe, ProbeSettings, poll_forever, publish_recovered
from .policy.tables import PolicyTables
from .publish.publisher import FlowPublisher, PublisherSettings
from .quality.enricher import QualityEnricher
from .seams import DetachListener, ProbePort, ProbeStatus, Service, ServiceFactory  # noqa: F401 (re-exported)

log = logging.getLogger("connstats.probe")

IntervalListener = Callable[[FlowBatch], None]  # one published interval
EnricherMaker = Callable[[], Enricher | None]  # None: this kernel or build cannot (it logged why)


@dataclass
class DaemonSettings:
    """The parts a probe runs, as ``build_probe`` derives them from one ``ProbeConfig``."""

    probe: ProbeSettings
    nats: NatsOptions
    publisher: PublisherSettings
    shutdown_flush_seconds: float = 10.0
    services: list[ServiceFactory] = field(default_factory=list)
    # fill optional columns: the process namer, the quality join; their tracepoints load
    # first, in this order, before the classifier
    enrichers: list[EnricherMaker] = field(default_factory=list)


class ProbeDaemon:
    def __init__(self, settings: DaemonSettings) -> None:
        self.settings = settings
        self.kernel: KernelProbe | None = None
        self.publisher: FlowPublisher | None = None
        self.interval_listeners: list[IntervalListener] = []
        self.detach_listeners: list[DetachListener] = []
        self.ready = asyncio.Event()
        self.attach_failures = 0

    @property
    def _kernel(self) -> KernelProbe:
        """The kernel probe, which ``run`` loads before any service or interval needs it."""
        if self.kernel is None:
            raise RuntimeError("the probe is not running: no kernel probe loaded yet")
        return self.kernel

    @property
    def _publisher(self) -> FlowPublisher:
        """The publisher, which ``run`` connects before the first interval is published."""
        if self.publisher is None:
            raise RuntimeError("the probe is not running: no publisher connected yet")
        return self.publisher

    @property
    def host(self) -> str:
        return self.settings.probe.host

    @property
    def interval(self) -> float:
        return self.settings.probe.interval

    async def run(self, stop: asyncio.Event) -> None:
        """Load, attach, then poll and publish until ``stop``; the last interval is not lost."""
        self.kernel = kernel = await asyncio.to_thread(self._load)
        services: list[Service] = []
        try:
            async with FlowPublisher(self.settings.nats, self.settings.publisher) as publisher:
                self.publisher = publisher
                for device in await asyncio.to_thread(kernel.adopt):
                    await self.publish_event(device_event("attached", device, source="adopted"))
                for old in await publish_recovered(kernel, self._publish):
                    if old.lost_entries:
                        await self.publish_event(HandoverLost(
                            layout=old.path.name, connections=old.lost_entries,
                            packets=old.lost_packets, bytes=old.lost_bytes))
                for name in self.settings.probe.ifaces:
                    await self.attach(name)
                await _start_all(self, self.settings.services, services)
                self.ready.set()
                await poll_forever(kernel, self._publish, stop)
                if not await publisher.flush(self.settings.shutdown_flush_seconds):
                    log.warning("NATS did not take every interval before shutdown; "
                                "the rest stays in the outbox spool for the next start")
        finally:
            for service in reversed(services):
                await service.close()
            await asyncio.to_thread(kernel.close)

    def _load(self) -> KernelProbe:
        """The kernel probe, with the enrichers asked for (those this kernel has what they
        need for): their tracepoints go first, so no socket opened meanwhile is missed."""
        enrichers: list[Enricher] = []
        try:
            for make in self.settings.enrichers:
                enricher = make()
                if enricher is not None:
                    enrichers.append(enricher)
        except BaseException:
            for enricher in enrichers:
                enricher.close()
            raise
        return KernelProbe(self.settings.probe, *enrichers)  # closes them if it fails

    async def _publish(self, batch: FlowBatch) -> None:
        for listener in self.interval_listeners:
            listener(batch)
        publisher = self._publisher
        await publisher.submit(batch)
        await publisher.make_durable(min(publisher.settings.ack_timeout, self.settings.probe.interval / 2))

    # -- ProbePort: what the control plane and the watchers call --------------------------

    async def attach(self, name: str | int, mode: str | None = None,
                     owner: Owner | None = None, **context: Any) -> AttachedDevice:
        """Attach and publish an "attached" event carrying ``context`` (source, netns, ...)."""
        try:
            device = await asyncio.to_thread(self._kernel.attach, name, mode, owner)
        except Exception:
            self.attach_failures += 1
            raise
        await self.publish_event(device_event("attached", device, **context))
        return device

    async def detach(self, name: str | int, reason: str = "detached", **context: Any) -> AttachedDevice:
        """Detach, forget the device's since-attach totals, publish ``reason`` as the event."""
        device = await asyncio.to_thread(self._kernel.detach, name)
        for forget in list(self.detach_listeners):
            await forget(device)
        await self.publish_event(device_event(reason, device, **context))
        return device

    async def check_filters(self) -> list[FilterLoss]:
        """Release devices whose filter someone else replaced or removed; publish
        ``replaced`` or ``lost`` with what is in our place now (``hooks``)."""
        lost = await asyncio.to_thread(self._kernel.check_filters)
        for loss in lost:
            for forget in list(self.detach_listeners):
                await forget(loss.device)
            await self.publish_event(device_event(loss.event, loss.device, hooks=loss.to_wire()))
        return lost

    def devices(self) -> list[AttachedDevice]:
        return self._kernel.devices.devices()

    def label(self, ifindex: int, owner: Owner) -> None:
        self._kernel.label(ifindex, owner)

    def policy_tables(self) -> PolicyTables:
        return self._kernel.policy

    async def live_records(self) -> FlowBatch:
        return await asyncio.to_thread(self._kernel.peek)

    async def publish_event(self, event: Event) -> bool:
        if self.publisher is None:
            return False
        return await self.publisher.publish_event(event)

    def on_detach(self, listener: DetachListener) -> Callable[[], None]:
        self.detach_listeners.append(listener)
        return lambda: self.detach_listeners.remove(listener) if listener in self.detach_listeners else None

    def status(self) -> ProbeStatus:
        kernel, publisher = self.kernel, self.publisher
        return ProbeStatus(
            loaded=self.ready.is_set(), publisher=publisher.stats if publisher is not None else None,
            attached_devices=len(kernel.devices.devices()) if kernel is not None else 0,
            attach_failures=self.attach_failures, last_poll=kernel.last_poll if kernel is not None else None,
            naming_processes=kernel is not None and kernel.enricher("processes") is not None,
            naming_failures=kernel.naming_failures if kernel is not None else 0,
            **_quality_status(kernel),
        )

    def on_interval(self, listener: IntervalListener) -> None:
        """Call ``listener`` with every interval before it is published (totals, live view)."""
        self.interval_listeners.append(listener)


def _quality_status(kernel: KernelProbe | None) -> dict[str, Any]:
    quality = kernel.enricher("quality") if kernel is not None else None
    if kernel is None or not isinstance(quality, QualityEnricher):
        return {}
    return {"measuring_quality": True, "quality_failures": kernel.failures.get("quality", 0),
            "quality_sockets_expired": quality.expired_sockets}


async def _start_all(daemon: ProbePort, factories: list[ServiceFactory], started: list[Service]) -> None:
    """Start each service in order into ``started``: one that fails leaves the ones before it
    in ``started``, to be closed."""
    for factory in factories:
        service = factory(daemon)
        await service.start()
        started.append(service)
