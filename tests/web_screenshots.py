"""Screenshots of the Live, Map and History views for the README (docs/screenshots/*.png);
the Alerts and Policy views are taken by tests/e2e/test_web_e2e.py with
``CONNSTATS_SCREENSHOTS=1`` (a real policy, its violations and a firing alert).

    PYTHONPATH=. .venv/bin/python tests/web_screenshots.py

Runs the real ``connstats ui`` against a nats-server it starts (tests/fixtures/nats.py) and a
SQLite store filled through the real ``SqliteStore`` with synthetic pods (in three Kubernetes
namespaces, with their processes) and peers (tests/web_data.py); live intervals are published as real flow messages. Everything runs
on loopback and is stopped at the end.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from connstats.probe.contract import NatsOptions, connect, flows_subject
from connstats.sink.sqlite_store import SqliteStore
from tests.fixtures.browser import CHROMIUM, CHROMIUM_ARGS
from tests.fixtures.nats import NatsServerProcess, free_port
from tests.web_data import SECOND, chunked_messages, synthetic_batch

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "screenshots"
SHAPE = dict(containers=6, peers=24, deny_every=23, namespaces=("shop", "payments", "kube-system"))


async def fill(path: Path) -> None:
    store = SqliteStore(path)
    now = time.time_ns()
    for seq in range(12):
        start = now - 3600 * SECOND + seq * 300 * SECOND
        await store.write(synthetic_batch("web-demo", seq, start, 300 * SECOND, 200 + 40 * (seq % 5), seed=seq, **SHAPE))
    await store.close()


async def publish(url: str, seconds: float) -> None:
    nc = await connect(NatsOptions(servers=(url,)))
    batch = synthetic_batch("web-demo", 0, time.time_ns(), 10 * SECOND, 5000, **SHAPE)
    deadline, seq = time.monotonic() + seconds, 1
    while time.monotonic() < deadline:
        envelope = replace(batch.envelope, interval_seq=seq, interval_start=time.time_ns() - SECOND,
                           interval_end=time.time_ns())
        for message in chunked_messages(batch.with_envelope(envelope), 4096):
            await nc.publish(flows_subject("web-demo"), message)
        await nc.flush()
        seq += 1
        await asyncio.sleep(1)
    await nc.close()


def main() -> None:
    from playwright.sync_api import sync_playwright

    root = Path(tempfile.mkdtemp(prefix="connstats-shots-"))
    nats = NatsServerProcess(root)
    nats.start()
    asyncio.run(fill(root / "flows.sqlite"))
    port = free_port()
    env = {**os.environ, "CONNSTATS_STATE_DIR": str(root / "state"), "CONNSTATS_CONFIG": str(root / "none.toml")}
    (root / "none.toml").write_text("")
    ui = subprocess.Popen([str(REPO / ".venv/bin/connstats"), "ui", "--listen", f"127.0.0.1:{port}", "--nats",
                           nats.url, "--store", f"sqlite:{root / 'flows.sqlite'}"], env=env)
    publisher = subprocess.Popen([str(REPO / ".venv/bin/python"), "-c", "import asyncio; from tests.web_screenshots "
                                  f"import publish; asyncio.run(publish({nats.url!r}, 30))"], cwd=REPO,
                                 env={**env, "PYTHONPATH": str(REPO)})
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        time.sleep(2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 800}, bypass_csp=True)  # for wait_for_function
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("document.querySelectorAll('#live-table tbody tr').length > 10", timeout=30_000)
            page.screenshot(path=str(OUT / "live.png"))
            page.click("#tabs button[data-view=map]")
            page.wait_for_function("document.getElementById('map-svg').dataset.renderMs", timeout=30_000)
            page.locator("#map-svg .node.pod").first.dispatch_event("click")
            page.screenshot(path=str(OUT / "map.png"))
            page.click("#tabs button[data-view=history]")
            page.wait_for_function("document.getElementById('history-svg').dataset.every", timeout=30_000)
            page.screenshot(path=str(OUT / "history.png"))
            browser.close()
    finally:
        for process in (publisher, ui):
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
                process.wait(30)
        nats.stop()
    print("\n".join(str(p.relative_to(REPO)) for p in sorted(OUT.glob("*.png"))))


if __name__ == "__main__":
    main()
