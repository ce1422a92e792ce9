"""InfluxStore against a real InfluxDB 2.x, when ``INFLUXDB_V2_URL`` says where one is.

Also needs ``INFLUXDB_V2_ORG`` and ``INFLUXDB_V2_TOKEN`` (read and write on the bucket),
and the bucket (``CONNSTATS_INFLUX_BUCKET``, default ``connstats``) must exist.
Each run writes under a host name of its own, so runs do not see each other's points.
"""
from __future__ import annotations

import datetime
import os
import time
import uuid

import pytest

from connstats.probe.contract.record import Envelope, FlowRecord
from connstats.probe.contract.wire import FlowBatch
from connstats.sink.influx_store import InfluxConfig, InfluxStore
from tests.fixtures.records import flow_record

pytestmark = pytest.mark.skipif(
    not os.environ.get("INFLUXDB_V2_URL"),
    reason="INFLUXDB_V2_URL is not set; set it, INFLUXDB_V2_ORG and INFLUXDB_V2_TOKEN to test a real InfluxDB 2.x",
)

SECOND = 1_000_000_000
READ_BACK = """
from(bucket: bucket)
  |> range(start: start, stop: stop)
  |> filter(fn: (r) => r._measurement == "connstats_flow" and r.host == host)
  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")
  |> group()
  |> sort(columns: ["_time"])
"""


def message(host: str) -> tuple[Envelope, list[FlowRecord]]:
    start = time.time_ns() // (10 * SECOND) * (10 * SECOND) - 60 * SECOND
    end = start + 10 * SECOND
    envelope = Envelope(host=host, boot_id="boot", interval_seq=1, interval_start=start,
                        interval_end=end, record_offset=100)
    records = [
        flow_record(interval_start=start, interval_end=end, ifindex=3, ifname="veth0", direction="egress",
                    family=4, proto=6, src_ip="10.0.0.2", dst_ip="10.0.0.9", src_port=40000, dst_port=443,
                    packets=10, bytes=1500, first_seen=start + 1, last_seen=start + 2, tcp_flags=0x18),
        flow_record(interval_start=start, interval_end=end, ifindex=3, ifname="veth0", direction="ingress",
                    family=4, proto=17, src_ip="10.0.0.9", dst_ip="10.0.0.2", src_port=53, dst_port=40001,
                    packets=2, bytes=180, first_seen=start + 3, last_seen=start + 4, tcp_flags=0),
        flow_record(interval_start=start, interval_end=end, ifindex=3, ifname="veth0", direction="egress",
                    family=6, proto=6, src_ip="fd00::2", dst_ip="fd00::9", src_port=40002, dst_port=9090,
                    packets=7, bytes=700, first_seen=start + 5, last_seen=start + 6, tcp_flags=0x02),
    ]
    return envelope, records


async def test_write_then_read_back_with_flux_params():
    host = f"connstats-test-{uuid.uuid4().hex[:12]}"
    envelope, records = message(host)
    store = InfluxStore(InfluxConfig.from_env(service_ports=frozenset({9090})))
    try:
        await store.ping()
        await store.write(FlowBatch.from_records(envelope, records))
        await store.write(FlowBatch.from_records(envelope, records))  # a replay overwrites the same points
        start = datetime.datetime.fromtimestamp(envelope.interval_start // SECOND - 1, datetime.timezone.utc)
        rows = await store.query(READ_BACK, {
            "bucket": store.config.bucket, "host": host,
            "start": start, "stop": start + datetime.timedelta(minutes=1),
        })
    finally:
        await store.close()
    assert [
        (r["direction"], r["proto"], r["service_port"], r["src_ip"], r["src_port"], r["packets"], r["bytes"])
        for r in rows
    ] == [
        ("egress", "tcp", "443", "10.0.0.2", 40000, 10, 1500),
        ("ingress", "udp", "53", "10.0.0.9", 53, 2, 180),
        ("egress", "tcp", "9090", "fd00::2", 40002, 7, 700),
    ]
    start_ns = envelope.interval_start + envelope.record_offset
    assert [_ns(r["_time"]) for r in rows] == [start_ns // 1000 * 1000] * 3  # datetime keeps µs


def _ns(moment: datetime.datetime) -> int:
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    return (moment - epoch) // datetime.timedelta(microseconds=1) * 1000
