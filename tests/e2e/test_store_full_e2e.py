"""End to end: a real `connstats sink` process writing SQLite on a small tmpfs of the test's
own, a real nats-server, flow messages published as a probe publishes them.

A full disk is the store's condition, not a message's fault: the sink pauses with a warning
and the ``connstats_sink_store_full`` gauge, dead-letters nothing, and once the filesystem
grows it stores every record exactly once. Every process is stopped by pid and the tmpfs
unmounted at teardown, also when the test fails.
"""
from __future__ import annotations

import asyncio

import pytest

from tests.fixtures.metrics import samples
from tests.fixtures.nats import free_port, read_stream, sample_batch, sample_envelope
from tests.fixtures.store import publish_batches, stored, totals
from tests.fixtures.wait import until

pytestmark = pytest.mark.kernel  # root: mount


def test_a_full_sqlite_disk_pauses_the_sink_dead_letters_nothing_and_resumes_when_it_grows(
        small_tmpfs, cs_env, start, nats_server):
    db = small_tmpfs.path / "flows.sqlite"
    metrics = f"http://127.0.0.1:{free_port()}"
    sink = start("sink", "--nats", nats_server.url, "--store", f"sqlite:{db}", "--metrics", metrics[7:])
    sink.wait_for("sink consuming")
    small_tmpfs.fill(leave=48 * 1024)  # the file and its WAL exist; 48 KiB are left
    # a big message (~0.5 MB of rows) cannot fit; the small one behind it can
    big, small = sample_batch(sample_envelope(1), 3000), sample_batch(sample_envelope(2), 1)
    asyncio.run(publish_batches(nats_server.url, [big, small]))

    def dead_letters(got: dict) -> float:
        return sum(v for (name, _), v in got.items() if name == "connstats_sink_dead_letters_total")

    def settled():  # paused on a full store after 3 failed writes of the big one (the old sink dead-lettered it)
        got = samples(metrics)
        full = got.get(("connstats_sink_store_full", ()), 0) == 1
        return got if dead_letters(got) or (full and got[("connstats_sink_store_errors_total", ())] >= 3) else None

    got = until(settled, 30, "a pause on the full store")
    assert dead_letters(got) == 0
    assert asyncio.run(read_stream(nats_server.url, "CONNSTATS_DEADLETTER")) == []
    assert got[("connstats_sink_store_full_pauses_total", ())] >= 3
    assert "store full, consumption paused, nothing is dead-lettered (StoreFull: SQLite " in sink.stderr
    assert "the disk is full (database or disk is full)" in sink.stderr

    small_tmpfs.grow("64m")
    got = until(lambda: (m := samples(metrics))[("connstats_sink_messages_total", ())] == 2 and m, 30,
                "both messages stored after the disk grew")
    assert stored(db) == totals([big, small])
    assert got[("connstats_sink_records_total", ())] == 3001
    assert got[("connstats_sink_store_full", ())] == 0
    assert dead_letters(got) == 0
    assert asyncio.run(read_stream(nats_server.url, "CONNSTATS_DEADLETTER")) == []
    assert "store takes writes again after " in sink.stderr
    assert sink.interrupt() == 0
    assert "Traceback" not in sink.stderr
