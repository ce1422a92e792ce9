"""Which store a ``--store`` spec names, building it for writing (``make_store``) and
reading it (``StoreReader``); the stores load lazily.

    rows = StoreReader("sqlite:/var/lib/connstats/flows.sqlite").read(query)   # synchronous code
    async with StoreReader(spec, influx) as reader:                            # a server
        rows = await reader.rows(query)

The web page and ``connstats history`` (and ``policy learn``) read through this one reader;
sink/history.py builds and runs the queries.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from connstats.probe.contract import ConfigError

from .history import HistoryQuery, influx_history, sqlite_history

if TYPE_CHECKING:
    from .influx_store import InfluxConfig, InfluxStore
    from .store import Store


def parse_store(spec: str) -> tuple[str, str]:
    """``sqlite:PATH`` -> ("sqlite", PATH); ``influxdb`` -> ("influxdb", "")."""
    kind, _, rest = spec.partition(":")
    if kind == "sqlite" and rest:
        return "sqlite", rest
    if kind in ("influxdb", "influx") and not rest:
        return "influxdb", ""
    raise ConfigError(f"store {spec!r} is not sqlite:PATH or influxdb; check --store")


def make_store(spec: str, retention_seconds: float | None = None, influx: InfluxConfig | None = None) -> Store:
    """The store a spec names; SQLite deletes rows older than ``retention_seconds``
    (InfluxDB keeps data as its bucket's retention says). ``influx`` defaults to the
    environment (``InfluxConfig.from_env``)."""
    kind, path = parse_store(spec)
    if kind == "sqlite":
        from .sqlite_store import SqliteStore
        return SqliteStore(path, retention_seconds)
    return _influx_store(influx)


def _influx_store(influx: InfluxConfig | None) -> InfluxStore:
    from .influx_store import InfluxConfig, InfluxStore
    return InfluxStore(influx if influx is not None else InfluxConfig.from_env())


class StoreReader:
    """Runs ``HistoryQuery``s on the store a spec names: SQLite through a read-only
    connection per query, in a worker thread (the event loop does not wait on it); InfluxDB
    through one client, opened at the first query (``influx`` defaults to the environment,
    as for ``make_store``). ``close()`` (or leaving ``async with``) closes that client."""

    def __init__(self, spec: str, influx: InfluxConfig | None = None) -> None:
        self.kind, self.path = parse_store(spec)
        self.influx = influx
        self._influx: InfluxStore | None = None

    async def rows(self, query: HistoryQuery) -> list[dict]:
        if self.kind == "sqlite":
            return await asyncio.to_thread(sqlite_history, self.path, query)
        if self._influx is None:
            self._influx = _influx_store(self.influx)
        return await influx_history(self._influx, query)

    def read(self, query: HistoryQuery) -> list[dict]:
        """``rows`` for synchronous code (the CLI): SQLite read right here, InfluxDB in an event
        loop of its own, its client closed after."""
        if self.kind == "sqlite":
            return sqlite_history(self.path, query)

        async def read() -> list[dict]:
            async with self:
                return await self.rows(query)

        return asyncio.run(read())

    async def close(self) -> None:
        if self._influx is not None:
            influx, self._influx = self._influx, None
            await influx.close()

    async def __aenter__(self) -> StoreReader:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
