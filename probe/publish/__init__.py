"""Getting each interval to JetStream: ``FlowPublisher`` (publisher.py) and the outbox it
keeps on disk while NATS is away (outbox.py)."""
