"""The page itself in the test browser, under the Content-Security-Policy the server sends:
every view loads with no console error and no policy violation."""
from __future__ import annotations

from tests.fixtures.web import fill_store, run_async, start_ui


def test_every_view_runs_under_the_pages_own_csp(nats_server, start, tmp_path, strict_browser_page):
    path = tmp_path / "flows.sqlite"
    run_async(fill_store(path, intervals=2))
    ui, url = start_ui(start, nats_server.url, f"sqlite:{path}")
    page = strict_browser_page
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(url)
    page.wait_for_selector("#live-summary")
    page.click("#tabs button[data-view=map]")
    page.wait_for_selector("#map-svg[data-render-ms]", state="attached", timeout=30_000)
    assert page.locator("#map-svg .edge").count() == 7_163
    page.click("#tabs button[data-view=history]")
    page.wait_for_selector("#history-svg[data-every]", state="attached", timeout=30_000)
    assert page.locator("#history-legend li").count() == 8
    page.click("#tabs button[data-view=alerts]")
    page.wait_for_selector("#alerts-summary >> text=no alert is firing", timeout=30_000)
    page.click("#tabs button[data-view=policy]")
    page.wait_for_selector("#learn-summary >> text=/host /", timeout=30_000)
    page.wait_for_selector("#policy-summary >> text=/is not available: no probe answers for host/", timeout=30_000)
    assert problems == []
    assert ui.process.poll() is None
