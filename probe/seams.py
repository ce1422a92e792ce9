"""What a probe service may ask of the probe: the one port the control plane, the HTTP
API, the watchers and the filter guard are given (``ProbeDaemon`` implements it; tests
give a fake). A service never sees the kernel, the publisher or another service.
Named for the seam between the daemon and its services (it was ``ports.py``, which read as
TCP ports); the protocol keeps its name, ``ProbePort``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

from .contract.events import Event
from .contract.record import Owner
from .kernel.devices import AttachedDevice, FilterLoss

DetachListener = Callable[[AttachedDevice], Awaitable[None]]
IntervalListener = Callable[["FlowBatch"], None]  # one interval, before it is published

if TYPE_CHECKING:
    from .contract.flow_batch import FlowBatch
    from .kernel.kernel_probe import PollReport
    from .policy.tables import PolicyTables
    from .publish.publisher import PublisherStats


@dataclass(frozen=True)
class ProbeStatus:
    """How the probe is doing, for its self-metrics and ``/readyz``; read at scrape time."""

    loaded: bool  # classifier loaded and the devices of the start attached
    publisher: PublisherStats | None  # None before the publisher connected
    attached_devices: int
    attach_failures: int
    last_poll: PollReport | None  # None before the first poll
    naming_processes: bool = False  # the process namer runs (--processes, and the kernel can)
    naming_failures: int = 0  # naming steps that failed (the records went out unnamed)
    measuring_quality: bool = False  # the quality join runs (--quality, and the kernel can)
    quality_failures: int = 0  # quality steps that failed (those records went out without it)
    quality_sockets_expired: int = 0  # socket stats that found no record in two intervals


@dataclass(frozen=True)
class PolicyReport:
    """The active policy as the self-metrics read it at scrape time (probe/policy/service.py)."""

    mode: str = "off"  # off | monitor | protect
    rules: int = 0
    groups: int = 0
    governed_devices: int = 0
    violation_events: int = 0  # published on connstats.v1.policy.<host>
    violation_events_failed: int = 0  # not published (NATS errors)
    apply_failures: int = 0  # applies refused or failed (the verb, the saved policy at start)


class PolicyReporter(Protocol):
    def report(self) -> PolicyReport: ...


class ProbePort(Protocol):
    @property
    def interval(self) -> float:
        """Seconds per interval."""

    async def attach(self, name: str | int, mode: str | None = None, owner: Owner | None = None,
                     **context: Any) -> AttachedDevice:
        """Attach and publish ``attached``; ``context`` are ``DeviceEvent`` fields (source, netns, ...)."""

    async def detach(self, name: str | int, reason: str = "detached", **context: Any) -> AttachedDevice:
        """Detach and publish ``reason`` (detached, gone); detach listeners run first."""

    async def check_filters(self) -> list[FilterLoss]:
        """Release and report devices whose filter somebody else replaced or removed."""

    def devices(self) -> list[AttachedDevice]:
        """The attached devices."""

    def label(self, ifindex: int, owner: Owner) -> None:
        """Name the owner of an attached device's records, unless it is named already."""

    def policy_tables(self) -> PolicyTables:
        """The classifier's policy tables (probe/policy/tables.py)."""

    async def publish_event(self, event: Event) -> bool:
        """Best effort: publish ``event`` now; False if it was not."""

    async def live_records(self) -> FlowBatch:
        """The current, not yet published interval's records."""

    def on_detach(self, listener: DetachListener) -> Callable[[], None]:
        """Call ``listener`` on every detach; returns the function that stops that."""

    def on_interval(self, listener: IntervalListener) -> None:
        """Call ``listener`` with every interval before it is published."""

    def status(self) -> ProbeStatus:
        """Loaded, connected, counters: see ``ProbeStatus``."""


class Service(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...


ServiceFactory = Callable[[ProbePort], Service]
