"""The outbox: strict FIFO across memory and disk, caps, drop counting, reopening."""
from __future__ import annotations

import pytest

from connstats.probe.contract.errors import ConfigError
from connstats.probe.publish.outbox import Outbox


def put(outbox: Outbox, n: int, size: int = 100, records: int = 10) -> None:
    for i in range(n):
        outbox.put(f"id-{i}", "connstats.v1.flows.h", bytes([i % 256]) * size, records)


def ids(outbox: Outbox) -> list[str]:
    return [m.msg_id for m in outbox]


def test_memory_only_keeps_fifo_order():
    outbox = Outbox(memory_cap=10_000)
    put(outbox, 50)
    assert ids(outbox) == [f"id-{i}" for i in range(50)]
    assert (outbox.memory_bytes, outbox.disk_bytes, outbox.on_disk) == (5000, 0, 0)


def test_spills_to_disk_after_memory_cap_and_stays_fifo(tmp_path):
    outbox = Outbox(tmp_path, memory_cap=1000, disk_cap=100_000)
    put(outbox, 30)
    assert (outbox.memory_bytes, outbox.disk_bytes, outbox.on_disk) == (1000, 2000, 20)
    assert len(list(tmp_path.glob("*.msg"))) == 20
    assert [m.msg_id for m in outbox.peek(12)] == [f"id-{i}" for i in range(12)]
    assert ids(outbox) == [f"id-{i}" for i in range(30)]


def test_new_messages_go_to_disk_while_anything_is_there(tmp_path):
    outbox = Outbox(tmp_path, memory_cap=1000, disk_cap=100_000)
    put(outbox, 15)
    head = outbox.peek(3)
    outbox.remove_through(head[-1].seq)  # room in memory again
    outbox.put("late", "s", b"x" * 100, 1)
    assert ids(outbox) == [f"id-{i}" for i in range(3, 15)] + ["late"]


def test_remove_through_forgets_acknowledged_prefix_and_its_files(tmp_path):
    outbox = Outbox(tmp_path, memory_cap=500, disk_cap=100_000)
    put(outbox, 20)
    window = outbox.peek(8)
    outbox.remove_through(window[-1].seq)
    assert ids(outbox) == [f"id-{i}" for i in range(8, 20)]
    outbox.remove_through(outbox.peek(100)[-1].seq)
    assert (len(outbox), outbox.depth_bytes, list(tmp_path.glob("*.msg"))) == (0, 0, [])


def test_drops_oldest_beyond_both_caps_and_counts_them(tmp_path):
    outbox = Outbox(tmp_path, memory_cap=1000, disk_cap=2000)
    put(outbox, 45, records=7)
    # Spooled messages stay on disk until acknowledged (crash safety), so once the spool
    # is full the memory part only shrinks: the newest disk_cap bytes are kept.
    assert ids(outbox) == [f"id-{i}" for i in range(25, 45)]
    assert (outbox.dropped_messages, outbox.dropped_records) == (25, 175)
    assert (outbox.memory_bytes, outbox.disk_bytes) == (0, 2000)


def test_memory_only_outbox_drops_oldest_at_memory_cap():
    outbox = Outbox(memory_cap=1000)
    put(outbox, 12, records=3)
    assert ids(outbox) == [f"id-{i}" for i in range(2, 12)]
    assert (outbox.dropped_messages, outbox.dropped_records) == (2, 6)


def test_message_larger_than_both_caps_is_dropped_alone(tmp_path):
    outbox = Outbox(tmp_path, memory_cap=100, disk_cap=200)
    put(outbox, 2)
    outbox.put("huge", "s", b"x" * 500, 42)
    assert ids(outbox) == ["id-0", "id-1"]
    assert (outbox.dropped_messages, outbox.dropped_records) == (1, 42)


def test_survives_reopen_in_order_with_memory_part_spilled(tmp_path):
    outbox = Outbox(tmp_path, memory_cap=1000, disk_cap=100_000)
    put(outbox, 25)
    outbox.remove_through(outbox.peek(2)[-1].seq)
    outbox.close()
    reopened = Outbox(tmp_path, memory_cap=1000, disk_cap=100_000)
    assert ids(reopened) == [f"id-{i}" for i in range(2, 25)]
    assert [m.payload for m in reopened] == [bytes([i]) * 100 for i in range(2, 25)]
    reopened.put("after", "s", b"y", 1)
    assert ids(reopened)[-1] == "after"
    assert [m.seq for m in reopened] == sorted(m.seq for m in reopened)


def test_reopen_with_smaller_cap_drops_oldest(tmp_path):
    outbox = Outbox(tmp_path, memory_cap=0, disk_cap=100_000)
    put(outbox, 10, records=5)
    reopened = Outbox(tmp_path, memory_cap=0, disk_cap=450)
    assert ids(reopened) == ["id-6", "id-7", "id-8", "id-9"]
    assert (reopened.dropped_messages, reopened.dropped_records) == (6, 30)


def test_crash_loses_only_the_memory_part(tmp_path):
    outbox = Outbox(tmp_path, memory_cap=300, disk_cap=100_000)
    put(outbox, 8)  # 3 in memory, 5 on disk; no close(): a crash
    assert ids(Outbox(tmp_path, memory_cap=300, disk_cap=100_000)) == [f"id-{i}" for i in range(3, 8)]


def test_corrupt_and_half_written_spool_files_are_set_aside(tmp_path):
    outbox = Outbox(tmp_path, memory_cap=0, disk_cap=100_000)
    put(outbox, 3)
    (tmp_path / "0000000000000099.msg").write_bytes(b"garbage")
    (tmp_path / ".0000000000000100.msg.tmp").write_bytes(b"half")
    reopened = Outbox(tmp_path, memory_cap=0, disk_cap=100_000)
    assert ids(reopened) == ["id-0", "id-1", "id-2"]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".msg")) == ["0000000000000099.corrupt"]


def test_negative_cap_is_a_config_error():
    with pytest.raises(ConfigError):
        Outbox(memory_cap=-1)


def test_a_full_disk_drops_and_counts_instead_of_failing(tmp_path, monkeypatch):
    outbox = Outbox(tmp_path, memory_cap=250, disk_cap=100_000)

    def disk_full(message):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outbox, "_write", disk_full)
    put(outbox, 5, records=4)
    assert ids(outbox) == ["id-0", "id-1"]
    assert (outbox.dropped_messages, outbox.dropped_records, outbox.disk_bytes) == (3, 12, 0)


def test_messages_being_sent_are_not_dropped(tmp_path):
    outbox = Outbox(tmp_path, memory_cap=500, disk_cap=500)
    put(outbox, 10, records=2)
    assert [m.msg_id for m in outbox.peek(3)] == ["id-0", "id-1", "id-2"]
    outbox.put("new-1", "s", b"n" * 100, 2)
    outbox.put("new-2", "s", b"n" * 100, 2)
    # id-3 and id-4 leave memory for nothing (new messages go behind the spool), then
    # the spool's oldest make room: the three being sent stay.
    assert ids(outbox) == ["id-0", "id-1", "id-2"] + [f"id-{i}" for i in range(7, 10)] + ["new-1", "new-2"]
    assert (outbox.dropped_messages, outbox.dropped_records) == (4, 8)


def test_when_everything_is_being_sent_the_new_message_is_dropped():
    outbox = Outbox(memory_cap=300)
    put(outbox, 3)
    outbox.peek(64)
    outbox.put("new", "s", b"n" * 100, 9)
    assert ids(outbox) == ["id-0", "id-1", "id-2"]
    assert (outbox.dropped_messages, outbox.dropped_records) == (1, 9)


def test_close_keeps_the_same_outbox_usable_in_order(tmp_path):
    outbox = Outbox(tmp_path, memory_cap=300, disk_cap=100_000)
    put(outbox, 6)
    outbox.close()
    assert (outbox.memory_bytes, outbox.on_disk) == (0, 6)
    assert ids(outbox) == [f"id-{i}" for i in range(6)]
