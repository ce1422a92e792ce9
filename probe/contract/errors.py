"""The one exception hierarchy of connstats.

    ConnstatsError            base: the CLI prints ``error: <message>`` and exits 1
    ├── KernelError           BPF cannot be compiled, loaded or attached (root, headers, kernel)
    ├── DeviceError           an interface that does not exist or cannot be used
    │   └── DeviceOwned       another running probe has the device attached (probe/kernel/ownership.py)
    ├── ConfigError           a setting that makes no sense
    │   └── PolicyError       a policy file that does not follow the format (names line and key)
    ├── NotApplied            a policy apply refused or stopped (deadline, superseded): nothing changed
    ├── TransportError        NATS unreachable, refused or misconfigured
    ├── StoreError            SQLite or InfluxDB unreachable or refusing writes
    │   └── StoreUnavailable  a transient store failure: retry later
    │       └── StoreFull     the store's disk or quota is full: pause until writes succeed
    └── MessageError          a flow message that does not follow the schema, or anything
                              decoded from outside beyond the bounds (bounded.py: size, nesting)

Every message reads ``what happened; what to do``. Library errors are translated at
one boundary each with ``raise ... from exc`` so the cause stays in debug logs.
"""


class ConnstatsError(Exception):
    """Base of every error connstats raises on purpose."""


class KernelError(ConnstatsError):
    """The kernel side (BPF compile, load, attach) failed."""


class DeviceError(ConnstatsError):
    """A network interface is missing or unusable."""


class ConfigError(ConnstatsError):
    """A setting is invalid."""


class PolicyError(ConfigError):
    """A policy file is invalid; the message names the line and the key."""


class NotApplied(ConnstatsError):
    """A policy apply did not take effect and never will (its deadline passed, or a newer
    request superseded it); the policy in force before it stays."""


class TransportError(ConnstatsError):
    """NATS could not be reached or refused an operation."""


class StoreError(ConnstatsError):
    """The store rejected data or cannot be used."""


class StoreUnavailable(StoreError):
    """The store failed in a way that is worth retrying (connection, 429, 5xx, locked)."""


class StoreFull(StoreUnavailable):
    """The store has no room (SQLITE_FULL, ENOSPC, InfluxDB 507): the store's condition,
    never a message's fault; the sink pauses and retries, and dead-letters nothing."""


class MessageError(ConnstatsError):
    """A message does not match the wire schema, or is too big or too deeply nested to decode."""


MAX_REASON = 300  # characters of a decoder's reason in a MessageError


def one_line(exc: Exception, limit: int = MAX_REASON) -> str:
    """A decoder's reason as one line of at most ``limit`` characters (msgspec quotes a wrong
    value in its reason, and a value can be as long as the message)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
