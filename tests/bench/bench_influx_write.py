"""The InfluxDB store's write path: intervals of new connections posted to the v2 API test server.

The messages are made as in bench_sqlite_growth.py (a probe's interval of ``--records`` new
connections, chunked to 1 MiB messages, decoded as the sink decodes them). The test server
(tests/fixtures/influx.py: it gunzips and parses every line, in Python) runs in a process
of its own, so that this process's CPU time is the sink's alone. Per interval: records/s
(wall, including the server's answer) and records per CPU-second of this process; then the
sink's CPU per stage of one interval: ``encode_lines``, gzip (level 1) and the rest
(the HTTP client), and the bytes per record before and after gzip.

    PYTHONPATH=. .venv/bin/python tests/bench/bench_influx_write.py [--intervals 3] [--records 130000]
"""
from __future__ import annotations

import argparse
import asyncio
import gzip
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from connstats.sink.influx_store import GZIP_LEVEL, InfluxConfig, InfluxStore, chunked, encode_lines  # noqa: E402
from tests.bench.bench_sqlite_growth import messages  # noqa: E402
from tests.fixtures.influx import TEST_ORG, TEST_TOKEN  # noqa: E402

SERVER = """
import sys, time
from tests.fixtures.influx import InfluxTestServer
server = InfluxTestServer().start()
print(server.url, flush=True)
sys.stdin.readline()
server.stop()
"""


def stages(chunks) -> tuple[float, float, int, int]:
    """CPU-seconds of encoding and of gzip for ``chunks``, and the bytes before and after gzip."""
    started = time.process_time()
    bodies = [body for chunk in chunks for body in chunked(encode_lines(chunk))]
    encoded = time.process_time()
    packed = [gzip.compress(body, GZIP_LEVEL) for body in bodies]
    return encoded - started, time.process_time() - encoded, sum(map(len, bodies)), sum(map(len, packed))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intervals", type=int, default=3)
    parser.add_argument("--records", type=int, default=130_000)
    opts = parser.parse_args()
    server = subprocess.Popen([sys.executable, "-c", SERVER], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env={"PYTHONPATH": str(ROOT)})
    try:
        url = server.stdout.readline().strip()
        store = InfluxStore(InfluxConfig(url=url, org=TEST_ORG, token=TEST_TOKEN, bucket="bench"))
        rates, per_cpu, cpu_total = [], [], []

        async def write(chunks) -> None:
            for chunk in chunks:
                await store.write(chunk)

        for seq in range(opts.intervals):
            chunks = messages(seq, opts.records)
            started, cpu = time.perf_counter(), time.process_time()
            asyncio.run(write(chunks))
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            rates.append(opts.records / seconds)
            per_cpu.append(opts.records / cpu)
            cpu_total.append(cpu)
            print(f"interval {seq}: {opts.records / seconds:>9,.0f} records/s, "
                  f"{opts.records / cpu:>9,.0f} records/CPU-s ({len(chunks)} messages)", flush=True)
        encode, pack, raw, packed = stages(chunks)
        total = statistics.median(cpu_total)
        print(f"median {statistics.median(rates):,.0f} records/s, {statistics.median(per_cpu):,.0f} records/CPU-s")
        print(f"one interval's CPU: encode_lines {encode:.2f} CPU-s, gzip {pack:.2f} CPU-s, "
              f"HTTP and the rest {max(0.0, total - encode - pack):.2f} CPU-s; "
              f"{raw / opts.records:.0f} bytes/record, {packed / opts.records:.0f} gzipped")
        asyncio.run(store.close())
    finally:
        server.stdin.close()
        server.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
