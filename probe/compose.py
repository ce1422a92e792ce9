"""The probe's composition root: one ``ProbeConfig`` in, a runnable ``ProbeDaemon`` out.

    build_probe(config)
      ProcessNamer (socket-owner tracepoints, the join)   unless processes is off; loaded first
      QualityEnricher (RTT, retransmit, drop tracepoints) unless quality is off; loaded next
      KernelProbe (classifier, pinned maps, devices)      ProbeSettings, derived
        └─ every interval ─> FlowPublisher (outbox) ─> JetStream       PublisherSettings, derived
      the interval listeners, each interval given to them before it is published (the
      recovered ones too), subscribed here and nowhere else, in this order:
        ProbeMetrics.add_interval        self-metrics; the collector on the Telemetry's registry
                                         (/metrics), not_ready on its /readyz as "probe"
        ConnectionTotals                 totals since attach for the HTTP API (if an address is
                                         set); a detached device forgotten (on_detach)
        PolicyService.publish_violations denied connections -> violation events (a policy applied)
        config.interval_listeners        more: the CLI's live summary, tests, add-ons
      services, each given the daemon as its ProbePort:
        ContainerIndex (shared by the watchers below; closed after them)
        PolicyService   the active policy: applied, kept, re-resolved; violations
        ControlService  NATS request/reply on connstats.v1.ctl.<host>.* (policy verbs included)
        HttpApi         the earlier tool's endpoints, on the probe's totals (root, --http-group, token)
        MetricsServer   /metrics, /healthz, /readyz alone on a listener of their own (--metrics)
        LinkWatcher     deleted devices released, --iface kept, --auto attached
        FilterGuard     our filters replaced or removed by somebody else
        DockerWatcher   containers' veths, labelled (when a socket is given)
        PodmanWatcher   the same on podman's socket, runtime "podman" (when a socket is given)
        ContainerdWatcher  pods' (sandboxes') veths, labelled with the pod (when its socket exists)

The parts' constructors subscribe to nothing: what follows the probe's intervals and
devices is wired in ``build_probe`` (a new listener is one line there); only the link
watcher hears of detaches on its own, while it runs (start to close). The host name
lives in ``ProbeConfig.host`` only; the parts get it from here. The CLI reaches the
probe's insides only through this module (``__all__``): the root, and the defaults and
device checks that fill a ``ProbeConfig``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .api.control import control_service
from .api.metrics import ProbeMetrics
from .contract.errors import ConfigError, KernelError
from .contract.messaging import NatsOptions, StreamSettings
from .daemon import DaemonSettings, IntervalListener, ProbeDaemon
from .kernel.devices import check_interfaces, default_interfaces
from .kernel.kernel_probe import Enricher, ProbeSettings
from .kernel.loader import DEFAULT_CAPACITY
from .policy.service import PolicyService
from .policy.violations import ViolationPublisher
from .publish.publisher import PublisherSettings
from .runtime.telemetry import MetricsServer, Telemetry
from .seams import DetachListener, ProbePort, ServiceFactory
from .watch.containerd_watch import DEFAULT_CONTAINERD_SOCKET, DOCKER_NAMESPACE, containerd_watcher
from .watch.containers import DEFAULT_DOCKER_SOCKET, DEFAULT_PODMAN_SOCKET, ContainerIndex
from .watch.docker_watch import docker_watcher
from .watch.guard import filter_guard
from .watch.podman_watch import podman_watcher
from .watch.watcher import link_watcher

__all__ = [
    "DEFAULT_CAPACITY", "DEFAULT_CONTAINERD_SOCKET", "DEFAULT_DOCKER_SOCKET", "DEFAULT_HTTP_ADDRESS", "DEFAULT_PODMAN_SOCKET", "HttpApiParts", "HttpConfig", "ProbeConfig",
    "ProbeDaemon", "WatchConfig", "build_probe", "check_interfaces", "default_interfaces", "http_api",
    "metrics_services", "process_support", "watcher_services",
]

log = logging.getLogger("connstats.probe")

DEFAULT_HTTP_ADDRESS = "127.0.0.1:9102"
HTTP_API_MODULE = "connstats.probe.api.http"


@dataclass
class HttpConfig:
    """The HTTP API: where it listens (None: no API), and whether the user asked for it
    (then a build without the HTTP API is an error, else it is skipped quietly)."""

    address: str | None = None  # the CLI's default: DEFAULT_HTTP_ADDRESS
    required: bool = False
    group: str | None = None  # its members may call it, besides root and holders of the token


@dataclass
class WatchConfig:
    """Devices that come and go: ``auto`` globs attached as they come up (minus
    ``exclude`` and ``lo``), Docker's and podman's containers' veths (``docker_socket``,
    ``podman_socket``) and pods' through containerd (``containerd_socket``); None: off."""

    auto: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    docker_socket: str | None = None
    podman_socket: str | None = None
    containerd_socket: str | None = None


@dataclass
class ProbeConfig:
    """Everything one probe process needs; the CLI fills it from flags, env and the file."""

    host: str  # the name the probe publishes as: subjects, message ids, control
    nats: NatsOptions
    ifaces: list[str] = field(default_factory=list)  # attached at start, kept by the link watcher
    interval: float = 10.0  # seconds
    state_dir: Path | None = None  # pinned maps and the outbox; None: nothing survives a stop
    capacity: int = DEFAULT_CAPACITY  # connections per flow map and buffer
    on_exit: str = "detach"  # keep: leave the classifier counting for the next start
    http: HttpConfig = field(default_factory=HttpConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    services: list[ServiceFactory] = field(default_factory=list)  # more (tests, add-ons)
    interval_listeners: list[IntervalListener] = field(default_factory=list)  # more: the live summary, ...
    stream: StreamSettings = field(default_factory=StreamSettings)  # the flow stream, if it is created
    telemetry: Telemetry = field(default_factory=Telemetry)  # `up` passes the one all its parts share
    metrics: str | None = None  # ADDR:PORT of a listener with only /metrics, /healthz, /readyz
    processes: bool = True  # name the process on each end of a connection (socket-owner tracepoints)
    quality: bool = True  # RTT, retransmits and drops per connection (the quality tracepoints)

    def kernel_settings(self) -> ProbeSettings:
        return ProbeSettings(ifaces=list(self.ifaces), interval=self.interval, host=self.host,
                             capacity=self.capacity, state_dir=self.state_dir, on_exit=self.on_exit)

    def publisher_settings(self) -> PublisherSettings:
        outbox = self.state_dir / "outbox" if self.state_dir is not None else None
        return PublisherSettings(host=self.host, state_dir=outbox, stream=self.stream)


def build_probe(config: ProbeConfig) -> ProbeDaemon:
    """The probe of ``config``, not started: ``await daemon.run(stop)`` runs it."""
    enrichers = [*([process_namer(config)] if config.processes else []),
                 *([quality_enricher()] if config.quality else [])]
    daemon = ProbeDaemon(DaemonSettings(config.kernel_settings(), config.nats, config.publisher_settings(),
                                        enrichers=enrichers))
    telemetry = config.telemetry
    containers = ContainerIndex()
    policy = PolicyService(ViolationPublisher(config.nats, config.host), config.state_dir, containers)
    metrics = ProbeMetrics(daemon, policy)
    telemetry.registry.register(metrics)
    telemetry.add_check("probe", metrics.not_ready)
    http = http_api(config.http, daemon, telemetry, config.state_dir)  # None: no HTTP API

    # every interval, before it is published; subscribed before the first (recovered) one
    daemon.on_interval(metrics.add_interval)
    if http is not None:
        daemon.on_interval(http.totals)
        daemon.on_detach(http.forget)  # whoever detached it
    daemon.on_interval(policy.publish_violations)
    for listener in config.interval_listeners:
        daemon.on_interval(listener)

    daemon.settings.services = [
        lambda _: containers,  # first: closed last, after the watchers that share it
        policy.bind,  # before the control plane, which answers its verbs
        control_service(config.nats, config.host, policy.verbs),
        *([http.service] if http is not None else []),
        *metrics_services(config.metrics, telemetry),
        *watcher_services(config, containers),
        *config.services,
    ]
    return daemon


@dataclass(frozen=True)
class HttpApiParts:
    """The HTTP API of a probe: its service, and the totals it serves, which ``build_probe``
    subscribes to the probe (``totals`` every interval, ``forget`` every detach)."""

    service: ServiceFactory
    totals: IntervalListener  # ConnectionTotals (api/totals.py)
    forget: DetachListener  # a detached device's connections forgotten


def http_api(http: HttpConfig, probe: ProbePort, telemetry: Telemetry | None = None,
             state_dir: Path | None = None) -> HttpApiParts | None:
    """The HTTP API on the probe's totals (and ``telemetry``'s /metrics, /healthz, /readyz),
    if asked for and part of this build (None otherwise); it admits root, ``http.group`` and
    the token of ``state_dir`` (none without one). Subscribes nothing."""
    if not http.address:
        return None
    try:
        from .api.http import http_service
        from .api.totals import ConnectionTotals, forgetting
    except ImportError as exc:
        if exc.name != HTTP_API_MODULE:
            raise
        if http.required:
            raise ConfigError("--http: the HTTP API is not part of this build; leave --http out") from None
        log.debug("no HTTP API in this build; not serving %s", http.address)
        return None
    from .runtime.callers import TOKEN_FILE, Callers, TokenFile

    callers = Callers(TokenFile(state_dir / TOKEN_FILE) if state_dir is not None else None, http.group)
    totals = ConnectionTotals()
    service = http_service(http.address, totals, telemetry, callers)  # a bad address fails here
    return HttpApiParts(service, totals, forgetting(totals, probe.live_records))


def process_support() -> str:
    """What this kernel offers for naming processes (``connstats doctor``); ``KernelError``
    saying what is missing. Loads nothing."""
    from .identity.naming import kernel_support

    return kernel_support().describe()


def quality_support() -> str:
    """What this kernel offers for RTT, retransmits and drops (``connstats doctor``);
    ``KernelError`` saying what is missing. Loads nothing (mounts tracefs if it can)."""
    from .quality.quality import REQUIRED, kernel_support

    found = kernel_support()
    if found.problem is not None:
        raise KernelError(found.problem)
    return f"tracepoints {', '.join(REQUIRED)} and BTF present"


def process_namer(config: ProbeConfig) -> Callable[[], Enricher | None]:
    """The process namer's maker: the daemon loads it just before the classifier; None from
    it (one log line says why) when this kernel cannot name processes."""
    from .identity.naming import ProcessNamer

    return lambda: ProcessNamer.start(config.interval)


def quality_enricher() -> Callable[[], Enricher | None]:
    """The quality enricher's maker: its tracepoints are imported and loaded only when the
    daemon calls it; None from it (one log line says why) when this build or kernel has none."""
    from .quality.enricher import start_quality

    return start_quality


def metrics_services(address: str | None, telemetry: Telemetry) -> list[ServiceFactory]:
    """/metrics, /healthz and /readyz alone on ``address`` (nothing of the HTTP API), if set;
    a bad address fails here, before anything starts."""
    if not address:
        return []
    server = MetricsServer(telemetry, address)
    return [lambda _: server]


def watcher_services(config: ProbeConfig, containers: ContainerIndex | None = None) -> list[ServiceFactory]:
    """Services that keep the attached devices true: the link watcher (always: it releases
    deleted devices, keeps ``--iface`` names attached, attaches links matching ``--auto``),
    the filter guard, Docker's and podman's containers' veths, labelled, and pods' through
    containerd when its socket exists (without Docker's namespace ``moby`` while Docker is
    watched); the watchers share ``containers``. A Docker or podman watcher whose socket is
    absent logs one line and watches nothing."""
    watch = config.watch
    services = [link_watcher(watch.auto, exclude=watch.exclude, keep=config.ifaces, index=containers),
                filter_guard()]
    if watch.docker_socket:
        services.append(docker_watcher(watch.docker_socket, index=containers))
    if watch.podman_socket:
        services.append(podman_watcher(watch.podman_socket, index=containers))
    if watch.containerd_socket and os.path.exists(watch.containerd_socket):
        skip = (DOCKER_NAMESPACE,) if watch.docker_socket and os.path.exists(watch.docker_socket) else ()
        services.append(containerd_watcher(watch.containerd_socket, index=containers, skip_namespaces=skip))
    return services
