"""Settings for every command, from four places in this order of precedence:

    1. the command-line flag            --nats nats://10.0.0.5:4222
    2. the environment                  CONNSTATS_NATS=nats://10.0.0.5:4222
       (InfluxDB: CONNSTATS_INFLUX_URL, then the client library's INFLUXDB_V2_URL)
    3. the TOML file (--config FILE)    [nats] url = "nats://10.0.0.5:4222"
       default /etc/connstats/config.toml, or CONNSTATS_CONFIG
    4. the built-in default

A missing default config file is fine; a missing file given with ``--config`` is not.
The state directory is ``/var/lib/connstats`` for root (``$XDG_STATE_HOME/connstats``
otherwise) unless ``CONNSTATS_STATE_DIR`` or ``state_dir`` in the file says else. ``up``
writes the NATS URL it uses to ``<state>/nats.url``, so that every other command on the
machine finds the running NATS without flags (after the flag, env and file). Its embedded
nats-server requires a login: ``up`` writes one user per role (probe, sink, admin, alert) to
``<state>/nats-credentials.json`` (0600), and a command that connects to that URL without
credentials of its own (``--nats-creds``, or ``user:password@`` in the URL) logs in as
its role, so only whoever can read the state directory (root) controls the probe.
"""
from __future__ import annotations

import os
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from connstats.probe.contract import ConfigError, MessageError, NatsOptions, loads_toml
from connstats.sink.stores import parse_store

from .nats_auth import CREDENTIALS_FILE, RoleUser, read_credentials

if TYPE_CHECKING:
    from connstats.sink.influx_store import InfluxConfig

DEFAULT_CONFIG_FILE = Path("/etc/connstats/config.toml")
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_HTTP = "127.0.0.1:9102"
NATS_URL_FILE = "nats.url"
SQLITE_FILE = "flows.sqlite"


@dataclass(frozen=True)
class Setting:
    """One setting: its environment variable, its place in the TOML file, its parser."""

    env: str
    table: str  # "" for the top level of the file
    key: str
    parse: Callable[[Any], Any] = str
    env_fallback: str = ""  # read after ``env``: a variable another tool defines (INFLUXDB_V2_*)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{value!r} is not a number") from None


def _retention_seconds(value: Any) -> float:
    from connstats.probe.runtime.durations import duration_seconds

    return duration_seconds(str(value))


def _positive_int(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise ConfigError(f"{number} is not a positive number")
    return number


def _positive_float(value: Any) -> float:
    number = _float(value)
    if number <= 0:
        raise ConfigError(f"{number:g} is not a positive number")
    return number


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ConfigError(f"{value!r} is not true or false")


def _names(value: Any) -> list[str]:
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"{value!r} is not a list of interface names")


SETTINGS: dict[str, Setting] = {
    "nats": Setting("CONNSTATS_NATS", "nats", "url"),
    "nats_creds": Setting("CONNSTATS_NATS_CREDS", "nats", "creds"),
    "tls_ca": Setting("CONNSTATS_TLS_CA", "nats", "tls_ca"),
    "tls_cert": Setting("CONNSTATS_TLS_CERT", "nats", "tls_cert"),
    "tls_key": Setting("CONNSTATS_TLS_KEY", "nats", "tls_key"),
    "host": Setting("CONNSTATS_HOST", "", "host"),
    "state_dir": Setting("CONNSTATS_STATE_DIR", "", "state_dir"),
    "iface": Setting("CONNSTATS_IFACE", "probe", "ifaces", _names),
    "interval": Setting("CONNSTATS_INTERVAL", "probe", "interval", _float),
    "http": Setting("CONNSTATS_HTTP", "probe", "http"),
    "http_group": Setting("CONNSTATS_HTTP_GROUP", "", "http_group"),
    "ui": Setting("CONNSTATS_UI", "ui", "listen"),
    "store": Setting("CONNSTATS_STORE", "sink", "store"),
    "retention": Setting("CONNSTATS_RETENTION", "sink", "retention", _retention_seconds),
    "lag_warning_intervals": Setting("CONNSTATS_LAG_WARNING_INTERVALS", "sink", "lag_warning_intervals",
                                     _positive_float),
    "capacity": Setting("CONNSTATS_CAPACITY", "probe", "capacity", _positive_int),
    "on_exit": Setting("CONNSTATS_ON_EXIT", "probe", "on_exit"),
    "auto": Setting("CONNSTATS_AUTO", "probe", "auto", _names),
    "exclude": Setting("CONNSTATS_EXCLUDE", "probe", "exclude", _names),
    "docker_socket": Setting("CONNSTATS_DOCKER_SOCKET", "probe", "docker_socket"),
    "podman_socket": Setting("CONNSTATS_PODMAN_SOCKET", "probe", "podman_socket"),
    "containerd_socket": Setting("CONNSTATS_CONTAINERD_SOCKET", "probe", "containerd_socket"),
    "processes": Setting("CONNSTATS_PROCESSES", "probe", "processes", _bool),
    "quality": Setting("CONNSTATS_QUALITY", "probe", "quality", _bool),
    "metrics": Setting("CONNSTATS_METRICS", "metrics", "address"),
    "stream_replicas": Setting("CONNSTATS_STREAM_REPLICAS", "nats", "stream_replicas", _positive_int),
    "influx_url": Setting("CONNSTATS_INFLUX_URL", "influxdb", "url", env_fallback="INFLUXDB_V2_URL"),
    "influx_org": Setting("CONNSTATS_INFLUX_ORG", "influxdb", "org", env_fallback="INFLUXDB_V2_ORG"),
    "influx_bucket": Setting("CONNSTATS_INFLUX_BUCKET", "influxdb", "bucket"),
    # no flag: a token on the command line is visible to every local user in ps
    "influx_token": Setting("CONNSTATS_INFLUX_TOKEN", "influxdb", "token", env_fallback="INFLUXDB_V2_TOKEN"),
}


@dataclass(frozen=True)
class Config:
    """The file's contents and the environment; ``get`` applies the precedence."""

    file: dict[str, Any]
    env: dict[str, str]
    path: Path | None

    def get(self, name: str, flag: Any = None, default: Any = None) -> Any:
        setting = SETTINGS[name]
        if flag is not None and flag != []:
            return flag
        for env in filter(None, (setting.env, setting.env_fallback)):
            if self.env.get(env):
                return _parsed(setting, self.env[env], f"${env}")
        table = self.file.get(setting.table, {}) if setting.table else self.file
        if isinstance(table, dict) and table.get(setting.key) is not None:
            where = f"{self.path}: {setting.table + '.' if setting.table else ''}{setting.key}"
            return _parsed(setting, table[setting.key], where)
        return default

    # -- derived settings ------------------------------------------------------------------

    def host(self, flag: str | None = None) -> str:
        return self.get("host", flag) or socket.gethostname()

    def state_dir(self) -> Path:
        configured = self.get("state_dir")
        if configured:
            return Path(configured)
        if os.geteuid() == 0:
            return Path("/var/lib/connstats")
        base = self.env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(base) / "connstats"

    def nats_url(self, flag: str | None = None) -> str:
        """Flag, env, file, then the URL ``up`` left in the state directory, then the default."""
        url = self.get("nats", flag)
        if url:
            return url
        written = self.state_dir() / NATS_URL_FILE
        try:
            return written.read_text().strip() or DEFAULT_NATS_URL
        except OSError:
            return DEFAULT_NATS_URL

    def nats_options(self, flag: str | None = None, *, creds: str | None = None,
                     tls_ca: str | None = None, tls_cert: str | None = None,
                     tls_key: str | None = None, name: str = "connstats",
                     role: str = "admin") -> NatsOptions:
        """How to reach NATS; logs in as ``role`` on the embedded server of ``up`` (see above)."""
        servers = tuple(u.strip() for u in self.nats_url(flag).split(",") if u.strip())
        creds_file = self.get("nats_creds", creds)
        login = None if creds_file or any("@" in s for s in servers) else self.embedded_user(servers, role)
        return NatsOptions(
            servers=servers, creds_file=creds_file,
            user=login.user if login else None, password=login.password if login else None,
            tls_ca=self.get("tls_ca", tls_ca), tls_cert=self.get("tls_cert", tls_cert),
            tls_key=self.get("tls_key", tls_key), name=name,
        )

    def embedded_user(self, servers: tuple[str, ...], role: str) -> RoleUser | None:
        """The ``role`` user ``up`` made for its embedded server, if ``servers`` name that
        server and its credentials file is readable (to root only)."""
        found = read_credentials(self.state_dir() / CREDENTIALS_FILE)
        if found is None or found[0] not in servers:
            return None
        return found[1].role(role)

    def store_spec(self, flag: str | None = None, influx_url: str | None = None) -> str:
        """``sqlite:PATH`` or ``influxdb``; InfluxDB when an InfluxDB URL is configured."""
        spec = self.get("store", flag)
        if spec:
            return spec
        if self.get("influx_url", influx_url):
            return "influxdb"
        return f"sqlite:{self.state_dir() / SQLITE_FILE}"

    def store(self, flag: str | None = None, influx_url: str | None = None, influx_org: str | None = None,
              influx_bucket: str | None = None) -> tuple[str, InfluxConfig | None]:
        """The store spec, and its InfluxDB settings if it names InfluxDB (None for SQLite):
        the one place the CLI decides which store ``up``, ``sink``, ``ui``, ``history`` and
        ``policy learn`` use. A spec that is neither is a one-line ``ConfigError``."""
        spec = self.store_spec(flag, influx_url)
        kind, _ = parse_store(spec)
        return spec, self.influx(influx_url, influx_org, influx_bucket) if kind == "influxdb" else None

    def influx(self, url: str | None = None, org: str | None = None, bucket: str | None = None) -> InfluxConfig:
        """The InfluxDB settings (``InfluxConfig``), each by the precedence above."""
        from connstats.sink.influx_store import InfluxConfig

        return InfluxConfig.from_settings(self.get("influx_url", url), self.get("influx_org", org),
                                          self.get("influx_token"), self.get("influx_bucket", bucket))


def _parsed(setting: Setting, value: Any, where: str) -> Any:
    try:
        return setting.parse(value)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}; fix the setting") from None


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None) -> Config:
    """Read the TOML file (``path``, else ``$CONNSTATS_CONFIG``, else the default if present)."""
    env = dict(os.environ if env is None else env)
    explicit = path or env.get("CONNSTATS_CONFIG")
    file_path = Path(explicit) if explicit else DEFAULT_CONFIG_FILE
    if not file_path.exists():
        if explicit:
            raise ConfigError(f"config file {file_path} does not exist; check --config")
        return Config({}, env, None)
    try:
        document = loads_toml(file_path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {file_path}: {exc.__class__.__name__}; check its permissions") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {file_path} is not valid TOML ({exc}); fix it") from exc
    except MessageError as exc:
        raise ConfigError(f"config file {file_path}: {exc}") from None
    return Config(document, env, file_path)
