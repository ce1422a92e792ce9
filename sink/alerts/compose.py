"""``build_alerts``: the alert engine's composition root (``connstats alert``, and ``up
--rules`` in-process).

    AlertConfig ──> rules ──> AlertEngine(baseline file in the state directory)
                 └─> one NotificationQueue(WebhookTarget) per --webhook
                 ──> AlertMetrics on config.telemetry (`up` passes the one all its parts share)
                 ──> AlertService (the NATS target is added once connected)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from connstats.probe.contract import NatsOptions, StreamSettings
from connstats.probe.runtime.telemetry import Telemetry

from .baseline import BASELINE_FILE, BaselineFile
from .engine import AlertEngine
from .metrics import AlertMetrics
from .notify import NotificationQueue, WebhookTarget
from .rule_keys import AlertRule
from .service import AlertService, ServiceSettings
from .stats import AlertStats


@dataclass
class AlertConfig:
    rules: list[AlertRule]
    nats: NatsOptions
    host: str  # the engine's host: the subject of alerts that no single host raised
    state_dir: Path | None  # where the baselines are kept (None: not kept)
    webhooks: tuple[str, ...] = ()
    service: ServiceSettings = field(default_factory=ServiceSettings)
    stream: StreamSettings = field(default_factory=StreamSettings)  # replicas of CONNSTATS_ALERTS
    telemetry: Telemetry = field(default_factory=Telemetry)  # `up` passes the one all its parts share


def build_alerts(config: AlertConfig) -> AlertService:
    stats = AlertStats()
    baseline = BaselineFile(config.state_dir / BASELINE_FILE) if config.state_dir else None
    engine = AlertEngine(config.rules, config.host, baseline, stats=stats)
    webhooks = [NotificationQueue(WebhookTarget(url, config.service.webhook_timeout), stats,
                                  config.service.queue_capacity)
                for url in config.webhooks]
    metrics = AlertMetrics(engine, config.service.durable)
    config.telemetry.registry.register(metrics)
    config.telemetry.add_check("alerts", metrics.not_ready)
    return AlertService(engine, config.nats, webhooks, config.service, stream=config.stream, metrics=metrics)
