"""The InfluxDB 2.x store: line protocol built by hand, written synchronously in chunks.

Split the Vector way: ``InfluxConfig`` (settings), ``encode_lines`` (pure: records in,
line protocol out) and ``InfluxStore`` (I/O only, through ``influxdb-client``).

One point per record in measurement ``connstats_flow``. Tags have bounded cardinality
(host, ifname, direction, proto, service_port, container_name); addresses, ports, container
id and image and the counters are fields.
A point's timestamp is ``interval_start + record_offset + i`` (ns), ``i`` being the
record's index in its message: connections of one interval never overwrite each other,
and a redelivered message overwrites its own identical points.

Overflow counts (packets and bytes that found the flow map full) are points of their own
measurement ``connstats_overflow``: tags host, ifname, direction; fields packets, bytes,
ifindex; timestamp ``interval_start + i`` for the interval's i-th device and direction.
"""
from __future__ import annotations

import asyncio
import gzip
import os
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Sequence
from urllib.parse import urlsplit, urlunsplit

import urllib3.exceptions
from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.rest import ApiException
from influxdb_client.service.health_service import HealthService
from influxdb_client.service.write_service import WriteService

from connstats.probe.errors import MessageError, StoreError, StoreUnavailable
from connstats.probe.record import Envelope, FlowRecord, proto_name
from connstats.sink.store import overflow_totals

MEASUREMENT = "connstats_flow"
OVERFLOW_MEASUREMENT = "connstats_overflow"
MAX_LINES_PER_REQUEST = 5_000
GZIP_LEVEL = 1  # fastest; see InfluxStore.__init__
OTHER_PORT = "other"
_PORT_TEXT = tuple(str(port) for port in range(65536))

# Tag values: comma, equals sign and space are escaped, and so is the backslash itself
# (a trailing or doubled backslash would otherwise swallow the next separator).
# Line protocol cannot carry newlines; they are written as the two characters "\n".
_TAG_ESCAPES = str.maketrans({
    "\\": "\\\\", ",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\r": r"\r", "\t": r"\t",
})
_STRING_ESCAPES = str.maketrans({'"': r"\"", "\\": r"\\"})


@dataclass(frozen=True)
class InfluxConfig:
    """Where and how to write.

    url: e.g. ``http://localhost:8086``; org and bucket: names (or IDs); token: an API
    token with write access to the bucket (and read, for ``query``); timeout: seconds
    per HTTP request; service_ports: ports, beyond those below 1024, worth their own
    ``service_port`` tag value (everything else is tagged ``other``).
    """

    url: str
    org: str
    token: str = field(repr=False)
    bucket: str = "connstats"
    timeout: float = 10.0
    service_ports: frozenset[int] = frozenset()

    @classmethod
    def from_settings(cls, url: str | None, org: str | None, token: str | None,
                      bucket: str | None = None, *, names: tuple[str, str, str] | None = None,
                      **overrides: Any) -> InfluxConfig:
        """From the common configuration (flag, ``CONNSTATS_INFLUX_*``, ``INFLUXDB_V2_*``,
        TOML ``[influxdb]``: ``cli/config.py``); a missing one is a one-line ``StoreError``
        that says how to set it (``names``: of url, org and token)."""
        names = names or SETTING_NAMES
        return cls(
            url=_required(url, names[0], "the InfluxDB URL, e.g. http://localhost:8086"),
            org=_required(org, names[1], "the organization name"),
            token=_required(token, names[2], "an API token that can write the bucket"),
            bucket=bucket or "connstats",
            **overrides,
        )

    @classmethod
    def from_env(cls, bucket: str | None = None, **overrides: Any) -> InfluxConfig:
        """Read ``INFLUXDB_V2_URL``/``_ORG``/``_TOKEN`` and ``CONNSTATS_INFLUX_BUCKET`` only."""
        env = os.environ
        return cls.from_settings(env.get("INFLUXDB_V2_URL"), env.get("INFLUXDB_V2_ORG"),
                                 env.get("INFLUXDB_V2_TOKEN"), bucket or env.get("CONNSTATS_INFLUX_BUCKET"),
                                 names=("INFLUXDB_V2_URL", "INFLUXDB_V2_ORG", "INFLUXDB_V2_TOKEN"), **overrides)


SETTING_NAMES = ("--influx-url (or INFLUXDB_V2_URL, [influxdb] url)",
                 "--influx-org (or INFLUXDB_V2_ORG, [influxdb] org)",
                 "INFLUXDB_V2_TOKEN (or CONNSTATS_INFLUX_TOKEN, [influxdb] token)")


def _required(value: str | None, name: str, what: str) -> str:
    if not value:
        raise StoreError(f"{name} is not set; set it to {what}")
    return value


# -- encode: pure ------------------------------------------------------------------


def encode_lines(
    envelope: Envelope, records: Sequence[FlowRecord], service_ports: frozenset[int] = frozenset()
) -> list[str]:
    """One line of line protocol per record, in order, timestamps in nanoseconds."""
    records = _with_escaped_strings(records)
    try:
        keys = _series_keys(records, _known_ports(service_ports))
    except IndexError:
        raise MessageError("a record has a port above 65535; fix the producer of the message") from None
    tag_sets = {key: _tag_set(envelope.host, *key) for key in set(keys)}
    base = envelope.interval_start + envelope.record_offset
    return [
        f'{tag_sets[key]} bytes={r.bytes}i,{_container_fields(r)}dst_ip="{r.dst_ip}",'
        f"dst_port={r.dst_port}i,family={r.family}i,first_seen={r.first_seen}i,"
        f'ifindex={r.ifindex}i,last_seen={r.last_seen}i,packets={r.packets}i,src_ip="{r.src_ip}",'
        f"src_port={r.src_port}i,tcp_flags={r.tcp_flags}i {base + i}"
        for i, (key, r) in enumerate(zip(keys, records))
    ]


def encode_overflow_lines(envelope: Envelope) -> list[str]:
    """One line per device and direction of the envelope's overflow (repeats summed)."""
    return [
        OVERFLOW_MEASUREMENT + _tag_pair("direction", direction) + _tag_pair("host", envelope.host)
        + _tag_pair("ifname", ifname)
        + f" bytes={nbytes}i,ifindex={ifindex}i,packets={packets}i {envelope.interval_start + i}"
        for i, (ifindex, ifname, direction, packets, nbytes) in enumerate(overflow_totals(envelope))
    ]


def _container_fields(r: FlowRecord) -> str:
    """``container_id`` and ``container_image`` fields, only for labelled records."""
    if not r.container_id and not r.container_image:
        return ""
    return (f'container_id="{escape_string(r.container_id)}",'
            f'container_image="{escape_string(r.container_image)}",')


def service_port(src_port: int, dst_port: int, service_ports: frozenset[int] = frozenset()) -> str:
    """The server side of a connection as a tag value: a well-known (1-1023) or configured
    port, the lower one when both are; else ``other``. Port 0 means "no ports" (ICMP)."""
    key = _series_keys([_PortsOnly(src_port, dst_port)], _known_ports(service_ports))[0]
    return key[3]


def escape_tag(value: str) -> str:
    """Escape a tag value for line protocol."""
    return value.translate(_TAG_ESCAPES)


def escape_string(value: str) -> str:
    """The inside of a string field value: ``"`` and ``\\`` escaped."""
    return value.translate(_STRING_ESCAPES)


def _with_escaped_strings(records: Sequence[FlowRecord]) -> Sequence[FlowRecord]:
    """The records, with string fields escaped; a copy only if any needs it (rare)."""
    text = "".join([r.src_ip for r in records]) + "".join([r.dst_ip for r in records])
    if '"' not in text and "\\" not in text:
        return records
    return [
        replace(r, src_ip=escape_string(r.src_ip), dst_ip=escape_string(r.dst_ip)) for r in records
    ]


@dataclass(frozen=True, slots=True)
class _PortsOnly:
    """Just enough of a record for ``_series_keys``, so the port rule lives in one place."""

    src_port: int
    dst_port: int
    ifname: str = ""
    direction: str = ""
    proto: int = 0
    container_name: str = ""


@lru_cache(maxsize=8)
def _known_ports(service_ports: frozenset[int]) -> bytes:
    """A 65536-byte table: 1 where the port is a service port, else 0."""
    table = bytearray(65536)
    table[1:1024] = b"\x01" * 1023
    for port in service_ports:
        if 0 < port < 65536:
            table[port] = 1
    return bytes(table)


def _series_keys(records: Sequence[FlowRecord], known: bytes) -> list[tuple]:
    """(ifname, direction, proto, service port text, container name) per record; inline for speed."""
    return [
        (r.ifname, r.direction, r.proto,
         _PORT_TEXT[min(r.src_port, r.dst_port)] if known[r.src_port] and known[r.dst_port]
         else _PORT_TEXT[r.src_port] if known[r.src_port]
         else _PORT_TEXT[r.dst_port] if known[r.dst_port]
         else OTHER_PORT, r.container_name)
        for r in records
    ]


def _tag_set(host: str, ifname: str, direction: str, proto: int, port: str,
             container_name: str = "") -> str:
    tags = (
        ("container_name", container_name), ("direction", direction), ("host", host),
        ("ifname", ifname), ("proto", proto_name(proto)), ("service_port", port),
    )  # sorted by key, as InfluxDB prefers; empty values are left out
    return MEASUREMENT + "".join(_tag_pair(k, v) for k, v in tags)


def _tag_pair(key: str, value: str) -> str:
    return f",{key}={escape_tag(value)}" if value else ""


def chunked(lines: list[str], size: int = MAX_LINES_PER_REQUEST) -> list[bytes]:
    """Request bodies of at most ``size`` lines each."""
    return ["\n".join(lines[i:i + size]).encode() for i in range(0, len(lines), size)]


# -- write: I/O only ------------------------------------------------------------------


class InfluxStore:
    """``Store`` on InfluxDB 2.x; each ``write`` posts its lines synchronously, in chunks."""

    def __init__(self, config: InfluxConfig) -> None:
        self.config = config
        try:
            self.where = f"InfluxDB at {_without_credentials(config.url)}"
            self._client = InfluxDBClient(
                url=config.url, token=config.token, org=config.org,
                timeout=int(config.timeout * 1000), retries=False,
            )
        except ValueError as exc:
            raise StoreError(f"the InfluxDB URL is not valid ({exc}); fix INFLUXDB_V2_URL") from exc
        # The client's own gzip (enable_gzip) compresses at level 9, which costs three times
        # the encoding; we compress at level 1 (1.6x the bytes) and post through the
        # client's WriteService, synchronously, one request per chunk.
        self._writer = WriteService(self._client.api_client)

    async def ping(self) -> None:
        await asyncio.to_thread(self._call, self._check_health)

    async def write(self, envelope: Envelope, records: Sequence[FlowRecord]) -> None:
        await asyncio.to_thread(self._call, self._post, envelope, records)

    async def query(self, flux: str, params: dict[str, Any] | None = None) -> list[dict]:
        """Run a Flux query with bind ``params``; one dict per row (``FluxRecord.values``)."""
        return await asyncio.to_thread(self._call, self._query, flux, params)

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    # -- running in a worker thread --------------------------------------------------

    def _call(self, step, *args):
        try:
            return step(*args)
        except ApiException as exc:
            raise _api_error(self.where, exc) from exc
        except urllib3.exceptions.LocationValueError as exc:
            raise StoreError(f"{self.where}: the URL is not valid; fix INFLUXDB_V2_URL") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise StoreUnavailable(
                f"{self.where} unreachable ({type(exc).__name__}); check that it runs and the URL"
            ) from exc

    def _close(self) -> None:
        self._client.close()

    def _check_health(self) -> None:
        health = HealthService(self._client.api_client).get_health()
        if health.status != "pass":
            raise StoreUnavailable(
                f"{self.where} is {health.status}: {_one_line(health.message)}; wait for it to recover"
            )

    def _post(self, envelope: Envelope, records: Sequence[FlowRecord]) -> None:
        """Encode (here, off the event loop, as the client's gzip is too) and post."""
        lines = encode_lines(envelope, records, self.config.service_ports)
        if envelope.overflow:
            lines += encode_overflow_lines(envelope)
        for body in chunked(lines):
            self._writer.post_write(
                org=self.config.org, bucket=self.config.bucket, body=gzip.compress(body, GZIP_LEVEL),
                precision=WritePrecision.NS, content_encoding="gzip",
                content_type="text/plain; charset=utf-8",
            )

    def _query(self, flux: str, params: dict[str, Any] | None) -> list[dict]:
        tables = self._client.query_api().query(flux, org=self.config.org, params=params)
        return [dict(record.values) for table in tables for record in table.records]


def _api_error(where: str, exc: ApiException) -> StoreError:
    status = exc.status or 0
    reason = f"{where} answered {status} {_one_line(exc.reason)}{_server_message(exc)}"
    if status == 429 or status >= 500:
        return StoreUnavailable(f"{reason}; retry later")
    if status in (401, 403):
        return StoreError(f"{reason}; check INFLUXDB_V2_TOKEN and its permissions")
    if status == 404:
        return StoreError(f"{reason}; check INFLUXDB_V2_ORG and the bucket name")
    return StoreError(f"{reason}; check the data and settings")


def _server_message(exc: ApiException) -> str:
    message = getattr(exc, "message", None)
    return f" ({_one_line(message)})" if message else ""


def _one_line(text: Any) -> str:
    return " ".join(str(text or "").split())[:200]


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host))
