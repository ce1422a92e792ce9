"""Scale out on a real 3-node NATS JetStream cluster on loopback (tests/fixtures/nats_cluster.py).

A real `connstats probe` (BPF on a test veth) publishes with --stream-replicas 3 through all
three servers; two sinks share the durable consumer and write one SQLite file. The stream's
leader is SIGKILLed mid-stream and restarted. The stored totals equal what the kernel says
crossed the veth, exactly: nothing lost, and nothing counted twice (a message redelivered
after its ack was lost is written again with the same keys, which SQLite's ON CONFLICT DO
NOTHING keeps once; two stores would count it twice, so one shared file is what makes the
exact total the proof that the cluster delivered everything).
"""
from __future__ import annotations

import asyncio

import nats
import pytest

from connstats.probe.contract import (
    STREAM_NAME,
    NatsOptions,
    StreamSettings,
    TransportError,
    ensure_stream,
    flow_stream_config,
)
from connstats.sink.compose import SinkConfig, build_sink
from connstats.sink.consumer import ConsumerSettings
from tests.fixtures.cli import UDP_V4_OVERHEAD
from tests.fixtures.metrics import store_totals
from tests.fixtures.nats import read_stream
from tests.fixtures.wait import until_async

pytestmark = pytest.mark.kernel

SENT, SIZE, SECONDS = 6000, 200, 8.0


def sink_on(cluster, path) -> object:
    options = NatsOptions(servers=tuple(cluster.url_list), reconnect_time_wait=0.2, connect_timeout=2.0)
    return build_sink(SinkConfig(nats=options, store=f"sqlite:{path}", stream=StreamSettings(replicas=3),
                                 consumer=ConsumerSettings(ack_wait=5.0, fetch_timeout=0.5)))


async def test_leader_killed_mid_stream_loses_and_doubles_nothing(quiet_network, cs_env, start, nats_cluster,
                                                                   tmp_path):
    a, b = quiet_network
    database = tmp_path / "flows.sqlite"
    sinks = [sink_on(nats_cluster, database), sink_on(nats_cluster, database)]
    for sink in sinks:
        await sink.check()
    stop = asyncio.Event()
    running = [asyncio.create_task(sink.run(stop)) for sink in sinks]
    try:
        # both sinks pull from the one durable consumer: two pull requests wait on it at once
        await until_async(lambda: waiting_pulls(nats_cluster), 20, "a pull request of each sink")
        probe = start("probe", "--iface", a.host_if, "--interval", "0.5", "--nats", nats_cluster.urls,
                      "--stream-replicas", "3", "--http", "127.0.0.1:0", "--host", "cluster-probe")
        await asyncio.to_thread(probe.wait_for, "connstats probe: watching")
        # the probe created it with 3 replicas, one per server
        assert await settled_peers(nats_cluster) == (3, set(nats_cluster.servers))

        before = a.counters()
        traffic = a.popen_traffic("udp-paced", b.ipv4, 9000, 43000, SENT, SIZE, SECONDS)
        await asyncio.sleep(SECONDS / 3)
        leader = await nats_cluster.stream_leader(STREAM_NAME)
        nats_cluster.kill(leader)  # SIGKILL, mid-stream
        new_leader = await nats_cluster.stream_leader(STREAM_NAME, other_than=leader)  # elected meanwhile
        nats_cluster.start(leader)
        assert (await asyncio.to_thread(traffic.wait, 60)) == 0
        await nats_cluster.wait_ready()
        assert await asyncio.to_thread(probe.interrupt) == 0  # publishes the last interval
        after = a.counters()
        kernel = {(a.host_if, "egress"): (after["tx_packets"] - before["tx_packets"], after["tx_bytes"] - before["tx_bytes"]),
                  (a.host_if, "ingress"): (after["rx_packets"] - before["rx_packets"], after["rx_bytes"] - before["rx_bytes"])}
        assert kernel[a.host_if, "egress"] == (SENT, SENT * (UDP_V4_OVERHEAD + SIZE))
        expected = {key: value for key, value in kernel.items() if value != (0, 0)}  # + ICMP answers from b

        def all_stored() -> bool:
            if store_totals(database) == expected:
                return True
            assert not any(task.done() for task in running), [t.exception() for t in running if t.done()]
            return False

        await until_async(all_stored, 90, "exact totals stored", step=0.25,  # a lost ack is redelivered after ack_wait
                          detail=lambda: f"stored {store_totals(database)}, sent {expected}")
        assert "Traceback" not in probe.stderr
        consumer_peers = await durable_peers(nats_cluster)
    finally:
        stop.set()
        results = await asyncio.gather(*running, return_exceptions=True)
    assert not [r for r in results if isinstance(r, BaseException)], results
    stored = [result.stored_messages for result in results]
    # which sink gets a message is the server's choice (one may get none): together they stored all
    published = [m for m in await read_stream(nats_cluster.url_list[0]) if ".flows." in m.subject]
    assert sum(stored) >= len(published) > 0, (stored, len(published))
    assert consumer_peers == set(nats_cluster.servers)  # the durable consumer has the stream's 3 replicas
    assert store_totals(database) == expected  # still exact after both sinks stopped
    print(f"leader {leader} killed, {new_leader} took over; messages stored per sink: {stored}")


async def waiting_pulls(cluster) -> bool:
    """Whether both sinks' pull requests wait on the durable consumer (``num_waiting``)."""
    nc = await nats.connect(cluster.url_list)
    try:
        info = await nc.jetstream().consumer_info(STREAM_NAME, "connstats-sink")
        return info.num_waiting >= 2
    except nats.js.errors.NotFoundError:  # not made yet
        return False
    finally:
        await nc.close()


async def durable_peers(cluster, timeout: float = 15.0) -> set:
    """The servers holding the durable consumer, once each is known by name (a restarted
    server shows as None for a moment)."""
    nc = await nats.connect(cluster.url_list)
    try:
        async def peers() -> set:
            info = await nc.jetstream().consumer_info(STREAM_NAME, "connstats-sink")
            return {info.cluster.leader, *(replica.name for replica in info.cluster.replicas or ())}

        return await until_async(peers, timeout, step=0.2, fail=False, accept=lambda found: None not in found)
    finally:
        await nc.close()


async def settled_peers(cluster, timeout: float = 15.0) -> tuple[int, set]:
    """(replicas configured, the servers holding one) once every peer is known by name."""
    nc = await nats.connect(cluster.url_list)
    try:
        async def replicas() -> tuple[int, set]:
            info = await nc.jetstream().stream_info(STREAM_NAME)
            return info.config.num_replicas, {info.cluster.leader, *(r.name for r in info.cluster.replicas or ())}

        return await until_async(replicas, timeout, step=0.2, fail=False, accept=lambda found: None not in found[1])
    finally:
        await nc.close()


async def test_stream_replicas_are_raised_on_an_existing_stream_or_refused_in_one_line(nats_cluster):
    nc = await nats.connect(nats_cluster.url_list)
    try:
        js = nc.jetstream()
        await ensure_stream(js, flow_stream_config(StreamSettings(replicas=1)))
        assert (await js.stream_info(STREAM_NAME)).config.num_replicas == 1
        await ensure_stream(js, flow_stream_config(StreamSettings(replicas=3)))  # updated in place
        assert await settled_peers(nats_cluster) == (3, set(nats_cluster.servers))
        await ensure_stream(js, flow_stream_config(StreamSettings()))  # not set: left as it is
        assert (await js.stream_info(STREAM_NAME)).config.num_replicas == 3
        with pytest.raises(TransportError) as caught:
            await ensure_stream(js, flow_stream_config(StreamSettings(replicas=5)))  # 3 servers only
        message = str(caught.value)
        assert message.startswith("stream CONNSTATS has 3 replicas, --stream-replicas asks for 5, and the "
                                  "server refused the change (")
        assert message.endswith("); pass --stream-replicas 3 or change the stream with "
                                "`nats stream edit CONNSTATS --replicas 5`") and "\n" not in message
    finally:
        await nc.close()
