"""Which store a ``--store`` spec names, and building it (the stores load lazily)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from connstats.probe.contract import ConfigError

if TYPE_CHECKING:
    from .influx_store import InfluxConfig
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
    from .influx_store import InfluxConfig, InfluxStore
    return InfluxStore(influx if influx is not None else InfluxConfig.from_env())
