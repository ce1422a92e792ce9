"""End to end: `connstats deadletter list|replay` against a real nats-server, a real
`connstats sink` process and its real SQLite file.

The dead letters are the ones the issue left behind: messages a sink before this change
dead-lettered for a full disk (published here with exactly the headers it wrote), one of
them already stored meanwhile, and one message the running sink dead-letters itself (not
JSON), which no replay can fix. A replay stores the fixable ones exactly once and removes
them; a second replay does nothing.
"""
from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import nats
import pytest
from nats.js.api import Header

from connstats.cli.config import Config
from connstats.cli.options import NatsFlags
from connstats.probe.contract import connect, encode_message, flows_subject
from tests.fixtures.cli import NO_HTTP_CLASH, connstats
from tests.fixtures.nats import read_stream, sample_batch, sample_envelope
from tests.fixtures.store import publish_batches, stored, totals
from tests.fixtures.wait import until

pytestmark = pytest.mark.kernel  # the e2e environment (cs_env) runs as root

HOST = sample_envelope(0).host
SUBJECT = flows_subject(HOST)
FULL = ("store failed 3 times on this message while others were stored: StoreUnavailable: SQLite "
        "/var/lib/connstats/flows.sqlite is busy (database or disk is full); the write will be retried")


async def publish_old_dead_letters(url: str, letters: list[tuple[bytes, int]]) -> None:
    """Dead letters as the sink before this change wrote them (no reason class header)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for data, origin in letters:
            await js.publish("connstats.v1.deadletter", data, headers={
                "Connstats-Reason": FULL, "Connstats-Subject": SUBJECT, "Connstats-Stream-Seq": str(origin),
                Header.MSG_ID: f"deadletter/CONNSTATS/{origin}"})
        await js.publish(SUBJECT, b"not a flow message")  # the running sink dead-letters this one
    finally:
        await nc.close()


def listed(env: dict, *args: str) -> list[dict]:
    result = connstats(env, "deadletter", "list", *args, "--format", "json")
    assert (result.returncode, result.stderr) == (0, "")
    rows = json.loads(result.stdout)
    for row in rows:
        assert row.pop("time").endswith("Z")
    return rows


def stream_messages(url: str, stream: str) -> int:
    return len(asyncio.run(read_stream(url, stream)))


def test_deadletter_list_and_replay_store_each_message_once(cs_env, start, nats_server, tmp_path):
    db = tmp_path / "flows.sqlite"
    nats_flag = ("--nats", nats_server.url)
    sink = start("sink", *nats_flag, "--store", f"sqlite:{db}")
    sink.wait_for("sink consuming")
    lost, kept = sample_batch(sample_envelope(1), 40), sample_batch(sample_envelope(2), 3)
    asyncio.run(publish_batches(nats_server.url, [kept]))  # stored; its dead letter copy is a duplicate
    until(lambda: db.exists() and stored(db)[0] == 3, 30, "the kept message stored")
    asyncio.run(publish_old_dead_letters(nats_server.url, [(encode_message(lost), 7), (encode_message(kept), 8)]))
    until(lambda: stream_messages(nats_server.url, "CONNSTATS_DEADLETTER") == 3, 30, "the undecodable one dead-lettered")

    old = {"subject": SUBJECT, "class": "store_failed", "reason": FULL}  # the class read from the reason
    undecodable = {"seq": 3, "subject": SUBJECT, "origin_seq": 2, "class": "undecodable", "size": 18}
    every = listed(cs_env, *nats_flag)
    assert every[:2] == [{"seq": 1, "origin_seq": 7, **old, "size": len(encode_message(lost))},
                         {"seq": 2, "origin_seq": 8, **old, "size": len(encode_message(kept))}]
    assert {k: every[2][k] for k in undecodable} == undecodable
    assert every[2]["reason"].startswith("undecodable: ")
    assert listed(cs_env, *nats_flag, "--reason", "undecodable") == every[2:]
    assert listed(cs_env, *nats_flag, "--reason", "DISK IS FULL", "--since", "1h") == every[:2]
    assert listed(cs_env, *nats_flag, "--reason", "store_failed") == every[:2]
    assert listed(cs_env, *nats_flag, "--since", "2100-01-01T00:00:00Z") == []
    table = connstats(cs_env, "deadletter", "list", *nats_flag, "--reason", "disk is full")
    assert table.stdout.splitlines()[0].split() == ["SEQ", "DEAD-LETTERED", "HOST", "BYTES", "REASON"]
    assert len(table.stdout.splitlines()) == 3 and max(map(len, table.stdout.splitlines())) < 80

    replayed = connstats(cs_env, "deadletter", "replay", *nats_flag, "--reason", "disk is full")
    size = len(encode_message(lost)) + len(encode_message(kept))
    assert (replayed.returncode, replayed.stderr, replayed.stdout) == (0, "", (
        f"replayed 2 dead letters ({size} bytes) to {SUBJECT}; the sink stores them, and they left "
        "CONNSTATS_DEADLETTER\n"))
    until(lambda: stored(db) == totals([kept, lost]), 30, "the replayed message stored")
    flow_messages = stream_messages(nats_server.url, "CONNSTATS")
    assert flow_messages == 4  # kept, the undecodable one, the two replays
    assert [row["seq"] for row in listed(cs_env, *nats_flag)] == [3]

    again = connstats(cs_env, "deadletter", "replay", *nats_flag, "--reason", "disk is full")
    assert (again.returncode, again.stderr, again.stdout) == (0, "", "no dead letter to replay\n")
    assert stream_messages(nats_server.url, "CONNSTATS") == flow_messages
    assert stored(db) == totals([kept, lost])
    assert sink.interrupt() == 0
    assert "Traceback" not in sink.stderr


def test_deadletter_replay_on_the_embedded_server_of_up_logs_in_as_the_replay_user(quiet_network, cs_env, start):
    """Without --nats the commands find up's server and log in: list as admin, replay as replay
    (admin may not publish flows); up's own sink stores what is replayed."""
    a, _ = quiet_network
    up = start("up", "--iface", a.host_if, "--interval", "0.5", *NO_HTTP_CLASH)
    up.wait_for("connstats up: watching")
    state = Path(cs_env["CONNSTATS_STATE_DIR"])
    config = Config({}, {"CONNSTATS_STATE_DIR": str(state)}, None)
    lost = sample_batch(sample_envelope(3), 5)

    async def dead_letter_as_the_sink() -> None:
        nc = await connect(NatsFlags().options(config, role="sink"))
        try:
            await nc.jetstream().publish("connstats.v1.deadletter", encode_message(lost), headers={
                "Connstats-Reason": FULL, "Connstats-Subject": SUBJECT, "Connstats-Stream-Seq": "9"})
        finally:
            await nc.close()

    asyncio.run(dead_letter_as_the_sink())
    assert [(row["seq"], row["origin_seq"]) for row in listed(cs_env)] == [(1, 9)]
    replayed = connstats(cs_env, "deadletter", "replay")
    assert (replayed.returncode, replayed.stderr) == (0, "")
    assert replayed.stdout.startswith("replayed 1 dead letter (")
    db = state / "flows.sqlite"

    def lost_rows() -> tuple:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT COUNT(*), SUM(packets), SUM(bytes) FROM flows WHERE host = ?", (HOST,)).fetchone()

    records = list(lost.records())
    until(lambda: lost_rows() == (5, sum(r.packets for r in records), sum(r.bytes for r in records)), 30,
          "the replayed message stored by up's sink")
    assert listed(cs_env) == []
    assert up.interrupt() == 0
    assert "Traceback" not in up.stderr
