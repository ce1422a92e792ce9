"""The record type, the batch built from kernel arrays, and the wire format (schema 2, and 1 still read)."""
import dataclasses

import msgspec
import numpy as np
import pytest

from connstats.probe.contract.errors import MessageError
from connstats.probe.contract.record import Envelope, FlowRecord, OverflowCount, Owner, proto_name, proto_number
from connstats.probe.contract.wire import (
    FLOW_COLUMNS,
    OPTIONAL_COLUMNS,
    RECORD_FIELDS,
    FlowBatch,
    decode_message,
    encode_message,
    encode_message_v1,
)
from connstats.probe.kernel.loader import FLOW4_KEY, FLOW_COUNTERS, FLOW_KEY, widen_ipv4_keys
from tests.fixtures.records import flow_record

T0 = 1_790_000_000_000_000_000  # 2026-09-21, ns


def record(**changes) -> FlowRecord:
    fields = dict(interval_start=T0 + 1_000, interval_end=T0 + 2_000, packets=3, bytes=180,
                  first_seen=T0 + 1_100, last_seen=T0 + 1_900, tcp_flags=0x18)
    return flow_record(**(fields | changes))


ENVELOPE = Envelope(host="node-1", boot_id="b00t", interval_seq=5, interval_start=T0 + 1_000,
                    interval_end=T0 + 2_000, overflow=(OverflowCount(7, "veth0", "egress", 2, 120),))


def test_schema_2_is_the_documented_json():
    records = [record(container_name="web"), record(ifindex=8, ifname="veth1", direction="ingress", proto=17,
                                                     family=6, src_ip="fd00::1", dst_ip="fd00::2", src_port=53)]
    data = encode_message(FlowBatch.from_records(ENVELOPE, records))
    assert msgspec.json.decode(data) == {
        "schema": 2, "host": "node-1", "boot_id": "b00t", "interval_seq": 5,
        "interval_start": T0 + 1_000, "interval_end": T0 + 2_000, "chunk": 0, "chunks": 1, "record_offset": 0,
        "overflow": [{"ifindex": 7, "ifname": "veth0", "direction": "egress", "packets": 2, "bytes": 120}],
        "devices": [  # empty owner fields are left out
            {"ifindex": 7, "ifname": "veth0", "container_name": "web"},
            {"ifindex": 8, "ifname": "veth1"},
        ],
        "flows": {
            "ifindex": [7, 8], "direction": ["egress", "ingress"], "family": [4, 6], "proto": [6, 17],
            "src_ip": ["10.0.0.1", "fd00::1"], "dst_ip": ["10.0.0.2", "fd00::2"], "src_port": [40000, 53],
            "dst_port": [443, 443], "packets": [3, 3], "bytes": [180, 180], "first_seen": [T0 + 1_100] * 2,
            "last_seen": [T0 + 1_900] * 2, "tcp_flags": [24, 24],
        },
    }
    # verdict and the process columns are left out while no record has one (what sinks
    # before policies, and before processes, read)
    assert tuple(msgspec.json.decode(data)["flows"]) == tuple(c for c in FLOW_COLUMNS if c not in OPTIONAL_COLUMNS)


def test_schema_2_round_trip_keeps_every_field_and_iterates_records():
    records = [record(), record(proto=17, src_port=53, family=6, src_ip="fd00::1", dst_ip="fd00::2"),
               record(proto=1, src_port=0, dst_port=0), record(proto=47, ifindex=9, ifname="veth9",
                                                                container_id="c" * 64, container_image="nginx"),
               record(family=0, src_ip="", dst_ip="", proto=0, src_port=0, dst_port=0)]
    batch = decode_message(encode_message(FlowBatch.from_records(ENVELOPE, records)))
    assert (batch.envelope, batch.records(), list(batch), len(batch)) == (ENVELOPE, records, records, 5)


def test_a_swapped_pair_of_ports_fails():
    batch = decode_message(encode_message(FlowBatch.from_records(ENVELOPE, [record()])))
    assert (batch.column("src_port"), batch.column("dst_port")) == ([40000], [443])
    assert [(r.src_port, r.dst_port) for r in batch] == [(40000, 443)]


def test_the_fields_of_a_record_are_the_columns_the_devices_and_the_interval():
    assert set(RECORD_FIELDS) == {*FLOW_COLUMNS, "ifname", "container_id", "container_name",
                                  "container_image", "pod", "workload", "runtime", "interval_start",
                                  "interval_end"}


def test_slice_keeps_its_devices_and_moves_the_record_offset():
    records = [record(), record(ifindex=8, ifname="veth1"), record(src_port=1)]
    part = FlowBatch.from_records(ENVELOPE, records).slice(1, 3)
    assert (part.envelope.record_offset, part.records(), [d.ifindex for d in part.devices]) == (
        1, records[1:], [7, 8])


def test_from_records_refuses_two_names_for_one_ifindex():
    with pytest.raises(ValueError):
        FlowBatch.from_records(ENVELOPE, [record(), record(ifname="other")])


def test_schema_1_is_the_documented_json():
    data = encode_message_v1(ENVELOPE, [record(container_name="web")])
    assert msgspec.json.decode(data) == {
        "schema": 1, "host": "node-1", "boot_id": "b00t", "interval_seq": 5,
        "interval_start": T0 + 1_000, "interval_end": T0 + 2_000, "chunk": 0, "chunks": 1, "record_offset": 0,
        "overflow": [{"ifindex": 7, "ifname": "veth0", "direction": "egress", "packets": 2, "bytes": 120}],
        "records": [{
            "ifname": "veth0", "ifindex": 7, "direction": "egress", "proto": "tcp", "family": 4,
            "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "src_port": 40000, "dst_port": 443,
            "packets": 3, "bytes": 180, "first_seen": T0 + 1_100, "last_seen": T0 + 1_900, "tcp_flags": 24,
            "container_id": "", "container_name": "web", "container_image": "",
        }],
    }


def test_schema_1_is_still_read_and_keeps_every_field():
    records = [record(), record(proto=17, src_port=53, family=6, src_ip="fd00::1", dst_ip="fd00::2"),
               record(proto=1, src_port=0, dst_port=0), record(proto=47)]
    batch = decode_message(encode_message_v1(ENVELOPE, records))
    envelope, decoded = batch.envelope, batch.records()
    assert envelope == dataclasses.replace(ENVELOPE, schema=1)
    assert decoded == records


@pytest.mark.parametrize("number,name", [(6, "tcp"), (17, "udp"), (1, "icmp"), (58, "icmpv6"), (47, "47"), (0, "0")])
def test_protocol_names(number, name):
    assert proto_name(number) == name
    assert proto_number(name) == number
    assert proto_number(str(number)) == number  # the number itself, always


def bad(mutate) -> bytes:
    doc = msgspec.json.decode(encode_message_v1(ENVELOPE, [record()]))
    mutate(doc)
    return msgspec.json.encode(doc)


@pytest.mark.parametrize("payload,reason", [
    (b"{not json", "not JSON: JSON is malformed: object keys must be strings (byte 1)"),
    (b"[1, 2]", "Expected `object`, got `array`"),
    (bad(lambda d: d.update(schema=3)), "schema version 3 is not 1 or 2 - at `$.schema`"),
    (bad(lambda d: d.update(schema=2)), "Object contains unknown field `records`"),
    (bad(lambda d: d.pop("host")), "Object missing required field `host`"),
    (bad(lambda d: d.update(interval_seq="5")), "Expected `int`, got `str` - at `$.interval_seq`"),
    (bad(lambda d: d["records"][0].pop("bytes")), "Object missing required field `bytes` - at `$.records[0]`"),
    (bad(lambda d: d["records"][0].update(packets=1.5)), "Expected `int`, got `float` - at `$.records[0].packets`"),
    (bad(lambda d: d["records"][0].update(packets=True)), "Expected `int`, got `bool` - at `$.records[0].packets`"),
    (bad(lambda d: d["records"][0].update(bytes=-5)), "Expected `int` >= 0 - at `$.records[0].bytes`"),
    (bad(lambda d: d["records"][0].update(extra=1)), "Object contains unknown field `extra` - at `$.records[0]`"),
    (bad(lambda d: d["records"][0].update(direction="up")), "Invalid enum value 'up' - at `$.records[0].direction`"),
    (bad(lambda d: d["records"][0].update(proto="tcpx")), "unknown protocol 'tcpx'; use tcp, udp, icmp, icmpv6 or a number 0-255"),
    (bad(lambda d: d["records"].append(3)), "Expected `object`, got `int` - at `$.records[1]`"),
    (bad(lambda d: d["records"][0].update(dst_port=70000)), "Expected `int` <= 65535 - at `$.records[0].dst_port`"),
    (bad(lambda d: d["records"][0].update(src_port=-1)), "Expected `int` >= 0 - at `$.records[0].src_port`"),
    (bad(lambda d: d["overflow"].append({"ifindex": 1})), "Object missing required field `ifname` - at `$.overflow[1]`"),
])
def test_malformed_messages_say_what_is_wrong(payload, reason):
    with pytest.raises(MessageError) as caught:
        decode_message(payload)
    assert str(caught.value) == reason


def test_a_batch_from_arrays_decodes_both_families_and_wall_clock():
    keys4 = np.zeros(2, dtype=FLOW4_KEY)
    keys4["ifindex"], keys4["direction"], keys4["family"], keys4["proto"] = 7, [0, 1], 4, 17
    keys4["src"] = [b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02"]
    keys4["dst"] = b"\x0a\x00\x00\x09"
    keys4["sport"], keys4["dport"] = [5353, 40000], [53, 53]
    keys6 = np.zeros(1, dtype=FLOW_KEY)
    keys6["ifindex"], keys6["family"], keys6["proto"] = 8, 6, 6
    keys6["src"] = bytes.fromhex("fd000000000000000000000000000001")
    keys6["dst"] = bytes.fromhex("fd000000000000000000000000000002")
    keys = np.concatenate([widen_ipv4_keys(keys4), keys6])
    values = np.zeros(3, dtype=FLOW_COUNTERS)
    values["packets"], values["bytes"] = [1, 2, 3], [100, 200, 300]
    values["first_seen_ns"], values["last_seen_ns"], values["tcp_flags"] = 10, 20, [0, 0, 0x12]
    envelope = Envelope("h", "b", 1, 5, 50)
    batch = FlowBatch.from_arrays(envelope, keys, values, mono_to_wall_ns=1_000, ifnames={7: "veth7", 8: "veth8"},
                                  owners={8: Owner("c1d", "db", "postgres:16")})
    on_the_wire = FlowBatch.from_arrays(ENVELOPE, keys, values, mono_to_wall_ns=T0, ifnames={7: "veth7"})
    assert decode_message(encode_message(on_the_wire)).records() == on_the_wire.records()  # from numpy columns
    assert batch.records() == [
        flow_record(interval_start=5, interval_end=50, ifindex=7, ifname="veth7", direction="ingress", family=4,
                    proto=17, src_ip="10.0.0.1", dst_ip="10.0.0.9", src_port=5353, dst_port=53, packets=1,
                    bytes=100, first_seen=1010, last_seen=1020, tcp_flags=0),
        flow_record(interval_start=5, interval_end=50, ifindex=7, ifname="veth7", direction="egress", family=4,
                    proto=17, src_ip="10.0.0.2", dst_ip="10.0.0.9", src_port=40000, dst_port=53, packets=2,
                    bytes=200, first_seen=1010, last_seen=1020, tcp_flags=0),
        flow_record(interval_start=5, interval_end=50, ifindex=8, ifname="veth8", direction="ingress", family=6,
                    proto=6, src_ip="fd00::1", dst_ip="fd00::2", src_port=0, dst_port=0, packets=3, bytes=300,
                    first_seen=1010, last_seen=1020, tcp_flags=0x12, container_id="c1d", container_name="db",
                    container_image="postgres:16"),
    ]


# -- the bounds of every number and text (just inside passes, just outside fails) ------------

from connstats.probe.contract.record import TIME_MAX, TIME_MIN  # noqa: E402

TOP = 2**63 - 1


def set_record(field, value):
    return lambda d: d["records"][0].update({field: value})


def set_overflow(field, value):
    return lambda d: d["overflow"][0].update({field: value})


def set_envelope(field, value):
    return lambda d: d.update({field: value})


def set_record_pair(**values):
    return lambda d: d["records"][0].update(values)


INSIDE = [
    *[set_record(f, TOP) for f in ("packets", "bytes", "tcp_flags")],
    *[set_record(f, 0) for f in ("packets", "bytes", "tcp_flags", "ifindex", "src_port", "dst_port")],
    *[set_overflow(f, TOP) for f in ("packets", "bytes")],
    set_record("ifindex", 2**32 - 1), set_overflow("ifindex", 2**32 - 1), set_overflow("ifindex", 0),
    set_record("src_port", 65535), set_record("dst_port", 65535),
    set_record("proto", "255"), set_record("proto", "0"), set_record("proto", "udp"),
    set_record_pair(family=6, src_ip="fd00::1", dst_ip="::ffff:10.0.0.1"),
    set_record_pair(family=0, src_ip="", dst_ip="", proto="0", src_port=0, dst_port=0),
    set_record("first_seen", TIME_MIN), set_record("last_seen", TIME_MAX - 1),
    set_envelope("interval_start", TIME_MIN), set_envelope("interval_end", TIME_MAX - 1),
    set_envelope("interval_end", T0 + 1_000),  # == interval_start
    set_envelope("interval_seq", TOP), set_envelope("interval_seq", 0),
    lambda d: d.update(chunk=2, chunks=3, overflow=[]), set_envelope("record_offset", 0),
    set_envelope("record_offset", 2**32 - 1),
    set_record("ifname", "x" * 15), set_overflow("ifname", "y" * 15), set_envelope("host", "h" * 1024),
    set_record("container_name", "n" * 1024), set_record("container_image", "i" * 1024),
    set_record("container_id", "c" * 128),
]


@pytest.mark.parametrize("mutate", INSIDE)
def test_values_just_inside_the_bounds_decode(mutate):
    batch = decode_message(bad(mutate))
    envelope, records = batch.envelope, batch.records()
    assert (len(records), envelope.chunk < envelope.chunks) == (1, True)


@pytest.mark.parametrize("mutate, reason", [
    (set_record("packets", 2**63), "Expected `int` <= 9223372036854775807 - at `$.records[0].packets`"),
    (set_record("bytes", 2**63), "Expected `int` <= 9223372036854775807 - at `$.records[0].bytes`"),
    (set_record("tcp_flags", 2**63), "Expected `int` <= 9223372036854775807 - at `$.records[0].tcp_flags`"),
    (set_record("tcp_flags", -1), "Expected `int` >= 0 - at `$.records[0].tcp_flags`"),
    (set_overflow("packets", 2**63), "Expected `int` <= 9223372036854775807 - at `$.overflow[0].packets`"),
    (set_overflow("bytes", 2**64), "Expected `int` <= 9223372036854775807 - at `$.overflow[0].bytes`"),
    (set_overflow("bytes", -1), "Expected `int` >= 0 - at `$.overflow[0].bytes`"),
    (set_record("ifindex", 2**32), "Expected `int` <= 4294967295 - at `$.records[0].ifindex`"),
    (set_record("ifindex", -1), "Expected `int` >= 0 - at `$.records[0].ifindex`"),
    (set_overflow("ifindex", 2**32), "Expected `int` <= 4294967295 - at `$.overflow[0].ifindex`"),
    (set_record("src_port", 65536), "Expected `int` <= 65535 - at `$.records[0].src_port`"),
    (set_record("family", 5), "Invalid enum value 5 - at `$.records[0].family`"),
    (set_record("family", 6), "address '10.0.0.1' is not family 6 - at `$.records[0]`"),
    (set_record_pair(family=4, dst_ip="fd00::2"), "address 'fd00::2' is not family 4 - at `$.records[0]`"),
    (set_record_pair(family=0, src_ip="", dst_ip="10.0.0.2"), "address '10.0.0.2' is not family 0 - at `$.records[0]`"),
    (set_record_pair(family=4, src_ip=""), "address '' is not family 4 - at `$.records[0]`"),
    (set_record("src_ip", "10.0.0.256"), "address '10.0.0.256' is not family 4 - at `$.records[0]`"),
    (set_record("src_ip", "10.0.0.1\x00"), "address '10.0.0.1\\x00' is not family 4 - at `$.records[0]`"),
    (set_record("src_ip", "x" * 46), "Expected `str` of length <= 45 - at `$.records[0].src_ip`"),
    (set_record("proto", "256"), "unknown protocol '256'; use tcp, udp, icmp, icmpv6 or a number 0-255"),
    (set_record("proto", "²"), "unknown protocol '²'; use tcp, udp, icmp, icmpv6 or a number 0-255"),
    (set_record("proto", "x" * 9), "Expected `str` of length <= 8 - at `$.records[0].proto`"),
    (set_record("first_seen", TIME_MIN - 1), f"Expected `int` >= {TIME_MIN} - at `$.records[0].first_seen`"),
    (set_record("last_seen", TIME_MAX), f"Expected `int` <= {TIME_MAX - 1} - at `$.records[0].last_seen`"),
    (set_envelope("interval_start", TIME_MIN - 1), f"Expected `int` >= {TIME_MIN} - at `$.interval_start`"),
    (set_envelope("interval_end", TIME_MAX), f"Expected `int` <= {TIME_MAX - 1} - at `$.interval_end`"),
    (set_envelope("interval_end", T0 + 999),
     f"interval_end {T0 + 999} is before interval_start {T0 + 1_000} - at `$.interval_end`"),
    (set_envelope("interval_seq", -1), "Expected `int` >= 0 - at `$.interval_seq`"),
    (set_envelope("interval_seq", 2**63), "Expected `int` <= 9223372036854775807 - at `$.interval_seq`"),
    (lambda d: d.update(chunk=3, chunks=3), "chunk 3 is not below chunks 3 - at `$.chunk`"),
    (set_envelope("chunks", 0), "Expected `int` >= 1 - at `$.chunks`"),
    (set_envelope("chunk", -1), "Expected `int` >= 0 - at `$.chunk`"),
    (set_envelope("record_offset", -1), "Expected `int` >= 0 - at `$.record_offset`"),
    (set_envelope("record_offset", 2**32), "Expected `int` <= 4294967295 - at `$.record_offset`"),
    (set_record("ifname", "x" * 16), "Expected `str` of length <= 15 - at `$.records[0].ifname`"),
    (set_overflow("ifname", "y" * 16), "Expected `str` of length <= 15 - at `$.overflow[0].ifname`"),
    (set_envelope("host", "h" * 1025), "Expected `str` of length <= 1024 - at `$.host`"),
    (set_envelope("host", ""), "Expected `str` of length >= 1 - at `$.host`"),
    (set_record("container_name", "n" * 1025), "Expected `str` of length <= 1024 - at `$.records[0].container_name`"),
    (set_record("container_image", "i" * 1025), "Expected `str` of length <= 1024 - at `$.records[0].container_image`"),
    (set_record("container_id", "c" * 129), "Expected `str` of length <= 128 - at `$.records[0].container_id`"),
    (set_envelope("boot_id", "b" * 129), "Expected `str` of length <= 128 - at `$.boot_id`"),
    (set_envelope("schema", 0), "schema version 0 is not 1 or 2 - at `$.schema`"),
])
def test_values_just_outside_the_bounds_say_which_field(mutate, reason):
    with pytest.raises(MessageError) as caught:
        decode_message(bad(mutate))
    assert str(caught.value) == reason


def test_mixed_families_are_checked_per_record():
    records = [record(), record(family=6, src_ip="fd00::1", dst_ip="fd00::2", src_port=1),
               record(family=0, src_ip="", dst_ip="", proto=0, src_port=0, dst_port=0)]
    assert decode_message(encode_message_v1(ENVELOPE, records)).records() == records
    swapped = [record(), record(family=6, src_ip="fd00::1", dst_ip="10.0.0.2", src_port=1)]
    with pytest.raises(MessageError) as caught:
        decode_message(encode_message_v1(ENVELOPE, swapped))
    assert str(caught.value) == "address '10.0.0.2' is not family 6 - at `$.records[1]`"


def test_only_chunk_0_carries_overflow():
    with pytest.raises(MessageError) as caught:
        decode_message(bad(lambda d: d.update(chunk=1, chunks=2)))
    assert str(caught.value) == "chunk 1 carries overflow; only chunk 0 does - at `$.overflow`"
    batch = decode_message(bad(lambda d: d.update(chunk=1, chunks=2, overflow=[])))
    envelope, _ = batch.envelope, batch.records()
    assert (envelope.chunk, envelope.overflow) == (1, ())


def test_an_address_with_an_escaped_lone_surrogate_is_refused():
    payload = encode_message_v1(ENVELOPE, [record()]).replace(b'"10.0.0.1"', b'"10.0.0.1\\udcff"')
    with pytest.raises(MessageError) as caught:
        decode_message(payload)
    assert str(caught.value) == "not JSON: JSON is malformed: invalid utf-16 surrogate pair (byte 373)"


# -- schema 2: the same bounds, column-wise, and the rules of the columns ------------------------


def bad2(mutate) -> bytes:
    records = [record(), record(src_port=40001)]
    doc = msgspec.json.decode(encode_message(FlowBatch.from_records(ENVELOPE, records)))
    mutate(doc)
    return msgspec.json.encode(doc)


def set_column(field, value, at=1):
    return lambda d: d["flows"][field].__setitem__(at, value)


def set_device(field, value):
    return lambda d: d["devices"][0].update({field: value})


@pytest.mark.parametrize("mutate", [
    *[set_column(f, TOP) for f in ("packets", "bytes", "tcp_flags")],
    set_column("src_port", 65535), set_column("dst_port", 0), set_column("proto", 255),
    set_column("first_seen", TIME_MIN), set_column("last_seen", TIME_MAX - 1),
    set_device("ifname", "x" * 15), set_device("container_id", "c" * 128), set_device("container_name", "n" * 1024),
    lambda d: d.update(chunk=2, chunks=3, overflow=[]),
    lambda d: [d["flows"][name].__setitem__(1, value) for name, value in
               (("family", 6), ("src_ip", "fd00::1"), ("dst_ip", "::ffff:10.0.0.1"))],
])
def test_schema_2_values_just_inside_the_bounds_decode(mutate):
    assert len(decode_message(bad2(mutate))) == 2


@pytest.mark.parametrize("mutate, reason", [
    (set_column("packets", 2**63), "Expected `int` <= 9223372036854775807 - at `$.flows.packets[1]`"),
    (set_column("bytes", -1), "Expected `int` >= 0 - at `$.flows.bytes[1]`"),
    (set_column("bytes", 1.5), "Expected `int`, got `float` - at `$.flows.bytes[1]`"),
    (set_column("tcp_flags", 2**63), "Expected `int` <= 9223372036854775807 - at `$.flows.tcp_flags[1]`"),
    (set_column("ifindex", 2**32), "Expected `int` <= 4294967295 - at `$.flows.ifindex[1]`"),
    (set_column("src_port", 65536), "Expected `int` <= 65535 - at `$.flows.src_port[1]`"),
    (set_column("dst_port", -1), "Expected `int` >= 0 - at `$.flows.dst_port[1]`"),
    (set_column("proto", 256), "Expected `int` <= 255 - at `$.flows.proto[1]`"),
    (set_column("family", 5), "Invalid enum value 5 - at `$.flows.family[1]`"),
    (set_column("direction", "up"), "Invalid enum value 'up' - at `$.flows.direction[1]`"),
    (set_column("first_seen", TIME_MIN - 1), f"Expected `int` >= {TIME_MIN} - at `$.flows.first_seen[1]`"),
    (set_column("last_seen", TIME_MAX), f"Expected `int` <= {TIME_MAX - 1} - at `$.flows.last_seen[1]`"),
    (set_column("src_ip", "x" * 46), "Expected `str` of length <= 45 - at `$.flows.src_ip[1]`"),
    (set_column("family", 6), "address '10.0.0.1' is not family 6 - at `$.flows.src_ip[1]`"),
    (set_column("dst_ip", "fd00::2"), "address 'fd00::2' is not family 4 - at `$.flows.dst_ip[1]`"),
    (set_column("src_ip", "10.0.0.256"), "address '10.0.0.256' is not family 4 - at `$.flows.src_ip[1]`"),
    (set_column("src_ip", "10.0.0.1\x00"), "address '10.0.0.1\\x00' is not family 4 - at `$.flows.src_ip[1]`"),
    (lambda d: d["flows"]["bytes"].pop(),
     "flows.bytes has 1 entries, flows.ifindex 2; every column has one per record - at `$.flows.bytes`"),
    (lambda d: d["flows"]["src_ip"].append("10.0.0.3"),
     "flows.src_ip has 3 entries, flows.ifindex 2; every column has one per record - at `$.flows.src_ip`"),
    (lambda d: d["flows"].pop("tcp_flags"), "Object missing required field `tcp_flags` - at `$.flows`"),
    (lambda d: d["flows"].update(extra=[]), "Object contains unknown field `extra` - at `$.flows`"),
    (lambda d: d.pop("devices"), "Object missing required field `devices`"),
    (lambda d: d["devices"].clear(), "ifindex 7 has no entry in devices - at `$.flows.ifindex`"),
    (lambda d: d["devices"].append(d["devices"][0]), "a device is listed twice - at `$.devices`"),
    (set_device("ifname", "x" * 16), "Expected `str` of length <= 15 - at `$.devices[0].ifname`"),
    (set_device("container_id", "c" * 129), "Expected `str` of length <= 128 - at `$.devices[0].container_id`"),
    (set_device("container_image", "i" * 1025),
     "Expected `str` of length <= 1024 - at `$.devices[0].container_image`"),
    (set_envelope("interval_end", T0 + 999),
     f"interval_end {T0 + 999} is before interval_start {T0 + 1_000} - at `$.interval_end`"),
    (lambda d: d.update(chunk=3, chunks=3), "chunk 3 is not below chunks 3 - at `$.chunk`"),
    (lambda d: d.update(chunk=1, chunks=2), "chunk 1 carries overflow; only chunk 0 does - at `$.overflow`"),
    (set_envelope("host", ""), "Expected `str` of length >= 1 - at `$.host`"),
    (set_envelope("schema", 3), "schema version 3 is not 1 or 2 - at `$.schema`"),
    (lambda d: d.pop("schema"), "Object missing required field `schema`"),
])
def test_schema_2_values_just_outside_the_bounds_say_which_field(mutate, reason):
    with pytest.raises(MessageError) as caught:
        decode_message(bad2(mutate))
    assert str(caught.value) == reason


def test_busiest_on_device_and_concat_work_on_columns():
    records = [record(bytes=10, packets=1), record(ifindex=8, ifname="veth1", bytes=30, packets=1, src_port=2),
               record(bytes=30, packets=5, src_port=3), record(bytes=30, packets=1, src_port=4)]
    batch = FlowBatch.from_records(ENVELOPE, records)
    assert [r.src_port for r in batch.busiest(3)] == [3, 2, 4]  # bytes, then packets, then order
    assert batch.on_device("veth1").records() == [records[1]]
    assert [d.ifname for d in batch.on_device("veth1").devices] == ["veth1"]
    assert FlowBatch.concat(ENVELOPE, [batch.slice(0, 1), batch.slice(1, 4)]).records() == records


def test_a_probe_side_batch_keeps_numpy_columns_until_asked():
    keys = np.zeros(2, dtype=FLOW_KEY)
    keys["ifindex"], keys["family"], keys["proto"], keys["sport"] = 7, 0, 1, [0, 0]
    values = np.zeros(2, dtype=FLOW_COUNTERS)
    values["packets"], values["bytes"] = [2, 9], [200, 900]
    batch = FlowBatch.from_arrays(ENVELOPE, keys, values, mono_to_wall_ns=T0, ifnames={7: "veth7"})
    assert isinstance(batch.columns.bytes, np.ndarray)
    assert batch.column("bytes") == [200, 900] and type(batch.column("bytes")[0]) is int
    assert [r.bytes for r in batch.busiest(1)] == [900]
