"""A full map per interval for N minutes through a real ``connstats up``: records/s in and
stored, lag, CPU per component and RSS over time, and exact totals at the end.

What it sets up (and removes again, also when it fails): a veth pair from this host into a
namespace of its own (IPv6 off, static neighbours, UDP dropped silently in the namespace),
``connstats up`` as a subprocess (its own state directory, embedded NATS, SQLite store,
``--interval 2``, ``--ui none``, ``--http none`` unless ``--http``, ``--metrics`` on a free
port) watching the host's end, and ``udp_flood`` (udp_flood.c next to this file, compiled
with ``cc`` at start): raw frames by sendmmsg on a packet socket on the host's end, every
datagram a connection never seen before, counted by the classifier at tc egress (at nice
-10, so that on a busy machine the traffic still comes when it is due). Each time
the probe publishes an interval, the generator sends the next ``--connections`` new
connections (one datagram each), so every interval of the probe holds one full block.

Each interval it prints: records/s published (the probe's ``connstats_published_records``
in /metrics) and stored (the SQLite rows, counted through a read-only connection), the
sink's lag (stream messages not yet acknowledged by its consumer ``connstats-sink``, and
the age of the oldest one), CPU-seconds of ``up`` (main thread: the event loop, which runs
the probe's poll and publish and the sink's fetch and decode; worker threads: the SQLite
writes and the encoding), of its nats-server and of the generator, and ``up``'s RSS.
At the end: the totals, how long after the last interval the sink finished, peak RSS
(VmHWM), and two exact checks: rows stored == records published, and UDP packets (and
bytes) stored == datagrams sent.

    PYTHONPATH=. .venv/bin/python tests/bench/bench_sustained.py [--minutes 1]
        [--connections 130000] [--interval 2] [--payload 32] [--http] [--keep]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402
import nats.js.errors  # noqa: E402

from connstats.probe.contract import FLOWS_WILDCARD, STREAM_NAME  # noqa: E402
from connstats.sink.jetstream import DEFAULT_DURABLE  # noqa: E402
from tests.fixtures.nats import free_port  # noqa: E402
from tests.fixtures.wait import until, until_async  # noqa: E402

CONNSTATS = ROOT / ".venv" / "bin" / "connstats"
GENERATOR = Path(__file__).with_name("udp_flood.c")
FRAME_OVERHEAD = 14 + 20 + 8  # Ethernet + IPv4 + UDP: skb->len at the hook is the whole frame
DESTINATIONS = 4  # addresses in the namespace
TICKS = os.sysconf("SC_CLK_TCK")


def sh(*args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, input=input)
    if check and done.returncode:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


class BenchNet:
    """A veth pair: ``host`` in this namespace, its peer in ``ns`` holding the destinations."""

    def __init__(self) -> None:
        tag = os.getpid() % 100_000
        self.ns, self.host, self.peer = f"csbs-{tag}", f"csbs{tag}h", f"csbs{tag}n"
        subnet = 10 + tag % 200
        self.source = f"10.251.{subnet}.1"
        self.destinations = [f"10.251.{subnet}.{2 + i}" for i in range(DESTINATIONS)]

    def create(self) -> None:
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.host, "type", "veth", "peer", "name", self.peer, "netns", self.ns)
        sh("sysctl", "-qw", f"net.ipv6.conf.{self.host}.disable_ipv6=1")
        sh("ip", "netns", "exec", self.ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        sh("ip", "addr", "add", f"{self.source}/24", "dev", self.host)
        for address in self.destinations:
            sh("ip", "-n", self.ns, "addr", "add", f"{address}/24", "dev", self.peer)
        sh("ip", "-n", self.ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.ns, "link", "set", self.peer, "up")
        sh("ip", "link", "set", self.host, "up")
        # every datagram is dropped as it enters the namespace: no IP stack there, no ICMP back;
        # IPv6 off and no ARP (the generator writes whole frames): the generator's is all the traffic
        sh("ip", "netns", "exec", self.ns, "nft", "-f", "-", input=(
            f"table netdev csbench {{\n chain in {{\n type filter hook ingress device {self.peer} priority 0;\n"
            " policy accept;\n meta l4proto udp drop\n }\n}\n"))

    def mac(self, device: str, ns: str | None = None) -> str:
        where = ("-n", ns) if ns else ()
        return json.loads(sh("ip", *where, "-j", "link", "show", device).stdout)[0]["address"]

    def destroy(self) -> None:
        sh("ip", "link", "del", self.host, check=False)
        sh("ip", "netns", "del", self.ns, check=False)


class Generator:
    """udp_flood on the host's end of the veth: ``send(n)`` -> (datagrams sent, seconds it took)."""

    def __init__(self, binary: Path, net: BenchNet, payload: int) -> None:
        self.argv = [str(binary), net.host, net.mac(net.host), net.mac(net.peer, net.ns), net.source, "20000",
                     str(payload), *net.destinations]
        self.process: asyncio.subprocess.Process | None = None
        self.sent = 0
        self.rates: list[float] = []

    async def start(self) -> None:
        # nice -10: traffic does not wait for the pipeline's CPU (a NIC's would come in softirq)
        self.process = await asyncio.create_subprocess_exec(*self.argv, stdin=subprocess.PIPE,
                                                            stdout=subprocess.PIPE, preexec_fn=lambda: os.nice(-10))

    async def send(self, count: int) -> tuple[int, float]:
        assert self.process is not None and self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{count}\n".encode())
        await self.process.stdin.drain()
        line = (await self.process.stdout.readline()).decode().split()
        if len(line) != 3:
            raise RuntimeError(f"udp_flood stopped (exit {await self.process.wait()})")
        sent, seconds = int(line[1]), float(line[2])
        self.sent += sent
        if sent > 1:
            self.rates.append(sent / seconds)
        return sent, seconds

    async def wait(self) -> None:
        if self.process is not None:
            await self.process.wait()

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid) if self.process is not None else 0.0

    def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            try:
                os.kill(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def compile_generator(directory: Path) -> Path:
    binary = directory / "udp_flood"
    sh("cc", "-O2", "-Wall", "-o", str(binary), str(GENERATOR))
    return binary


# -- what the processes use ---------------------------------------------------------------------


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def threads_cpu(pid: int) -> tuple[float, float, int]:
    """(main thread, all other threads, how many others) CPU-seconds of ``pid``. A thread that
    ended took its time with it, so the process total is read separately."""
    main = cpu_seconds(pid, pid)
    others = [cpu_seconds(pid, int(t)) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid]
    return main, sum(others), len(others)


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in KiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


def children(pid: int) -> list[int]:
    """The children of every thread of ``pid`` (up starts nats-server from a worker thread)."""
    found = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            found += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except OSError:
            pass
    return found


def scrape(url: str) -> dict[str, float]:
    """Prometheus text: each metric name's value (labelled series summed)."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{[^}]*\})? (\S+)$", line)
        if match:
            values[match[1]] = values.get(match[1], 0.0) + float(match[2])
    return values


class RowCounter:
    """The SQLite rows, through a read-only connection: each interval counted until it is
    complete (the sink stores intervals in stream order), so a look costs one interval's scan."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        self.counts: dict[int, int] = {}

    def count(self) -> int:
        since = max(self.counts, default=0)
        for start, rows in self.db.execute("SELECT interval_start, count(*) FROM flows WHERE interval_start >= ? "
                                           "GROUP BY interval_start", (since,)):
            self.counts[start] = rows
        return sum(self.counts.values())

    def totals(self, ifname: str) -> tuple[int, int, int, int]:
        """All rows, and this device's UDP rows, packets and bytes (full scans, at the end)."""
        rows = self.db.execute("SELECT count(*) FROM flows").fetchone()[0]
        udp = self.db.execute("SELECT count(*), coalesce(sum(packets), 0), coalesce(sum(bytes), 0) FROM flows "
                              "WHERE ifname = ? AND proto = 17", (ifname,)).fetchone()
        return rows, *udp

    def overflow(self) -> tuple[int, int]:
        """Packets and bytes the device counted beyond the map (all of them the generator's)."""
        return self.db.execute("SELECT coalesce(sum(packets), 0), coalesce(sum(bytes), 0) FROM overflow").fetchone()


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    published: int
    stored: int
    lag_messages: int
    lag_seconds: float
    up_cpu: float
    main_cpu: float
    worker_cpu: float
    nats_cpu: float
    gen_cpu: float
    rss_kib: int
    hwm_kib: int
    gauge_lag: float  # the sink's own connstats_sink_consumer_lag_seconds (refreshed every 5 s)


@dataclass
class Run:
    up: subprocess.Popen
    metrics_url: str
    rows: RowCounter
    db_path: Path
    js: object
    generator: Generator
    t0: float = field(default_factory=time.monotonic)
    samples: list[Sample] = field(default_factory=list)

    def nats_pid(self) -> int | None:
        found = [c for c in children(self.up.pid) if "nats-server" in Path(f"/proc/{c}/cmdline").read_text()]
        return found[0] if found else None

    async def lag(self) -> tuple[int, float]:
        """Flow messages the sink has not acknowledged, and the age of the oldest of them."""
        info = await self.js.consumer_info(STREAM_NAME, DEFAULT_DURABLE)
        behind = info.num_pending + info.num_ack_pending
        if not behind:
            return 0, 0.0
        floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
        try:
            oldest = await self.js.get_msg(STREAM_NAME, seq=(floor or 0) + 1, subject=FLOWS_WILDCARD, next=True)
        except nats.js.errors.NotFoundError:
            return behind, 0.0
        return behind, max(0.0, time.time() - oldest.time.timestamp())

    async def sample(self) -> Sample:
        metrics = scrape(self.metrics_url)
        lag_messages, lag_seconds = await self.lag()
        main, workers, _ = threads_cpu(self.up.pid)
        nats_pid = self.nats_pid()
        mem = memory(self.up.pid)
        sample = Sample(time.monotonic() - self.t0, int(metrics.get("connstats_published_records_total", 0)),
                        self.rows.count(), lag_messages, lag_seconds, cpu_seconds(self.up.pid), main, workers,
                        cpu_seconds(nats_pid) if nats_pid else 0.0, self.generator.cpu(), mem["VmRSS"],
                        mem["VmHWM"], metrics.get("connstats_sink_consumer_lag_seconds", -1.0))
        self.samples.append(sample)
        return sample

    def intervals(self) -> int:
        return int(scrape(self.metrics_url).get("connstats_intervals_total", 0))

    async def next_interval(self, after: int, interval: float) -> int:
        """The probe's interval count once it passed ``after``: it just flipped its maps (an
        interval of many chunks counts once, so a block never lands in the same interval twice)."""
        return await until_async(self.intervals, 4 * interval + 10, "the next interval", step=0.02,
                                 accept=lambda count: count > after)


def header() -> str:
    return (f"{'t s':>6} {'published':>10} {'stored':>10} {'in rec/s':>9} {'stored/s':>9} {'lag msg':>7} "
            f"{'lag s':>6} {'up CPU-s':>8} {'main':>6} {'workers':>7} {'nats':>6} {'gen':>5} {'RSS MiB':>7}")


def line(s: Sample, before: Sample | None) -> str:
    dt = s.t - before.t if before else 0.0
    rate_in = (s.published - before.published) / dt if before and dt else 0.0
    rate_out = (s.stored - before.stored) / dt if before and dt else 0.0
    return (f"{s.t:6.1f} {s.published:10,} {s.stored:10,} {rate_in:9,.0f} {rate_out:9,.0f} {s.lag_messages:7} "
            f"{s.lag_seconds:6.1f} {s.up_cpu:8.1f} {s.main_cpu:6.1f} {s.worker_cpu:7.1f} {s.nats_cpu:6.1f} "
            f"{s.gen_cpu:5.1f} {s.rss_kib / 1024:7.0f}")


async def drive(run: Run, args: argparse.Namespace, intervals: int) -> float:
    """A block of new connections after each interval the probe publishes; returns the
    time (since t0) the last block's interval was published."""
    last = run.intervals()
    await run.generator.send(1)  # a first datagram, so that the next interval is published
    last = await run.next_interval(last, args.interval)
    print(header(), flush=True)
    run.t0 = time.monotonic()
    before = await run.sample()  # the baseline: what start-up took (BCC compiling the classifier)
    print(line(before, None) + "   (start-up, before the first block)", flush=True)
    for _ in range(intervals):
        sent, seconds = await run.generator.send(args.connections)
        sample = await run.sample()
        slow = "  (slower than the interval: the generator is the bottleneck)" if seconds > args.interval else ""
        print(line(sample, before) + f"   gen {sent / seconds:,.0f} pkt/s{slow}", flush=True)
        before = sample
        last = await run.next_interval(last, args.interval)
    published_at = time.monotonic() - run.t0
    await asyncio.sleep(0.5)  # the rest of the interval's chunks
    return published_at


async def catch_up(run: Run, args: argparse.Namespace) -> float:
    """Wait until the sink acknowledged everything; returns when (since t0)."""
    before = run.samples[-1] if run.samples else None

    async def caught_up() -> bool:
        nonlocal before
        sample = await run.sample()
        if before is None or sample.t - before.t >= args.interval:
            print(line(sample, before) + "   (catching up)", flush=True)
            before = sample
        return sample.lag_messages == 0

    await until_async(caught_up, 1800, "the sink catching up", step=0.25)
    return time.monotonic() - run.t0


def summary(run: Run, args: argparse.Namespace, intervals: int, published_at: float, done_at: float,
            net: BenchNet) -> None:
    final = run.samples[-1]
    first = run.samples[0]
    metrics = scrape(run.metrics_url)
    published = int(metrics["connstats_published_records_total"])
    rows, udp_rows, udp_packets, udp_bytes = run.rows.totals(net.host)
    overflow_packets, overflow_bytes = run.rows.overflow()
    write_seconds = metrics.get("connstats_sink_write_duration_seconds_sum", 0.0)
    span = done_at - first.t
    peak_lag = max(run.samples, key=lambda s: s.lag_seconds)
    print(f"\n{intervals} intervals x {args.connections:,} new connections every {args.interval:g} s "
          f"({args.minutes:g} min)")
    print(f"generator        {statistics.median(run.generator.rates):,.0f} packets/s while sending (median), "
          f"{run.generator.sent:,} datagrams, {final.gen_cpu:.1f} CPU-s")
    print(f"records in       {published:,} published, {published / published_at:,.0f} records/s "
          f"over {published_at:.1f} s")
    print(f"records stored   {rows:,}, {rows / done_at:,.0f} records/s over {done_at:.1f} s; "
          f"sink write time {write_seconds:.1f} s ({rows / write_seconds if write_seconds else 0:,.0f} records/s "
          f"while writing)")
    print(f"lag              peak {max(s.lag_messages for s in run.samples)} messages, "
          f"{peak_lag.lag_seconds:.1f} s (at {peak_lag.t:.0f} s); "
          f"done {done_at - published_at:.1f} s after the last interval was published; the sink's own "
          f"connstats_sink_consumer_lag_seconds peaked at {max(s.gauge_lag for s in run.samples):.1f} s")
    up_cpu, nats_cpu = final.up_cpu - first.up_cpu, final.nats_cpu - first.nats_cpu
    print(f"CPU              up {up_cpu:.1f} CPU-s after start-up ({first.up_cpu:.1f} before the first block) = "
          f"{up_cpu / span:.2f} cores, {up_cpu / rows * 1e5:.2f} CPU-s per 100k records: main thread "
          f"{final.main_cpu - first.main_cpu:.1f}, worker threads {final.worker_cpu - first.worker_cpu:.1f}; "
          f"nats-server {nats_cpu:.1f} CPU-s ({nats_cpu / rows * 1e5:.2f} per 100k records)")
    rss = [s.rss_kib for s in run.samples]
    print(f"RSS              up {statistics.median(rss) / 1024:.0f} MiB median, {max(rss) / 1024:.0f} MiB highest "
          f"sampled, {final.hwm_kib / 1024:.0f} MiB peak (VmHWM)")
    disk = sum(p.stat().st_size for p in run.db_path.parent.glob(run.db_path.name + "*"))
    print(f"disk             {disk / 2**20:,.0f} MiB (the SQLite file and its WAL), {disk / rows:.0f} bytes per row")
    print(f"overflow         {overflow_packets:,} packets, {overflow_bytes:,} bytes (an interval held more "
          f"connections than the map)" if overflow_packets else "overflow         none")
    print(f"exact            rows stored {rows:,} == records published {published:,}: {rows == published}")
    sent, sent_bytes = run.generator.sent, run.generator.sent * (FRAME_OVERHEAD + args.payload)
    packets, nbytes = udp_packets + overflow_packets, udp_bytes + overflow_bytes
    print(f"exact            UDP packets stored {packets:,} == datagrams sent {sent:,}: {packets == sent}; "
          f"bytes {nbytes:,} == {sent_bytes:,}: {nbytes == sent_bytes} (UDP rows {udp_rows:,}, with the overflow's)")
    assert rows == published, f"{rows} rows stored, {published} records published"
    assert packets == sent, f"{packets} UDP packets stored, {sent} datagrams sent"
    assert nbytes == sent_bytes, f"{nbytes} bytes stored, {sent_bytes} sent"


async def bench(args: argparse.Namespace, tmp: Path, net: BenchNet, up: subprocess.Popen, metrics_port: int,
                generator: Generator) -> None:
    state = tmp / "state"
    credentials = until(lambda: (state / "nats-credentials.json").exists() and json.loads(
        (state / "nats-credentials.json").read_text()), 60, "up's NATS credentials", retry_on=(ValueError,))
    admin = credentials["users"]["admin"]
    nc = await nats.connect(credentials["url"], user=admin["user"], password=admin["password"])
    try:
        until(lambda: (tmp / "flows.db").exists(), 60, "the SQLite file")
        db = tmp / "flows.db"
        run = Run(up, f"http://127.0.0.1:{metrics_port}/metrics", RowCounter(db), db, nc.jetstream(), generator)
        await until_async(lambda: consumer_exists(run.js), 60, "the sink's consumer")
        intervals = max(1, round(args.minutes * 60 / args.interval))
        published_at = await drive(run, args, intervals)
        done_at = await catch_up(run, args)
        summary(run, args, intervals, published_at, done_at, net)
    finally:
        await nc.close()


async def consumer_exists(js) -> bool:
    try:
        await js.consumer_info(STREAM_NAME, DEFAULT_DURABLE)
    except nats.js.errors.NotFoundError:
        return False
    return True


def start_up(args: argparse.Namespace, tmp: Path, net: BenchNet, metrics_port: int) -> subprocess.Popen:
    (tmp / "config.toml").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONNSTATS_", "INFLUXDB_V2_"))}
    env.update(CONNSTATS_STATE_DIR=str(tmp / "state"), CONNSTATS_CONFIG=str(tmp / "config.toml"))
    argv = [str(CONNSTATS), "up", "--iface", net.host, "--interval", f"{args.interval:g}",
            "--store", f"sqlite:{tmp / 'flows.db'}", "--ui", "none",
            "--http", "127.0.0.1:0" if args.http else "none", "--metrics", f"127.0.0.1:{metrics_port}"]
    with (tmp / "up.err").open("wb") as err:
        up = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL,
                              cwd=ROOT, start_new_session=True)

    def started() -> bool:
        if up.poll() is not None:
            raise SystemExit(f"connstats up exited with {up.returncode}:\n{(tmp / 'up.err').read_text()}")
        return "connstats up: watching" in (tmp / "up.err").read_text()

    until(started, 120, "connstats up's banner")
    return up


def stop_up(up: subprocess.Popen, env_dir: Path) -> None:
    """SIGINT (the probe publishes its last interval and detaches); SIGKILL by pid if it hangs."""
    if up.poll() is None:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            for pid in [*children(up.pid), up.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            up.wait(10)
            env = {k: v for k, v in os.environ.items() if not k.startswith("CONNSTATS_")}
            env.update(CONNSTATS_STATE_DIR=str(env_dir / "state"), CONNSTATS_CONFIG=str(env_dir / "config.toml"))
            subprocess.run([str(CONNSTATS), "reset"], env=env, capture_output=True, timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=130_000, help="new connections per interval")
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--payload", type=int, default=32, help="UDP payload bytes per datagram")
    parser.add_argument("--http", action="store_true", help="up's HTTP API on a free port (default: none)")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory (SQLite file, up's log)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: BPF, a namespace and a veth pair")
    tmp = Path(tempfile.mkdtemp(prefix="cs-sustained-"))
    net = BenchNet()
    up = generator = None
    try:
        net.create()
        generator = Generator(compile_generator(tmp), net, args.payload)
        metrics_port = free_port()
        up = start_up(args, tmp, net, metrics_port)
        print(f"machine: {os.cpu_count()} cores; up pid {up.pid}; {tmp}", flush=True)

        async def go() -> None:
            await generator.start()
            try:
                await bench(args, tmp, net, up, metrics_port, generator)
            finally:
                generator.stop()
                await generator.wait()

        asyncio.run(go())
    finally:
        if generator is not None:
            generator.stop()
        if up is not None:
            stop_up(up, tmp)
        net.destroy()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
