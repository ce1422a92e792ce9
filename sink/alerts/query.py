"""``firing_alerts(nc)``: the alerts firing now, for ``connstats alerts`` and the web page.

1. Ask the running engine: a request on ``connstats.v1.ctl._alerts.firing`` (engines answer
   in the queue group ``connstats-alerts``, so one answers) returns
   ``{"engine": host, "alerts": [...]}`` with the alerts as published, values current.
2. No engine answers (none runs, or it is busy for 2 s): read the stream
   ``CONNSTATS_ALERTS`` backwards from its last message, at most ``MAX_SCAN`` messages
   and ``LOOKBACK`` back; the last message per fingerprint counts, and a firing one is
   reported while it is valid (sent within four re-send periods: a firing alert is re-sent
   every ``repeat``, so one that was not is from an engine that went away).
"""
from __future__ import annotations

import json
import time
from typing import Any

import nats.errors
import nats.js.errors

from connstats.probe.contract import MessageError, TransportError, check_json, control_subject

from .notify import ALERTS_STREAM, VALID_FOR_REPEATS

FIRING_SUBJECT = control_subject("_alerts", "firing")
RESPONDERS = "connstats-alerts"
MAX_SCAN = 5000
LOOKBACK_NS = 3600 * 10**9


async def firing_alerts(nc, timeout: float = 2.0) -> list[dict[str, Any]]:
    try:
        reply = await nc.request(FIRING_SUBJECT, b"{}", timeout=timeout)
        alerts = _json(reply.data)["alerts"]
        if isinstance(alerts, list) and all(isinstance(a, dict) for a in alerts):
            return alerts
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        pass
    except (ValueError, KeyError, TypeError, MessageError):
        pass  # not an engine's answer: the stream then
    return await firing_from_stream(nc)


async def firing_from_stream(nc, now_ns: int | None = None) -> list[dict[str, Any]]:
    now = time.time_ns() if now_ns is None else now_ns
    js = nc.jetstream()
    try:
        state = (await js.stream_info(ALERTS_STREAM)).state
    except nats.js.errors.NotFoundError:
        return []
    except (nats.errors.Error, OSError) as exc:
        raise TransportError(f"cannot read the stream {ALERTS_STREAM}: {exc!r}; check that JetStream is "
                             "enabled and that this user may read it") from exc
    latest: dict[str, dict[str, Any]] = {}
    seq = state.last_seq
    while seq >= max(state.first_seq, 1) and state.last_seq - seq < MAX_SCAN:
        alert = await _message(js, seq)
        seq -= 1
        if alert is None:
            continue
        if alert.get("sent_at", 0) < now - LOOKBACK_NS:
            break
        latest.setdefault(alert.get("fingerprint", ""), alert)
    firing = [a for a in latest.values() if a.get("state") == "firing"
              and a["sent_at"] + VALID_FOR_REPEATS * a.get("repeat_ns", 0) >= now]
    return sorted(firing, key=lambda a: (a.get("started_at", 0), a.get("rule", ""), a.get("fingerprint", "")))


async def _message(js, seq: int) -> dict[str, Any] | None:
    try:
        alert = _json((await js.get_msg(ALERTS_STREAM, seq)).data)
    except nats.js.errors.NotFoundError:
        return None  # deleted
    except (ValueError, MessageError):
        return None
    except (nats.errors.Error, OSError) as exc:
        raise TransportError(f"cannot read message {seq} of {ALERTS_STREAM}: {exc!r}; try again") from exc
    return alert if isinstance(alert, dict) and isinstance(alert.get("sent_at"), int) else None


def _json(data: bytes) -> Any:
    """A message's JSON, bounded first (``MessageError`` if it nests too deep)."""
    check_json(data)
    return json.loads(data)
