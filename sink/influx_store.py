"""The InfluxDB 2.x store: line protocol built by hand, written synchronously in chunks.

Split the Vector way: ``InfluxConfig`` (settings), ``encode_lines`` (pure: a batch's
columns in, line protocol out) and ``InfluxStore`` (I/O only, through ``influxdb-client``).

One point per record in measurement ``connstats_flow``. Tags have bounded cardinality
(host, ifname, direction, proto, service_port, container_name, pod, workload, runtime,
process, verdict, drop_reason; an empty one is left out); addresses, ports, container id and
image, the counters, pid, peer_process and peer_pid, and the quality numbers rtt_min_us,
rtt_avg_us, rtt_max_us, retransmits, drop_packets and drop_bytes (each left out when empty or
0: an RTT of 0 is "no sample") are fields. ``drop_reason`` is a tag: its values are the names
of the kernel's ``skb_drop_reason`` enum (some 100, fewer in practice), a bounded set that
Flux groups and filters by without a pivot.
A point's timestamp is ``interval_start + record_offset + i`` (ns), ``i`` being the
record's index in its message: connections of one interval never overwrite each other,
and a redelivered message overwrites its own identical points.

Overflow counts (packets and bytes that found the flow map full) are points of their own
measurement ``connstats_overflow``: tags host, ifname, direction; fields packets, bytes,
ifindex; timestamp ``interval_start + i`` for the interval's i-th device and direction.
Drops that belong to no record are points of measurement ``connstats_drop`` the same way:
tags host, ifname, drop_reason; fields packets, bytes, ifindex; timestamp
``interval_start + i`` for the interval's i-th device and reason.
"""
from __future__ import annotations

import asyncio
import errno
import gzip
import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import urllib3.exceptions
from influxdb_client import InfluxDBClient, WritePrecision
from influxdb_client.rest import ApiException
from influxdb_client.service.health_service import HealthService
from influxdb_client.service.write_service import WriteService

from connstats.probe.contract import Envelope, FlowBatch, StoreError, StoreFull, StoreUnavailable, proto_name
from connstats.probe.contract.flow_batch import as_list
from connstats.sink.store import drop_totals, overflow_totals, service_port_tags

MEASUREMENT = "connstats_flow"
OVERFLOW_MEASUREMENT = "connstats_overflow"
DROP_MEASUREMENT = "connstats_drop"
MAX_LINES_PER_REQUEST = 5_000
GZIP_LEVEL = 1  # fastest; see InfluxStore.__init__

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


# Tags (besides host and service_port) and fields of a flow point; together with the host
# they cover every field of a record (tests/sink/test_influx_store.py checks it against wire.py).
TAGS = ("container_name", "direction", "drop_reason", "ifname", "pod", "process", "proto", "runtime", "verdict",
        "workload")
_TAGS_BUT_DROPS = tuple(tag for tag in TAGS if tag != "drop_reason")
FIELDS = ("bytes", "container_id", "container_image", "dst_ip", "dst_port", "family", "first_seen",
          "ifindex", "last_seen", "packets", "peer_pid", "peer_process", "pid", "src_ip", "src_port", "tcp_flags",
          *sorted(QUALITY_NUMBERS := ("rtt_min_us", "rtt_avg_us", "rtt_max_us", "retransmits", "drop_packets",
                                      "drop_bytes")))


def encode_lines(batch: FlowBatch, service_ports: frozenset[int] = frozenset()) -> list[str]:
    """One line of line protocol per record, in order, timestamps in nanoseconds; from the
    batch's columns (one f-string per record, no record object)."""
    envelope = batch.envelope
    ports = service_port_tags(batch.column("src_port"), batch.column("dst_port"), service_ports)
    tags = TAGS if batch.filled("drop_reason") else _TAGS_BUT_DROPS  # most batches drop nothing
    keys = list(zip(*(batch.column(tag) for tag in tags), ports, strict=True))
    tag_sets = {key: _tag_set(envelope.host, port=key[-1], **dict(zip(tags, key, strict=False))) for key in set(keys)}
    base = envelope.interval_start + envelope.record_offset
    src_ip, dst_ip = _escaped(as_list(batch.columns.src_ip)), _escaped(as_list(batch.columns.dst_ip))
    containers = _container_fields(batch.column("container_id"), batch.column("container_image"))
    if any(batch.filled(name) for name in QUALITY_NUMBERS):  # the quality fields follow the container's
        containers = [c + q for c, q in zip(containers, _quality_fields(batch), strict=True)]
    processes = _process_fields(batch.column("peer_pid"), batch.column("peer_process"), batch.column("pid"))
    return [
        f'{tag_sets[key]} bytes={nbytes}i,{container}dst_ip="{dst}",'
        f"dst_port={dport}i,family={family}i,first_seen={first}i,"
        f'ifindex={ifindex}i,last_seen={last}i,packets={packets}i,{process}src_ip="{src}",'
        f"src_port={sport}i,tcp_flags={flags}i {base + i}"
        for i, (key, nbytes, container, dst, dport, family, first, ifindex, last, packets, process, src, sport, flags)
        in enumerate(zip(keys, *(batch.column(name) for name in ("bytes",)), containers, dst_ip,
                         *(batch.column(name) for name in ("dst_port", "family", "first_seen", "ifindex",
                                                          "last_seen", "packets")),
                         processes, src_ip, batch.column("src_port"), batch.column("tcp_flags"), strict=True))
    ]


def encode_overflow_lines(envelope: Envelope) -> list[str]:
    """One line per device and direction of the envelope's overflow (repeats summed)."""
    return [
        OVERFLOW_MEASUREMENT + _tag_pair("direction", direction) + _tag_pair("host", envelope.host)
        + _tag_pair("ifname", ifname)
        + f" bytes={nbytes}i,ifindex={ifindex}i,packets={packets}i {envelope.interval_start + i}"
        for i, (ifindex, ifname, direction, packets, nbytes) in enumerate(overflow_totals(envelope))
    ]


def encode_drop_lines(envelope: Envelope) -> list[str]:
    """One line per device and reason of the envelope's drops of no record (repeats summed)."""
    return [
        DROP_MEASUREMENT + _tag_pair("drop_reason", reason) + _tag_pair("host", envelope.host)
        + _tag_pair("ifname", ifname)
        + f" bytes={nbytes}i,ifindex={ifindex}i,packets={packets}i {envelope.interval_start + i}"
        for i, (ifindex, ifname, reason, packets, nbytes) in enumerate(drop_totals(envelope))
    ]


def _quality_fields(batch: FlowBatch) -> list[str]:
    """The quality number fields per record (sorted by name), each left out when 0."""
    names = sorted(QUALITY_NUMBERS)
    return ["".join(f"{name}={value}i," for name, value in zip(names, values, strict=True) if value)
            for values in zip(*(batch.column(name) for name in names), strict=True)]


def _container_fields(ids, images) -> list[str]:
    """``container_id`` and ``container_image`` fields per record, "" for unlabelled ones."""
    text = {pair: (f'container_id="{escape_string(pair[0])}",container_image="{escape_string(pair[1])}",'
                   if any(pair) else "") for pair in set(zip(ids, images, strict=True))}
    return list(map(text.__getitem__, zip(ids, images, strict=True)))


def _process_fields(peer_pids, peer_processes, pids) -> list[str]:
    """``peer_pid``, ``peer_process`` and ``pid`` fields per record, each left out when 0 or ""."""
    if not (any(pids) or any(peer_pids) or any(peer_processes)):
        return [""] * len(pids)
    triples = list(zip(peer_pids, peer_processes, pids, strict=True))
    text: dict[tuple, str] = {}
    for triple in set(triples):
        peer_pid, peer_process, pid = triple
        text[triple] = ((f"peer_pid={peer_pid}i," if peer_pid else "")
                        + (f'peer_process="{escape_string(peer_process)}",' if peer_process else "")
                        + (f"pid={pid}i," if pid else ""))
    return list(map(text.__getitem__, triples))


def service_port_tag(src_port: int, dst_port: int, service_ports: frozenset[int] = frozenset()) -> str:
    """The ``service_port`` tag value of one connection (the rule: ``store.server_port``)."""
    return service_port_tags([src_port], [dst_port], service_ports)[0]


def escape_tag(value: str) -> str:
    """Escape a tag value for line protocol."""
    return value.translate(_TAG_ESCAPES)


def escape_string(value: str) -> str:
    """The inside of a string field value: ``"`` and ``\\`` escaped."""
    return value.translate(_STRING_ESCAPES)


def _escaped(texts: list[str]) -> list[str]:
    """String field values escaped; a copy only if any needs it (rare)."""
    joined = "".join(texts)
    if '"' not in joined and "\\" not in joined:
        return texts
    return [escape_string(text) for text in texts]


def _tag_set(host: str, container_name: str, direction: str, ifname: str, pod: str, process: str, proto: int,
             runtime: str, verdict: str, workload: str, port: str, drop_reason: str = "") -> str:
    tags = (
        ("container_name", container_name), ("direction", direction), ("drop_reason", drop_reason), ("host", host),
        ("ifname", ifname), ("pod", pod), ("process", process), ("proto", proto_name(proto)),
        ("runtime", runtime), ("service_port", port), ("verdict", verdict), ("workload", workload),
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

    async def write(self, batch: FlowBatch) -> None:
        await asyncio.to_thread(self._call, self._post, batch)

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
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreFull(f"{self.where}: no space left ({exc.strerror}); free space") from exc
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

    def _post(self, batch: FlowBatch) -> None:
        """Encode (here, off the event loop, as the client's gzip is too) and post."""
        envelope = batch.envelope
        lines = encode_lines(batch, self.config.service_ports)
        if envelope.overflow:
            lines += encode_overflow_lines(envelope)
        if envelope.drops:
            lines += encode_drop_lines(envelope)
        for body in chunked(lines):
            self._writer.post_write(
                org=self.config.org, bucket=self.config.bucket, body=gzip.compress(body, GZIP_LEVEL),
                precision=WritePrecision.NS, content_encoding="gzip",
                content_type="text/plain; charset=utf-8",
            )

    def _query(self, flux: str, params: dict[str, Any] | None) -> list[dict]:
        # influxdb-client annotates `params: dict = None` but takes None (no bind parameters)
        tables = self._client.query_api().query(flux, org=self.config.org, params=params)  # type: ignore[arg-type]
        return [dict(record.values) for table in tables for record in table.records]


# What InfluxDB (OSS, Enterprise, Cloud) says when its disk or storage quota is full.
_OUT_OF_SPACE = re.compile(r"no space left|out of (disk )?space|disk (is )?full|insufficient storage"
                           r"|storage (quota|limit) (exceeded|reached)", re.IGNORECASE)


def _api_error(where: str, exc: ApiException) -> StoreError:
    status = exc.status or 0
    reason = f"{where} answered {status} {_one_line(exc.reason)}{_server_message(exc)}"
    if status == 507 or (status >= 400 and _OUT_OF_SPACE.search(_answer_text(exc))):
        return StoreFull(f"{reason}; the store is out of space: free space or raise its quota")
    if status == 429 or status >= 500:
        return StoreUnavailable(f"{reason}; retry later")
    if status in (401, 403):
        return StoreError(f"{reason}; check INFLUXDB_V2_TOKEN and its permissions")
    if status == 404:
        return StoreError(f"{reason}; check INFLUXDB_V2_ORG and the bucket name")
    return StoreError(f"{reason}; check the data and settings")


def _answer_text(exc: ApiException) -> str:
    body = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else str(exc.body or "")
    return f"{exc.reason} {getattr(exc, 'message', None) or ''} {body}"


def _server_message(exc: ApiException) -> str:
    message = getattr(exc, "message", None)
    return f" ({_one_line(message)})" if message else ""


def _one_line(text: Any) -> str:
    return " ".join(str(text or "").split())[:200]


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host))
