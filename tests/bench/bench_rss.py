"""``up``'s memory: RSS after each start-up step, and its peak at a full map per interval.

Start-up steps, in a fresh interpreter (this revision's code, as the probe runs it): the
imports of ``up``; ``bcc`` imported (libbcc maps clang and LLVM); the socket-owner
tracepoints compiled and loaded; the ``KernelProbe`` built (the classifier compiled and
loaded, and whatever the revision does after loading); the quality tracepoints where the
revision has them. After each: VmRSS, RssAnon (private memory), RssFile (mapped files, most
of them clang's and LLVM's code) and VmHWM, in MiB.

The full map: a real ``connstats up`` (bench_sustained.py's veth, namespace, generator and
start-up, ``--interval 2``, SQLite) for ``--intervals`` blocks of ``--connections`` new UDP
connections, RSS sampled every 0.2 s from /proc: RSS after start-up, the highest sampled
while the blocks came and the sink caught up (and its RssAnon), VmHWM (which includes the
compile at start), and RSS once the sink has stored everything. Once with ``--http none``
and once with the HTTP API (``--http-runs both``, the default).

    PYTHONPATH=. .venv/bin/python tests/bench/bench_rss.py [--intervals 6] [--connections 130000]
        [--http-runs none|api|both|skip] [--startup-runs 1]
    PYTHONPATH=. .venv/bin/python tests/bench/side_by_side.py --old main --new HEAD --rounds 2 rss
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# the revision under test is the working directory (side_by_side.py runs a bench missing at one
# revision from the other's file, in the first one's tree): its bench_sustained and its connstats
ROOT = Path.cwd()
sys.path.insert(0, str(ROOT))

from tests.bench import bench_sustained as sustained  # noqa: E402
from tests.fixtures.nats import free_port  # noqa: E402

STEPS = r'''
import sys
def status():
    keys = ("VmRSS", "RssAnon", "RssFile", "VmHWM")
    found = {l.split(":")[0]: int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(keys)}
    return "  ".join(f"{k} {found[k] / 1024:6.1f} MiB" for k in keys)
def step(name):
    print(f"{name:34} {status()}", flush=True)
step("python")
import connstats.cli.main, connstats.sink.compose, connstats.probe.compose  # what up imports
from connstats.probe.kernel.kernel_probe import KernelProbe, ProbeSettings
step("imports")
import bcc
step("bcc imported")
from connstats.probe.identity.naming import ProcessNamer
enrichers = [ProcessNamer.start(2.0)]
step("socket-owner tracepoints loaded")
try:
    from connstats.probe.quality.enricher import start_quality
except ImportError:
    pass
else:
    quality = start_quality()
    if quality is not None:
        enrichers.append(quality)
        step("quality tracepoints loaded")
kernel = KernelProbe(ProbeSettings(ifaces=[], interval=2.0, host="bench-rss"), *[e for e in enrichers if e])
step("classifier loaded: start-up done")
kernel.close()
'''


def startup_steps(runs: int) -> None:
    """The steps in ``runs`` fresh interpreters (run in a worker thread, as the daemon loads)."""
    print("start-up steps, in a worker thread as the daemon loads")
    code = f"import threading\nSTEPS = {STEPS!r}\nt = threading.Thread(target=exec, args=(STEPS, {{}}))\nt.start(); t.join()\n"
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                              env=os.environ | {"PYTHONPATH": str(ROOT)}, timeout=300)
        if done.returncode or "start-up done" not in done.stdout:
            raise SystemExit(f"the start-up steps failed:\n{done.stdout}{done.stderr[-2000:]}")
        print(done.stdout, end="", flush=True)


class Sampler:
    """RSS and RssAnon of ``pid`` every 0.2 s in a thread: the highest of each."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_rss, self.peak_anon = pid, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                found = status(self.pid)
            except OSError:
                return
            self.peak_rss = max(self.peak_rss, found["VmRSS"])
            self.peak_anon = max(self.peak_anon, found["RssAnon"])

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def status(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile, VmHWM of ``pid``, KiB."""
    keys = ("VmRSS", "RssAnon", "RssFile", "VmHWM")
    return {line.split(":")[0]: int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if line.startswith(keys)}


def mib(kib: int) -> str:
    return f"{kib / 1024:6.1f} MiB"


async def full_map(args: argparse.Namespace, tmp: Path, net: sustained.BenchNet, up: subprocess.Popen,
                   metrics_port: int, generator: sustained.Generator, label: str) -> None:
    """Blocks of new connections after each interval, then wait until the sink stored them all."""
    state = tmp / "state"
    sustained.until(lambda: (state / "nats-credentials.json").exists(), 60, "up's NATS credentials")
    credentials = sustained.json.loads((state / "nats-credentials.json").read_text())
    admin = credentials["users"]["admin"]
    nc = await sustained.nats.connect(credentials["url"], user=admin["user"], password=admin["password"])
    try:
        db = tmp / "flows.db"
        sustained.until(lambda: db.exists(), 60, "the SQLite file")
        run = sustained.Run(up, f"http://127.0.0.1:{metrics_port}/metrics", sustained.RowCounter(db), db,
                            nc.jetstream(), generator)
        await sustained.until_async(lambda: sustained.consumer_exists(run.js), 60, "the sink's consumer")
        last = run.intervals()
        await generator.send(1)
        last = await run.next_interval(last, args.interval)
        started = status(up.pid)
        with Sampler(up.pid) as sampler:
            for _ in range(args.intervals):
                await generator.send(args.connections)
                last = await run.next_interval(last, args.interval)

            async def stored() -> bool:
                return (await run.lag())[0] == 0

            await sustained.until_async(stored, 1800, "the sink storing every interval", step=0.25)
        final = status(up.pid)
        rows = run.rows.count()
    finally:
        await nc.close()
    print(f"{label}: after start-up      RSS {mib(started['VmRSS'])}  RssAnon {mib(started['RssAnon'])}  "
          f"RssFile {mib(started['RssFile'])}")
    print(f"{label}: under load, highest RSS {mib(sampler.peak_rss)}  RssAnon {mib(sampler.peak_anon)}")
    print(f"{label}: peak (VmHWM)        {mib(final['VmHWM'])} (includes the compile at start-up)")
    print(f"{label}: all stored          RSS {mib(final['VmRSS'])}  RssAnon {mib(final['RssAnon'])}  "
          f"({rows} rows)")


def one_run(args: argparse.Namespace, http: bool) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="cs-rss-"))
    net = sustained.BenchNet()
    up = generator = None
    options = argparse.Namespace(interval=args.interval, http=http)
    try:
        net.create()
        generator = sustained.Generator(sustained.compile_generator(tmp), net, 32)
        metrics_port = free_port()
        up = sustained.start_up(options, tmp, net, metrics_port)

        async def go() -> None:
            await generator.start()
            try:
                await full_map(args, tmp, net, up, metrics_port, generator, "http api" if http else "http none")
            finally:
                generator.stop()
                await generator.wait()

        asyncio.run(go())
    finally:
        if generator is not None:
            generator.stop()
        if up is not None:
            sustained.stop_up(up, tmp)
        net.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intervals", type=int, default=6, help="blocks of new connections, one per interval")
    parser.add_argument("--connections", type=int, default=130_000)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--http-runs", choices=("none", "api", "both", "skip"), default="both",
                        help="full-map runs of up: with --http none, with the HTTP API, both, or none (skip)")
    parser.add_argument("--startup-runs", type=int, default=1)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: BPF, a namespace and a veth pair")
    startup_steps(args.startup_runs)
    print(f"\n{args.intervals} intervals x {args.connections:,} new UDP connections every {args.interval:g} s "
          f"through connstats up ({os.cpu_count()} cores)")
    t0 = time.monotonic()
    for http in {"none": (False,), "api": (True,), "both": (False, True), "skip": ()}[args.http_runs]:
        one_run(args, http)
    print(f"({time.monotonic() - t0:.0f} s)")


if __name__ == "__main__":
    main()
