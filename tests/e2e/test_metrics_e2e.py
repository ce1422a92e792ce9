"""End to end: the self-metrics and health checks of real `connstats up`, `probe` and `sink`
processes, real BPF on test veths, real nats-server, real SQLite.

After known traffic the probe's packet and byte counters for a device equal the store's
totals for it and the kernel's counters of the veth, exactly. /readyz turns 503 when the
nats-server goes away and 200 when it is back. Every process is stopped by pid at teardown.
"""
from __future__ import annotations

import re
import sqlite3
import sys
from pathlib import Path

import pytest

from tests.fixtures.cli import UDP_V4_OVERHEAD
from tests.fixtures.http import http_request
from tests.fixtures.metrics import get, samples, store_totals
from tests.fixtures.nats import free_port
from tests.fixtures.wait import steady, until

pytestmark = pytest.mark.kernel


def traffic_of(got: dict, iface: str, direction: str) -> tuple[float, float]:
    labels = (("direction", direction), ("iface", iface))
    return got.get(("connstats_packets_total", labels), 0), got.get(("connstats_bytes_total", labels), 0)


def test_up_counters_equal_the_store_and_the_kernel_exactly(quiet_network, cs_env, start):
    a, b = quiet_network
    http, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    up = start("up", "--iface", a.host_if, "--iface", b.host_if, "--interval", "0.5", "--http", http,
               "--metrics", metrics)
    up.wait_for("connstats up: watching")
    endpoint = f"http://{metrics}"
    until(lambda: get(endpoint + "/readyz") == (200, "ready\n"), 30, "ready sink and probe")
    assert get(endpoint + "/healthz") == (200, "ok\n")
    before = {host.host_if: host.counters() for host in (a, b)}
    a.traffic("udp", b.ipv4, 5353, 40001, 1000, 100)
    a.traffic("udp", b.ipv4, 5353, 40002, 300, 1200)
    # b's ICMP port-unreachable answers (rate-limited by b's kernel) are out once the counters stay still
    after = steady(lambda: {host.host_if: host.counters() for host in (a, b)}, what="quiet veths")
    # on the host-side veth of a namespace, what the namespace sends is "egress", what it gets "ingress"
    kernel = {}
    for host in (a, b):
        now, then = after[host.host_if], before[host.host_if]
        kernel[host.host_if, "egress"] = (now["tx_packets"] - then["tx_packets"], now["tx_bytes"] - then["tx_bytes"])
        kernel[host.host_if, "ingress"] = (now["rx_packets"] - then["rx_packets"], now["rx_bytes"] - then["rx_bytes"])
    udp = (1300, 1000 * (UDP_V4_OVERHEAD + 100) + 300 * (UDP_V4_OVERHEAD + 1200))
    assert kernel[a.host_if, "egress"] == kernel[b.host_if, "ingress"] == udp
    assert kernel[b.host_if, "egress"] == kernel[a.host_if, "ingress"]  # ICMP answers only

    database = Path(cs_env["CONNSTATS_STATE_DIR"]) / "flows.sqlite"

    def settled():  # an interval is counted just before it is published: wait for both
        got = samples(endpoint)
        published = got[("connstats_published_messages_total", ())]
        done = (all(traffic_of(got, *key) == counts for key, counts in kernel.items())
                and got[("connstats_outbox_messages", ())] == 0
                and got[("connstats_sink_messages_total", ())] == published
                and store_totals(database) == {k: traffic_of(got, *k) for k in kernel if traffic_of(got, *k) != (0, 0)})
        return got if done else None

    got = until(settled, 30, "counters equal to the kernel's, published and stored")
    counted = {key: traffic_of(got, *key) for key in kernel}
    assert counted == kernel  # the probe's counters equal the veths' kernel counters
    assert {(dict(k[1])["iface"], dict(k[1])["direction"]) for k in got if k[0] == "connstats_packets_total"} \
        == set(kernel)
    stored = store_totals(database)
    assert stored == {key: value for key, value in counted.items() if value != (0, 0)}  # ... and the store's
    assert got[("connstats_sink_records_total", ())] == got[("connstats_published_records_total", ())]
    # the sink's login on up's embedded server may read its consumer's lag
    until(lambda: samples(endpoint).get(("connstats_sink_consumer_pending", (("consumer", "connstats-sink"),))) == 0,
               15, "the consumer's lag read")
    assert got[("connstats_attached_devices", ())] == 2 and got[("connstats_attach_failures_total", ())] == 0
    assert got[("connstats_map_capacity", (("family", "ipv4"),))] == 131072
    assert not [k for k in got if k[0] == "connstats_overflow_packets_total"]  # nothing overflowed
    intervals = got[("connstats_intervals_total", ())]  # all polled here: none was recovered
    assert [got[(f"{name}_count", ())] for name in ("connstats_poll_duration_seconds",
            "connstats_drain_duration_seconds", "connstats_interval_records")] == [intervals] * 3
    # the probe's own listener serves the same registry (one endpoint's worth for everything `up` runs)
    on_http = samples(f"http://{http}")
    assert {k[0] for k in on_http if k[0].startswith("connstats_")} == {k[0] for k in got if k[0].startswith("connstats_")}
    assert get(f"http://{http}/readyz") == (200, "ready\n")
    assert up.interrupt() == 0
    assert "Traceback" not in up.stderr


def test_readyz_follows_nats_for_probe_and_sink(quiet_network, cs_env, start, nats_server, tmp_path):
    a, b = quiet_network
    http, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    sink = start("sink", "--nats", nats_server.url, "--store", f"sqlite:{tmp_path / 'flows.sqlite'}",
                 "--metrics", metrics)
    sink.wait_for("sink consuming")
    probe = start("probe", "--iface", a.host_if, "--interval", "0.5", "--nats", nats_server.url, "--http", http)
    probe.wait_for("connstats probe: watching")
    probe_url, sink_url = f"http://{http}", f"http://{metrics}"
    for url in (probe_url, sink_url):
        until(lambda url=url: get(url + "/readyz") == (200, "ready\n"), 30, f"{url} ready")
    nats_server.kill()
    assert until(lambda: get(probe_url + "/readyz") == (503, "probe: NATS is not connected\n"), 30, "probe 503")
    assert until(lambda: get(sink_url + "/readyz") == (503, "sink: NATS is not connected\n"), 30, "sink 503")
    assert get(probe_url + "/healthz") == get(sink_url + "/healthz") == (200, "ok\n")  # alive all the same
    a.traffic("udp", b.ipv4, 7000, 42000, 250, 64)  # counted meanwhile, kept in the outbox
    nats_server.start()
    for url in (probe_url, sink_url):
        until(lambda url=url: get(url + "/readyz") == (200, "ready\n"), 30, f"{url} ready again")
    expected = (250, 250 * (UDP_V4_OVERHEAD + 64))

    def stored():
        p, s = samples(probe_url), samples(sink_url)
        counted = {(a.host_if, d): traffic_of(p, a.host_if, d) for d in ("egress", "ingress")}
        return (p, s) if (traffic_of(p, a.host_if, "egress") == expected and p[("connstats_outbox_messages", ())] == 0
                          and s[("connstats_sink_records_total", ())] == p[("connstats_published_records_total", ())]
                          and store_totals(tmp_path / "flows.sqlite") == {k: v for k, v in counted.items() if v != (0, 0)}
                          ) else None

    on_probe, on_sink = until(stored, 30, "the outage's traffic stored")
    assert on_probe[("connstats_nats_reconnects_total", ())] == 1  # one outage, one reconnect
    assert on_sink[("connstats_sink_nats_reconnects_total", ())] == 1
    counted = {(a.host_if, d): traffic_of(on_probe, a.host_if, d) for d in ("egress", "ingress")}
    assert counted[a.host_if, "egress"] == expected  # plus b's ICMP port-unreachable answers as ingress
    assert store_totals(tmp_path / "flows.sqlite") == {k: v for k, v in counted.items() if v != (0, 0)}
    assert probe.interrupt() == 0 and sink.interrupt() == 0
    assert "Traceback" not in probe.stderr + sink.stderr


def test_overflow_counters_equal_the_stored_overflow_and_a_full_map_is_a_warning(quiet_network, cs_env, start):
    from tests.fixtures.traffic import CONNECTIONS, SEND_FROM_MANY_PORTS, SIZE

    a, b = quiet_network
    metrics = f"127.0.0.1:{free_port()}"
    up = start("up", "--iface", a.host_if, "--capacity", "16", "--interval", "0.5", "--http", "none",
               "--metrics", metrics)
    up.wait_for("connstats up: watching")
    endpoint = f"http://{metrics}"
    before = a.counters()
    a.run(sys.executable, "-c", SEND_FROM_MANY_PORTS, b.ipv4, "43000", str(CONNECTIONS), str(SIZE))
    after = steady(a.counters, what="quiet veth")  # b's ICMP answers are out
    kernel = {(a.host_if, "egress"): (after["tx_packets"] - before["tx_packets"], after["tx_bytes"] - before["tx_bytes"]),
              (a.host_if, "ingress"): (after["rx_packets"] - before["rx_packets"], after["rx_bytes"] - before["rx_bytes"])}
    assert kernel[a.host_if, "egress"] == (CONNECTIONS, CONNECTIONS * (UDP_V4_OVERHEAD + SIZE))
    database = Path(cs_env["CONNSTATS_STATE_DIR"]) / "flows.sqlite"

    def overflow_of(got: dict) -> dict:
        return {(dict(k[1])["iface"], dict(k[1])["direction"]): (v, got[("connstats_overflow_bytes_total", k[1])])
                for k, v in got.items() if k[0] == "connstats_overflow_packets_total"}

    def stored_overflow() -> dict:
        with sqlite3.connect(database) as db:
            return {(i, d): (p, b) for i, d, p, b in db.execute(
                "SELECT ifname, direction, SUM(packets), SUM(bytes) FROM overflow GROUP BY 1, 2")}

    def settled():
        # the metrics count an interval before it is published: the last one may still be on
        # its way to the store when they already equal the kernel's (1 full run read the store
        # then, without its overflow)
        got = samples(endpoint)
        done = (all(traffic_of(got, *key) == counts for key, counts in kernel.items())
                and got[("connstats_outbox_messages", ())] == 0
                and got[("connstats_sink_messages_total", ())] == got[("connstats_published_messages_total", ())]
                and store_totals(database) == {k: v for k, v in kernel.items() if v != (0, 0)})
        return got if done else None

    got = until(settled, 30, "counters equal to the kernel's, published and stored")
    overflow = overflow_of(got)
    assert overflow == stored_overflow() and (a.host_if, "egress") in overflow  # 500 connections, 16 places
    assert got[("connstats_map_capacity", (("family", "ipv4"),))] == 16
    warning = re.search(r"the IPv4 flow map was (\d+)% full \((\d+) of 16 connections\) in the last interval; "
                        r"beyond it packets are counted per device only: raise --capacity or shorten --interval",
                        up.stderr)
    assert warning and int(warning.group(2)) > 0.8 * 16, up.stderr
    assert up.interrupt() == 0


def post_json(url: str, body: bytes) -> tuple[int, str]:
    return http_request(url, data=body, method="POST", headers={"Content-Type": "application/json"}, timeout=5)


def test_probe_metrics_listener_serves_telemetry_and_nothing_of_the_api(quiet_network, cs_env, start, nats_server):
    """`probe --metrics`: /metrics, /healthz, /readyz on a listener of their own; the HTTP API
    (attach, connection stats) only on --http, so --http may stay on loopback."""
    a, b = quiet_network
    http, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    probe = start("probe", "--iface", a.host_if, "--interval", "0.5", "--nats", nats_server.url,
                  "--http", http, "--metrics", metrics)
    probe.wait_for("connstats probe: watching")
    api, telemetry = f"http://{http}", f"http://{metrics}"
    assert until(lambda: get(telemetry + "/readyz") == (200, "ready\n"), 30, "probe ready on --metrics")
    assert get(telemetry + "/healthz") == (200, "ok\n")
    attach = f'{{"iface": "{b.host_if}", "action": "add"}}'.encode()
    assert post_json(telemetry + "/traffic_count_attach_device", attach) == (404, "404: Not Found")
    assert get(telemetry + "/traffic_device_connection_stats") == (404, "404: Not Found")
    assert get(api + "/traffic_device_connection_stats")[0] == 200  # the API is where it was
    a.traffic("udp", b.ipv4, 7000, 42000, 300, 100)
    expected = (300, 300 * (UDP_V4_OVERHEAD + 100))

    def counted():
        got = samples(telemetry)
        return got if traffic_of(got, a.host_if, "egress") == expected else None

    got = until(counted, 30, "the traffic counted on --metrics")
    assert got[("connstats_attached_devices", ())] == 1  # the refused attach attached nothing
    assert traffic_of(samples(api), a.host_if, "egress") == expected  # /metrics stays on --http too
    assert probe.interrupt() == 0
    assert "Traceback" not in probe.stderr
    assert f"metrics on http://{metrics}/metrics" in probe.stderr


def test_probe_metrics_address_taken_or_bad_is_one_line(quiet_network, cs_env, nats_server):
    from tests.fixtures.cli import assert_one_line_error, connstats
    from tests.fixtures.netns import leftovers
    a, _ = quiet_network
    common = ("probe", "--iface", a.host_if, "--nats", nats_server.url, "--http", "127.0.0.1:0",
              "--on-exit", "detach")
    assert_one_line_error(connstats(cs_env, *common, "--metrics", "host:http"),
                          "metrics address 'host:http' is not ADDR:PORT; use e.g. 127.0.0.1:9465")
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = connstats(cs_env, *common, "--metrics", f"127.0.0.1:{port}")
    # found once the classifier is attached: the start-up log, then the one error line
    assert (result.returncode, result.stdout) == (1, "") and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (f"error: cannot listen on 127.0.0.1:{port} for metrics: "
                                              "Address already in use; pick another --metrics ADDR:PORT")
    assert not [item for item in leftovers() if item.startswith(f"connstats filter on {a.host_if} ")]  # --on-exit detach
