"""A bounded FIFO of encoded flow messages waiting for their JetStream acknowledgement.

Messages are kept in memory up to ``memory_cap`` bytes, then spooled to ``state_dir``,
one file per message, up to ``disk_cap`` bytes. The order is strict FIFO: the oldest
messages are in memory, the newest on disk, and nothing goes to memory while anything
is on disk; a spooled message stays on disk until it is acknowledged. ``persist()``
(and ``close()``) spill the memory part to disk: the probe calls it when an interval
is not acknowledged soon enough, before it empties the interval's kernel buffer, so a
crash loses nothing (see kernel/poller.py).

When both caps are reached the OLDEST messages are dropped, like a ring buffer: after a
long outage the most recent traffic is what operators look at first, and it is also the
part of the history that is still within the stream's de-duplication window. Messages
being sent (the last ``peek``) are not dropped: they may be stored already. Every
dropped message and its records are counted (``dropped_messages``, ``dropped_records``);
the publisher logs the totals and reports them as an event once NATS is back.

The directory is 0700 and its files 0600: flows say who talks to whom.

Spool file ``<seq:016d>.msg``: the line ``CSOB1``, one JSON line
``{"msg_id": ..., "subject": ..., "records": N}``, then the payload bytes. Files are
written to a temporary name, fsynced, renamed, and the directory is fsynced.
"""
from __future__ import annotations

import logging
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import msgspec

from ..contract.errors import ConfigError

log = logging.getLogger(__name__)

MAGIC = b"CSOB1\n"
SUFFIX = ".msg"


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One encoded message; ``seq`` orders the outbox and survives restarts."""

    seq: int
    msg_id: str
    subject: str
    payload: bytes
    records: int

    @property
    def size(self) -> int:
        return len(self.payload)


@dataclass(slots=True)
class _SpoolEntry:
    """A message on disk; its payload is read only when the publisher needs it."""

    seq: int
    path: Path
    size: int
    records: int
    loaded: OutboxMessage | None = None


class Outbox:
    """Memory first, then a disk spool; oldest dropped beyond the caps."""

    def __init__(self, state_dir: str | os.PathLike | None = None, *,
                 memory_cap: int = 64 << 20, disk_cap: int = 1 << 30) -> None:
        if memory_cap < 0 or disk_cap < 0:
            raise ConfigError("outbox caps must be >= 0 bytes; fix the outbox size settings")
        self._dir = Path(state_dir) if state_dir is not None else None
        self.memory_cap = memory_cap
        self.disk_cap = disk_cap if self._dir is not None else 0
        self._memory: deque[OutboxMessage] = deque()
        self._spool: deque[_SpoolEntry] = deque()
        self.memory_bytes = 0
        self.disk_bytes = 0
        self.dropped_messages = 0
        self.dropped_records = 0
        self._next_seq = 1
        self._sending_through = 0  # seq of the last message handed out by peek()
        if self._dir is not None:
            self._open_spool()

    # -- what the publisher calls ---------------------------------------------------

    def put(self, msg_id: str, subject: str, payload: bytes, records: int) -> OutboxMessage:
        """Append a message; drop the oldest ones if the caps require it."""
        message = OutboxMessage(self._next_seq, msg_id, subject, payload, records)
        self._next_seq += 1
        if message.size > self.memory_cap and message.size > self.disk_cap:
            self._count_drop(message.records)
            log.warning("outbox: message %s (%d bytes) exceeds both caps; dropped", msg_id, message.size)
            return message
        self._place(message)
        return message

    def peek(self, limit: int) -> list[OutboxMessage]:
        """The oldest ``limit`` messages, without removing them.

        They count as being sent until the next ``peek``: overflow drops skip them, as
        they may be stored already and their memory is held by the sender anyway.
        """
        head = [m for _, m in zip(range(limit), self._memory, strict=False)]
        for entry in self._spool:
            if len(head) >= limit:
                break
            if entry.loaded is None:
                entry.loaded = self._read(entry)
            head.append(entry.loaded)
        self._sending_through = head[-1].seq if head else 0
        return head

    def remove_through(self, seq: int) -> None:
        """Forget every message up to and including ``seq`` (acknowledged by the server)."""
        while self._memory and self._memory[0].seq <= seq:
            self.memory_bytes -= self._memory.popleft().size
        while self._spool and self._spool[0].seq <= seq:
            self._delete(self._spool.popleft())

    def persist(self) -> bool:
        """Spill the memory part to disk; True when every message is on disk now."""
        if self._dir is None:
            return not self._memory
        spilled = len(self._memory)
        while self._memory:
            message = self._memory.pop()  # newest first; each gets its own seq file
            self.memory_bytes -= message.size
            self._spool_or_drop(message, front=True)
        if spilled:
            _fsync_dir(self._dir)
            log.info("outbox: spilled %d messages to %s", spilled, self._dir)
        return True

    def close(self) -> None:
        """Spill the memory part to disk so that the next start sends it first."""
        self.persist()

    # -- state -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._memory) + len(self._spool)

    @property
    def depth_bytes(self) -> int:
        return self.memory_bytes + self.disk_bytes

    @property
    def on_disk(self) -> int:
        return len(self._spool)

    def __iter__(self) -> Iterator[OutboxMessage]:
        """Every message, oldest first (reads the spool; for tests and inspection)."""
        yield from list(self._memory)
        for entry in list(self._spool):
            yield entry.loaded or self._read(entry)

    # -- placing and dropping ---------------------------------------------------------

    def _place(self, message: OutboxMessage) -> None:
        while True:
            if not self._spool and self.memory_bytes + message.size <= self.memory_cap:
                self._memory.append(message)
                self.memory_bytes += message.size
                return
            if self.disk_bytes + message.size <= self.disk_cap:
                self._spool_or_drop(message)
                return
            if not self._drop_oldest():
                self._count_drop(message.records)
                return

    def _spool_or_drop(self, message: OutboxMessage, *, front: bool = False) -> None:
        try:
            entry = self._write(message)
        except OSError as exc:  # disk full, directory gone: count it like an overflow
            self._count_drop(message.records)
            log.error("outbox: cannot spool %s to %s (%s); dropped it, free space or fix --state-dir",
                      message.msg_id, self._dir, exc.strerror or exc)
            return
        if front:
            self._spool.appendleft(entry)
        else:
            self._spool.append(entry)

    def _drop_oldest(self) -> bool:
        """Drop the oldest message that is not being sent right now; False if there is none."""
        index = self._first_unsent(self._memory)
        if index < len(self._memory):
            message = self._memory[index]
            del self._memory[index]
            self.memory_bytes -= message.size
            records = message.records
        else:
            index = self._first_unsent(self._spool)
            if index == len(self._spool):
                return False
            entry = self._spool[index]
            del self._spool[index]
            self._delete(entry)
            records = entry.records
        if self.dropped_messages == 0:
            log.warning("outbox full (%d bytes in memory, %d on disk); dropping the oldest messages",
                        self.memory_cap, self.disk_cap)
        self._count_drop(records)
        return True

    def _first_unsent(self, queue: deque) -> int:
        """How many messages at the head of ``queue`` were handed out by the last ``peek``."""
        index = 0
        while index < len(queue) and queue[index].seq <= self._sending_through:
            index += 1
        return index

    def _count_drop(self, records: int) -> None:
        self.dropped_messages += 1
        self.dropped_records += records

    # -- the spool directory ------------------------------------------------------------

    def _open_spool(self) -> None:
        assert self._dir is not None
        try:
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._dir.chmod(0o700)
        except OSError as exc:
            raise ConfigError(f"cannot create outbox directory {self._dir}: {exc.strerror}; "
                              "choose a writable --state-dir") from exc
        for stale in self._dir.glob(".*.tmp"):
            stale.unlink()
        for path in sorted(self._dir.glob("*" + SUFFIX)):
            entry = self._index(path)
            if entry is not None:
                self._spool.append(entry)
                self.disk_bytes += entry.size
                self._next_seq = max(self._next_seq, entry.seq + 1)
        while self.disk_bytes > self.disk_cap and self._drop_oldest():
            pass
        if self._spool:
            log.info("outbox: %d messages (%d bytes) waiting in %s", len(self._spool), self.disk_bytes, self._dir)

    def _index(self, path: Path) -> _SpoolEntry | None:
        try:
            seq = int(path.stem)
            with path.open("rb") as f:
                magic, header = f.readline(), f.readline()
            meta = msgspec.json.decode(header)
            if magic != MAGIC:
                raise ValueError("bad magic")
            size = path.stat().st_size - len(magic) - len(header)
            return _SpoolEntry(seq, path, size, int(meta["records"]))
        except (ValueError, KeyError, TypeError, OSError, msgspec.DecodeError) as exc:
            log.error("outbox: %s is not a spool file (%s); moved aside as .corrupt", path, exc)
            path.rename(path.with_suffix(".corrupt"))
            return None

    def _path(self, seq: int) -> Path:
        assert self._dir is not None
        return self._dir / f"{seq:016d}{SUFFIX}"

    def _write(self, message: OutboxMessage) -> _SpoolEntry:
        path = self._path(message.seq)
        tmp = path.with_name(f".{path.name}.tmp")
        header = msgspec.json.encode({"msg_id": message.msg_id, "subject": message.subject,
                               "records": message.records}) + b"\n"
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(MAGIC + header + message.payload)
            f.flush()
            os.fsync(f.fileno())
        tmp.rename(path)
        _fsync_dir(path.parent)
        self.disk_bytes += message.size
        return _SpoolEntry(message.seq, path, message.size, message.records, message)

    def _read(self, entry: _SpoolEntry) -> OutboxMessage:
        data = entry.path.read_bytes()
        magic_end = len(MAGIC)
        header_end = data.index(b"\n", magic_end) + 1
        meta = msgspec.json.decode(data[magic_end:header_end])
        return OutboxMessage(entry.seq, meta["msg_id"], meta["subject"], data[header_end:], meta["records"])

    def _delete(self, entry: _SpoolEntry) -> None:
        self.disk_bytes -= entry.size
        try:
            entry.path.unlink()
        except FileNotFoundError:
            pass


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
