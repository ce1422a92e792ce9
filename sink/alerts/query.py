"""``firing_alerts(nc)``: the alerts firing now, for ``connstats alerts`` and the web page.

1. Ask the running engine: a request on ``connstats.v1.ctl._alerts.firing`` (engines answer
   in the queue group ``connstats-alerts``, so one answers) returns the contract's
   ``FiringAlerts``, ``{"engine": host, "alerts": [...]}``, the alerts as published, values current.
2. No engine answers (none runs, or it is busy for 2 s): read the stream
   ``CONNSTATS_ALERTS`` backwards from its last message, at most ``MAX_SCAN`` messages
   and ``LOOKBACK`` back; the last message per fingerprint counts, and a firing one is
   reported while it is valid (sent within four re-send periods: a firing alert is re-sent
   every ``repeat``, so one that was not is from an engine that went away). A message that
   is not an ``AlertMessage`` (``decode_alert``) is passed over.
"""
from __future__ import annotations

import time

import nats.errors
import nats.js.errors

from connstats.probe.contract import (
    AlertMessage,
    MessageError,
    TransportError,
    control_subject,
    decode_alert,
    decode_firing,
)

from .notify import ALERTS_STREAM, VALID_FOR_REPEATS

FIRING_SUBJECT = control_subject("_alerts", "firing")
RESPONDERS = "connstats-alerts"
MAX_SCAN = 5000
LOOKBACK_NS = 3600 * 10**9


async def firing_alerts(nc, timeout: float = 2.0) -> list[AlertMessage]:
    try:
        reply = await nc.request(FIRING_SUBJECT, b"{}", timeout=timeout)
        return decode_firing(reply.data).alerts
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        pass
    except MessageError:
        pass  # not an engine's answer: the stream then
    return await firing_from_stream(nc)


async def firing_from_stream(nc, now_ns: int | None = None) -> list[AlertMessage]:
    now = time.time_ns() if now_ns is None else now_ns
    js = nc.jetstream()
    try:
        state = (await js.stream_info(ALERTS_STREAM)).state
    except nats.js.errors.NotFoundError:
        return []
    except (nats.errors.Error, OSError) as exc:
        raise TransportError(f"cannot read the stream {ALERTS_STREAM}: {exc!r}; check that JetStream is "
                             "enabled and that this user may read it") from exc
    latest: dict[str, AlertMessage] = {}
    seq = state.last_seq
    while seq >= max(state.first_seq, 1) and state.last_seq - seq < MAX_SCAN:
        alert = await _message(js, seq)
        seq -= 1
        if alert is None:
            continue
        if alert.sent_at < now - LOOKBACK_NS:
            break
        latest.setdefault(alert.fingerprint, alert)
    firing = [a for a in latest.values() if a.state == "firing"
              and a.sent_at + VALID_FOR_REPEATS * a.repeat_ns >= now]
    return sorted(firing, key=lambda a: (a.started_at, a.rule, a.fingerprint))


async def _message(js, seq: int) -> AlertMessage | None:
    try:
        return decode_alert((await js.get_msg(ALERTS_STREAM, seq)).data)
    except nats.js.errors.NotFoundError:
        return None  # deleted
    except MessageError:
        return None
    except (nats.errors.Error, OSError) as exc:
        raise TransportError(f"cannot read message {seq} of {ALERTS_STREAM}: {exc!r}; try again") from exc
