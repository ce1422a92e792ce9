"""Moved: the NATS layer is ``connstats.probe.messaging`` and the sink's consumer and
dead-letter stream are ``connstats.sink.jetstream``; import them through
``connstats.probe.contract``. This name stays until every import has moved."""
from connstats.probe.messaging import *  # noqa: F401,F403
from connstats.probe.messaging import _connect_arguments, _tls_context  # noqa: F401
from connstats.sink.jetstream import (  # noqa: F401
    DEADLETTER_STREAM_NAME, DEADLETTER_SUBJECT, DEFAULT_DURABLE, deadletter_stream_config,
    sink_consumer_config,
)
