"""Where alerts go: a bounded, retrying queue per target, so a slow or dead target never
blocks the evaluation.

``NotificationQueue.put`` never waits: over ``capacity`` the oldest waiting alerts are
dropped, counted and logged. Its ``run`` loop delivers up to ``batch`` alerts at a time;
a failure that may pass (connection refused, timeout, HTTP 429 or 5xx, NATS away) is
counted and retried with the shared ``Backoff`` (0.5 s doubling to 30 s), a permanent one
(another HTTP 4xx) drops the batch, counted and logged.

Targets: ``NatsTarget`` publishes each alert (the contract's ``AlertMessage``, encoded with
``encode_alert``) to JetStream on ``connstats.v1.alerts.<host>`` (stream
``CONNSTATS_ALERTS``); ``WebhookTarget`` POSTs the Alertmanager v2 format
(``alertmanager_alerts``) to ``<url>/api/v2/alerts``.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import deque
from typing import Any, Protocol

import aiohttp
import nats.errors
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from connstats.probe.contract import (
    ALERTS_WILDCARD,
    AlertMessage,
    StreamSettings,
    alerts_subject,
    encode_alert,
    host_token,
    redacted,
)
from connstats.probe.runtime.backoff import Backoff

from .stats import AlertStats

log = logging.getLogger(__name__)

ALERTS_STREAM = "CONNSTATS_ALERTS"
ALERTS_MAX_AGE = 30 * 24 * 3600.0
ALERTMANAGER_PATH = "/api/v2/alerts"
VALID_FOR_REPEATS = 4  # a firing alert's endsAt: sent + 4 x repeat, unless re-sent before


class DeliveryFailed(Exception):
    def __init__(self, reason: str, retry: bool = True) -> None:
        super().__init__(reason)
        self.retry = retry


class Target(Protocol):
    name: str

    async def deliver(self, alerts: list[AlertMessage]) -> None: ...

    async def close(self) -> None: ...


class NotificationQueue:
    def __init__(self, target: Target, stats: AlertStats, capacity: int = 1000, batch: int = 64,
                 backoff: Backoff | None = None) -> None:
        self.target = target
        self.stats = stats
        self.capacity = capacity
        self.batch = batch
        self.backoff = backoff or Backoff()
        self._waiting: deque[AlertMessage] = deque()
        self._arrived = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def depth(self) -> int:
        """Alerts waiting (those in the batch being delivered included)."""
        return len(self._waiting)

    def put(self, alerts: list[AlertMessage]) -> None:
        if not alerts:
            return
        self._waiting.extend(alerts)
        self._idle.clear()
        excess = len(self._waiting) - self.capacity
        if excess > 0:
            for _ in range(excess):
                self._waiting.popleft()
            self.stats.dropped[self.target.name] += excess
            log.warning("alerts to %s: queue full (%d); dropped the %d oldest (%d dropped so far)",
                        self.target.name, self.capacity, excess, self.stats.dropped[self.target.name])
        self._arrived.set()

    async def run(self) -> None:
        """Deliver until cancelled."""
        while True:
            if not self._waiting:
                self._idle.set()
                self._arrived.clear()
                await self._arrived.wait()
                continue
            batch = [self._waiting[i] for i in range(min(self.batch, len(self._waiting)))]
            try:
                await self.target.deliver(batch)
            except DeliveryFailed as exc:
                self.stats.failed[self.target.name] += 1
                if not exc.retry:
                    self._forget(batch, f"dropped {len(batch)} alerts: {exc}")
                    continue
                delay = self.backoff.next()
                log.warning("alerts to %s: %s; retrying in %.1f s", self.target.name, exc, delay)
                await asyncio.sleep(delay)
                continue
            self.backoff.reset()
            self._take(batch)
            self.stats.sent[self.target.name] += len(batch)

    async def drain(self, timeout: float) -> bool:
        """Wait until everything queued was delivered; False after ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def _take(self, batch: list[AlertMessage]) -> None:
        """Remove ``batch`` from the front (what of it was not dropped meanwhile)."""
        taken = {id(alert) for alert in batch}
        while self._waiting and id(self._waiting[0]) in taken:
            self._waiting.popleft()

    def _forget(self, batch: list[AlertMessage], reason: str) -> None:
        self._take(batch)
        self.stats.dropped[self.target.name] += len(batch)
        log.warning("alerts to %s: %s", self.target.name, reason)


# -- NATS ----------------------------------------------------------------------------------------


def alerts_stream_config(settings: StreamSettings = StreamSettings()) -> StreamConfig:
    """``settings.replicas`` as for the flow stream: None creates one replica and leaves an
    existing stream alone (``ensure_stream``)."""
    return StreamConfig(name=ALERTS_STREAM, subjects=[ALERTS_WILDCARD], storage=StorageType.FILE,
                        discard=DiscardPolicy.OLD, max_age=ALERTS_MAX_AGE, duplicate_window=120.0,
                        num_replicas=settings.replicas)


class NatsTarget:
    name = "nats"

    def __init__(self, js: JetStreamContext, timeout: float = 2.0) -> None:
        self.js = js
        self.timeout = timeout

    async def deliver(self, alerts: list[AlertMessage]) -> None:
        for alert in alerts:  # the same message id on a retry: the stream keeps it once
            msg_id = f"{alert.fingerprint}/{alert.state}/{alert.sent_at}"
            try:
                await self.js.publish(alerts_subject(alert.host), encode_alert(alert), timeout=self.timeout,
                                      headers={"Nats-Msg-Id": msg_id})
            except (nats.errors.Error, OSError, asyncio.TimeoutError) as exc:
                raise DeliveryFailed(f"publish failed: {type(exc).__name__}") from exc

    async def close(self) -> None:
        pass


# -- webhooks (Alertmanager v2) ---------------------------------------------------------------------


def rfc3339(ns: int) -> str:
    moment = dt.datetime.fromtimestamp(ns // 10**9, dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns % 10**9 // 10**6:03d}Z"


def alertmanager_alerts(alerts: list[AlertMessage]) -> list[dict[str, Any]]:
    """The body of ``POST /api/v2/alerts``: labels, annotations, startsAt, endsAt, generatorURL.
    A resolved alert ends when it resolved (no later than now); a firing one is valid for
    four re-send periods, so Alertmanager resolves it if the engine goes away."""
    out = []
    for alert in alerts:
        ends = alert.ended_at if alert.state == "resolved" else (
            alert.sent_at + VALID_FOR_REPEATS * alert.repeat_ns)
        annotations = {"summary": alert.summary, "description": alert.description,
                       "value": f"{alert.value:g}" if isinstance(alert.value, float) else str(alert.value),
                       "host": alert.host, "fingerprint": alert.fingerprint}
        out.append({
            "labels": dict(alert.labels),
            "annotations": {k: v for k, v in annotations.items() if v},
            "startsAt": rfc3339(alert.started_at), "endsAt": rfc3339(ends),
            "generatorURL": f"connstats://{host_token(alert.engine)}/alerts/{alert.rule}",
        })
    return out


def alertmanager_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith(ALERTMANAGER_PATH) else url + ALERTMANAGER_PATH


class WebhookTarget:
    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = alertmanager_url(url)
        self.name = redacted((self.url,))  # what logs and errors show: no password of the URL's
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def deliver(self, alerts: list[AlertMessage]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        try:
            async with self._session.post(self.url, json=alertmanager_alerts(alerts)) as response:
                if response.status < 300:
                    return
                retry = response.status == 429 or response.status >= 500
                raise DeliveryFailed(f"HTTP {response.status} from {self.name}", retry)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise DeliveryFailed(f"POST {self.name} failed: {type(exc).__name__}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
