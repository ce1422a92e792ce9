"""What only the sink uses on JetStream: its durable pull consumer and the dead-letter
stream. The subjects, the flow stream and the connection are shared, in
``connstats.probe.contract.messaging`` (through ``connstats.probe.contract``).

Dead letters go to their own stream ``CONNSTATS_DEADLETTER`` so that they keep their own,
longer retention, never count against the flow stream's byte limit, and are never handed
to the sink's flow consumer.
"""
from __future__ import annotations

from nats.js.api import ConsumerConfig, DiscardPolicy, StorageType, StreamConfig

from connstats.probe.contract import FLOWS_WILDCARD, PREFIX, StreamSettings

DEADLETTER_STREAM_NAME = "CONNSTATS_DEADLETTER"
DEADLETTER_SUBJECT = f"{PREFIX}.deadletter"
DEFAULT_DURABLE = "connstats-sink"


def deadletter_stream_config(settings: StreamSettings) -> StreamConfig:
    return StreamConfig(
        name=DEADLETTER_STREAM_NAME,
        subjects=[DEADLETTER_SUBJECT],
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=settings.deadletter_max_age,
        duplicate_window=settings.duplicate_window,
        num_replicas=settings.replicas,
    )


def sink_consumer_config(durable: str = DEFAULT_DURABLE, *, ack_wait: float = 30.0,
                         max_ack_pending: int = 1024) -> ConsumerConfig:
    """The sink's durable pull consumer on the flow subjects; shared by every sink process."""
    return ConsumerConfig(
        durable_name=durable,
        filter_subject=FLOWS_WILDCARD,
        ack_wait=ack_wait,
        max_ack_pending=max_ack_pending,
        max_deliver=-1,
    )
