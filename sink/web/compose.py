"""The web page's composition root: one ``UiConfig`` in, a ``WebUi`` to start out.

    build_ui(config)                 ``connstats ui``, and ``connstats up`` (--ui)
      NatsLink        the one NATS connection the parts below share (connected at start)
      StoreReader     the store: the map (its node of this host by host_addresses), history,
                      denied connections, the learn preview
      LiveFeed        the Live view: one subscription on the flows for every open page
      ViolationLog    the Policy view's recent violations (connstats.v1.policy.>)
      Callers         root, the --http-group, or the token in <state>/ui-token
      AccessGuard     Host/Origin checks, then the callers' rule, before every handler
      PageApi         the /api/ handlers on the parts above; page_routes: which path is which
      WebUi           serves it: starts NatsLink, LiveFeed, ViolationLog in this order and
                      listens; closes them in reverse, then the reader
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from connstats.probe.contract import NatsOptions
from connstats.probe.runtime.callers import Callers, TokenFile

from .access import TOKEN_FILE, AccessGuard
from .live import LiveFeed
from .server import DEFAULT_UI, NatsLink, PageApi, StoreReader, WebUi, page_routes, parse_listen
from .violations import ViolationLog

if TYPE_CHECKING:  # imports influxdb_client, which the page loads only for an influxdb store
    from connstats.sink.influx_store import InfluxConfig

__all__ = ["DEFAULT_UI", "UiConfig", "WebUi", "build_ui"]


@dataclass(frozen=True)
class UiConfig:
    listen: str  # ADDR:PORT
    nats: NatsOptions
    store: str  # sqlite:PATH or influxdb
    state_dir: Path
    influx: InfluxConfig | None = None  # for an influxdb store
    required: bool = True  # False: `up`'s default page; a taken port is a warning, not fatal
    host: str = ""  # this host's name: its map node, the default host of a learn preview
    host_addresses: Callable[[], list[str]] = list  # this host's addresses: its map node, the group ``host``
    http_group: str | None = None  # its members may use the page, besides root and holders of the token

    def __post_init__(self) -> None:
        parse_listen(self.listen)


def build_ui(config: UiConfig) -> WebUi:
    """The web page's server of ``config``, not started: ``await ui.start()`` serves it."""
    host, port = parse_listen(config.listen)
    nats = NatsLink(config.nats)
    reader = StoreReader(config.store, config.influx)
    feed = LiveFeed(nats)
    violations = ViolationLog(nats)
    callers = Callers(TokenFile(config.state_dir / TOKEN_FILE), config.http_group, "this page", browser=True)
    guard = AccessGuard(host, port, callers)
    api = PageApi(reader, feed, violations, nats, control=config.nats, host=config.host,
                  host_addresses=config.host_addresses)
    return WebUi(host, port, guard, page_routes(api), api, parts=[nats, feed, violations], closables=[reader])
