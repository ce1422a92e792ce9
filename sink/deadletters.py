"""Dead letters read back and replayed: ``connstats deadletter list|replay``.

    read_dead_letters(js, since_ns, reason) -> [DeadLetter]     CONNSTATS_DEADLETTER, oldest first
    replay(js, letters) -> Replayed                              each to its original subject, then deleted

A replay publishes the dead letter's payload, unchanged, to the flow subject it came from,
with ``Nats-Msg-Id`` ``replay/CONNSTATS_DEADLETTER/<seq>`` (a retry within the duplicate
window is one message), and deletes the dead letter once JetStream acknowledged the copy:
a second replay finds nothing. The sink then stores it like any flow message; the stores
key rows by connection and interval, so a message already stored is stored once.
"""
from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors
from nats.js.api import Header
from nats.js.client import JetStreamContext

from connstats.probe.contract import TransportError, host_of_subject

from .consumer import REASON_CLASS_HEADER, REASON_HEADER, SEQUENCE_HEADER, SUBJECT_HEADER
from .jetstream import DEADLETTER_STREAM_NAME

REPLAY_OF_HEADER = "Connstats-Replay-Of"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class DeadLetter:
    seq: int  # in CONNSTATS_DEADLETTER
    time_ns: int  # when it was dead-lettered
    subject: str  # the flow subject it was published on
    origin_seq: int | None  # its sequence in CONNSTATS
    reason: str
    reason_class: str  # undecodable, wrong_subject, store_refused, store_failed (older sinks': from the reason)
    data: bytes = field(repr=False)

    def matches(self, reason: str | None) -> bool:
        """``reason``: its class exactly, or a part of its reason text (any case)."""
        return reason is None or reason == self.reason_class or reason.lower() in self.reason.lower()

    def row(self) -> dict:
        return {"seq": self.seq, "time": self.time_ns, "subject": self.subject, "origin_seq": self.origin_seq,
                "class": self.reason_class, "reason": self.reason, "size": len(self.data)}


@dataclass(frozen=True)
class Replayed:
    replayed: list[DeadLetter]
    skipped: list[tuple[DeadLetter, str]]  # not a flow subject: why


async def read_dead_letters(js: JetStreamContext, since_ns: int | None = None,
                            reason: str | None = None) -> list[DeadLetter]:
    """The dead letters still in the stream, oldest first, dead-lettered at or after
    ``since_ns`` and matching ``reason`` (see ``DeadLetter.matches``)."""
    state = await _call(js.stream_info(DEADLETTER_STREAM_NAME), "read the dead-letter stream")
    if not state.state.messages:
        return []
    letters = []
    for seq in range(state.state.first_seq, state.state.last_seq + 1):
        try:
            raw = await _call(js.get_msg(DEADLETTER_STREAM_NAME, seq), "read a dead letter")
        except _Gone:
            continue  # deleted (replayed) or aged out meanwhile
        letter = _dead_letter(raw)
        if (since_ns is None or letter.time_ns >= since_ns) and letter.matches(reason):
            letters.append(letter)
    return letters


async def replay(js: JetStreamContext, letters: list[DeadLetter]) -> Replayed:
    """Publish each letter to its original subject, then delete it from the dead-letter stream."""
    replayed, skipped = [], []
    for letter in letters:
        if host_of_subject(letter.subject, "flows") is None:
            skipped.append((letter, f"its subject {letter.subject!r} is not a flow subject"))
            continue
        headers = {Header.MSG_ID: f"replay/{DEADLETTER_STREAM_NAME}/{letter.seq}", REPLAY_OF_HEADER: str(letter.seq)}
        await _call(js.publish(letter.subject, letter.data, headers=headers),
                    f"publish dead letter {letter.seq} to {letter.subject}")
        try:
            await _call(js.delete_msg(DEADLETTER_STREAM_NAME, letter.seq), f"delete dead letter {letter.seq}")
        except _Gone:
            pass  # somebody else's replay deleted it first
        replayed.append(letter)
    return Replayed(replayed, skipped)


class _Gone(Exception):
    """The message is not in the stream (any more)."""


async def _call(request, what: str):
    try:
        return await request
    except nats.js.errors.NotFoundError as exc:
        if "stream not found" in str(exc.description or "").lower():
            raise TransportError(f"cannot {what}: there is no {DEADLETTER_STREAM_NAME} stream; "
                                 "a sink creates it when it starts") from exc
        raise _Gone() from exc
    except nats.js.errors.APIError as exc:
        raise TransportError(f"cannot {what}: JetStream answered {exc.code} {exc.description}; "
                             "check the NATS user's permissions (see docs/nats.md, Dead letters)") from exc
    except (nats.errors.Error, asyncio.TimeoutError, OSError) as exc:
        raise TransportError(f"cannot {what}: {type(exc).__name__}; check the NATS connection and the "
                             "user's permissions (see docs/nats.md, Dead letters)") from exc


def _dead_letter(raw) -> DeadLetter:
    headers = raw.headers or {}
    origin = headers.get(SEQUENCE_HEADER, "")
    return DeadLetter(
        seq=raw.seq, time_ns=_time_ns(raw), subject=headers.get(SUBJECT_HEADER, ""),
        origin_seq=int(origin) if origin.isdigit() else None, reason=headers.get(REASON_HEADER, ""),
        reason_class=headers.get(REASON_CLASS_HEADER) or _class_of(headers.get(REASON_HEADER, "")),
        data=raw.data or b"",
    )


# How the reasons of sinks that wrote no class header begin, by class.
_REASON_STARTS = (("undecodable: ", "undecodable"), ("host mismatch: ", "wrong_subject"),
                  ("subject ", "wrong_subject"), ("store refused: ", "store_refused"),
                  ("store failed ", "store_failed"))


def _class_of(reason: str) -> str:
    return next((name for start, name in _REASON_STARTS if reason.startswith(start)), "")


def _time_ns(raw) -> int:
    """The time JetStream stored the dead letter (``RawStreamMsg.time``, to the microsecond)."""
    if raw.time is None:
        return 0
    delta = raw.time - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
