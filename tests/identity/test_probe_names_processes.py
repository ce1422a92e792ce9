"""The probe as the CLI builds it (``build_probe``) names processes in what it publishes, and
``processes=False`` (``--no-processes``) leaves the columns empty: real BPF, a real
nats-server, a server on the host and a client in a namespace the test made."""
from __future__ import annotations

import asyncio

import pytest

from connstats.probe.compose import ProbeConfig, build_probe
from connstats.probe.contract import NatsOptions
from tests.fixtures.processes import start_program, wait_settled
from tests.fixtures.wait import until_async

pytestmark = pytest.mark.kernel

ETHERNET = 14


@pytest.mark.parametrize("processes", [True, False], ids=["processes", "no-processes"])
async def test_published_records_carry_both_ends_processes_unless_turned_off(
        nats_server, veth_netns, named_programs, tmp_path, processes):
    veth = veth_netns
    port = 9600
    published = []
    config = ProbeConfig(host="proc-e2e", nats=NatsOptions(servers=(nats_server.url,)), ifaces=[veth.host_if],
                         interval=0.3, state_dir=tmp_path, processes=processes, interval_listeners=[published.append])
    (tmp_path / "outbox").mkdir(exist_ok=True)
    daemon = build_probe(config)
    daemon.settings.probe.device_locks = str(tmp_path / "locks")
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await until_async(lambda: daemon.ready.is_set() or task.done(), 60, "the probe ready")
        assert not task.done(), task.result()
        veth.count("sent", [f"meta l4proto tcp th dport {port}", f"meta l4proto tcp th sport {port}"], "output")

        def converse():
            server = start_program(named_programs, veth, "server", in_netns=False, proto="tcp", address=veth.host4,
                                   port=port, count=50, size=1000)
            try:
                assert server.line()["ready"] == port
                client = start_program(named_programs, veth, "client", in_netns=True, proto="tcp",
                                       address=veth.host4, port=port, count=50, size=1000)
                client.finish()
                server.finish()
                wait_settled(veth)
                return server.pid, client.pid
            finally:
                server.stop()

        server_pid, client_pid = await asyncio.to_thread(converse)
        sent = veth.counted("sent")

        def ours():
            return [r for batch in published for r in batch.records() if r.proto == 6 and port in (r.src_port, r.dst_port)]

        def egress_totals():
            egress = [r for r in ours() if r.direction == "egress"]
            return sum(r.packets for r in egress), sum(r.bytes for r in egress)

        await until_async(egress_totals, 10, "the connection's packets published",
                          accept=lambda got: got == (sent[0], sent[1] + ETHERNET * sent[0]))
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    names = {(r.process, r.pid, r.peer_process, r.peer_pid) for r in ours()}
    if processes:
        assert names == {(named_programs.client_name, client_pid, named_programs.server_name, server_pid)}
    else:
        assert names == {("", 0, "", 0)}
