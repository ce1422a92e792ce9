"""The NATS layer every process shares: subjects, the flow stream, and the connection
(options, TLS, credentials, one connect that fails fast and then reconnects forever).

Subjects (``<host>`` is one escaped token, see ``host_token``)::

    connstats.v1.flows.<host>          flow messages, one per chunk of an interval
    connstats.v1.events.<host>         attach/detach and outbox-overflow events (JSON)
    connstats.v1.deadletter            messages the sink could not decode or store
    connstats.v1.ctl.<host>.<verb>     control requests (probe/api/control.py)
    connstats.v1.alerts.<host>         alerts (JSON) raised on that host's data (connstats.sink.alerts)
    connstats.v1.policy.<host>         policy violations: one JSON event per denied
                                       connection and interval (core NATS, not in a stream)

The stream ``CONNSTATS`` holds ``connstats.v1.flows.>`` and ``connstats.v1.events.>``.
What only the sink uses (its durable consumer, the dead-letter stream) is in
``connstats.sink.jetstream``. Named ``messaging`` and not ``nats`` so that it never
shadows the ``nats`` package; subscribers import it through ``connstats.probe.contract``.
"""
from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
import time
from dataclasses import dataclass, field, replace
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig, StreamInfo

from .errors import ConfigError, TransportError

log = logging.getLogger(__name__)

__all__ = [
    "ALERTS_WILDCARD", "EVENTS_WILDCARD", "FLOWS_WILDCARD", "HOST_KINDS", "POLICY_WILDCARD", "PREFIX", "STREAM_NAME",
    "NatsOptions", "StreamSettings", "alerts_subject", "connect", "control_subject", "control_verb", "ensure_stream",
    "events_subject", "flow_stream_config", "flows_subject", "host_from_token", "host_mismatch", "host_of_subject",
    "host_token", "message_id", "policy_subject", "redacted",
]

PREFIX = "connstats.v1"
STREAM_NAME = "CONNSTATS"
FLOWS_WILDCARD = f"{PREFIX}.flows.>"
EVENTS_WILDCARD = f"{PREFIX}.events.>"
ALERTS_WILDCARD = f"{PREFIX}.alerts.>"

# Bytes kept as they are in a host token; everything else becomes %XX (upper-case hex
# of each UTF-8 byte). '%' itself is escaped, so the mapping is reversible.
_SAFE_TOKEN_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_ESCAPE = re.compile(r"%([0-9A-F]{2})")


# -- subjects ----------------------------------------------------------------------


def host_token(host: str | None = None) -> str:
    """Escape a host name into one subject token: ``web-1.example`` -> ``web-1%2Eexample``."""
    host = socket.gethostname() if host is None else host
    if not host:
        raise ConfigError("the host name is empty; pass --host with a non-empty name")
    raw = host.encode("utf-8")
    return "".join(chr(b) if b in _SAFE_TOKEN_BYTES else f"%{b:02X}" for b in raw)


def host_from_token(token: str) -> str:
    """Undo ``host_token``."""
    raw = bytearray()
    position = 0
    for match in _ESCAPE.finditer(token):
        raw += token[position:match.start()].encode("ascii")
        raw.append(int(match.group(1), 16))
        position = match.end()
    raw += token[position:].encode("ascii")
    return raw.decode("utf-8")


def flows_subject(host: str | None = None) -> str:
    return f"{PREFIX}.flows.{host_token(host)}"


def events_subject(host: str | None = None) -> str:
    return f"{PREFIX}.events.{host_token(host)}"


def policy_subject(host: str | None = None) -> str:
    """Where a probe publishes policy violations (probe/policy/violations.py)."""
    return f"{PREFIX}.policy.{host_token(host)}"


POLICY_WILDCARD = f"{PREFIX}.policy.>"


def alerts_subject(host: str | None = None) -> str:
    return f"{PREFIX}.alerts.{host_token(host)}"


def control_subject(host: str | None, verb: str) -> str:
    return f"{PREFIX}.ctl.{host_token(host)}.{host_token(verb)}"


HOST_KINDS = ("flows", "events", "alerts", "policy")  # the kinds whose subject is <PREFIX>.<kind>.<host>


def host_of_subject(subject: str, kind: str | None = None) -> str | None:
    """The host name a subject ``<PREFIX>.<kind>.<host token>`` was published for, e.g.
    ``connstats.v1.flows.web-1%2Eexample`` -> ``web-1.example``; ``kind`` None takes any of
    ``HOST_KINDS``. None if the subject does not fit: another prefix or kind, a token more
    or fewer (``connstats.v1.ctl.<host>.<verb>``, ``connstats.v1.deadletter``), or a host
    token that ``host_token`` would not have written (empty, a byte it escapes, ``%``
    without two upper-case hex digits, an escape that is not UTF-8). The one rule for
    every reader of a subject's host (the sink, the alert engine, the flow subscribers,
    ``connstats deadletter``)."""
    parts = subject.split(".")
    if len(parts) != _HOST_SUBJECT_TOKENS or ".".join(parts[:-2]) != PREFIX:
        return None
    if parts[-2] not in ((kind,) if kind is not None else HOST_KINDS):
        return None
    return _host_of_token(parts[-1])


def host_mismatch(subject: str, host: str, kind: str = "flows") -> str:
    """Why a message's body (``host``) and its subject disagree about its host, in one line
    for logs and dead-letter reasons; "" if they agree."""
    subject_host = host_of_subject(subject, kind)
    if subject_host is None:
        return (f"subject {subject} is not {PREFIX}.{kind}.<host>; publish {kind} with "
                f"connstats.probe.contract.{kind}_subject")
    if subject_host != host:
        return (f"host mismatch: the body says host {host!r} but subject {subject} is host "
                f"{subject_host!r}; a probe publishes only its own host's {kind}")
    return ""


def control_verb(subject: str, host: str) -> str | None:
    """The verb of a control request to ``host``: ``connstats.v1.ctl.<host token>.<verb
    token>`` -> the verb; None if the subject does not fit (another host, or a token that
    ``host_token`` would not have written), like ``host_of_subject``."""
    parts = subject.split(".")
    if len(parts) != _HOST_SUBJECT_TOKENS + 1 or ".".join(parts[:-3]) != PREFIX or parts[-3] != "ctl":
        return None
    if _host_of_token(parts[-2]) != host:
        return None
    return _host_of_token(parts[-1])


_HOST_SUBJECT_TOKENS = PREFIX.count(".") + 3  # the prefix's tokens, the kind, the host


def _host_of_token(token: str) -> str | None:
    """``host_from_token(token)`` if ``token`` is what ``host_token`` writes for it, else None."""
    try:
        host = host_from_token(token)
        return host if host_token(host) == token else None
    except (UnicodeError, ConfigError):  # not ASCII, an escape that is not UTF-8; empty
        return None


def message_id(host: str, boot_id: str, interval_seq: int, chunk: int) -> str:
    """The ``Nats-Msg-Id`` of one chunk: the same on every retry, so the server de-duplicates."""
    return f"{host}/{boot_id}/{interval_seq}/{chunk}"


# -- the flow stream -------------------------------------------------------------------


@dataclass(frozen=True)
class StreamSettings:
    """The flow stream's limits, applied only when the stream is created; ``replicas``, when
    given, also to a stream that exists with another replica count (see ``ensure_stream``)."""

    max_age: float = 7 * 24 * 3600.0  # seconds
    max_bytes: int = -1  # -1: no limit (the server's account limit applies)
    duplicate_window: float = 120.0  # seconds
    deadletter_max_age: float = 30 * 24 * 3600.0  # the sink's dead-letter stream (sink/jetstream.py)
    replicas: int | None = None  # copies on a JetStream cluster (--stream-replicas); None: 1 for a
    # new stream, an existing one left as it is


def flow_stream_config(settings: StreamSettings) -> StreamConfig:
    return StreamConfig(
        name=STREAM_NAME,
        subjects=[FLOWS_WILDCARD, EVENTS_WILDCARD],
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=settings.max_age,
        max_bytes=settings.max_bytes,
        duplicate_window=settings.duplicate_window,
        num_replicas=settings.replicas,
    )


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream unless it exists. An existing stream is left as the operator set it,
    except for its replica count when ``config.num_replicas`` is set (not None): one that
    differs is updated (``TransportError`` saying what to do if the server refuses)."""
    name = config.name
    if not name:
        raise ValueError("ensure_stream needs a stream config with a name")
    try:
        info = await _stream_info(js, name)
        if config.num_replicas is not None:
            await _match_replicas(js, info.config, config.num_replicas)
        return
    except nats.js.errors.NotFoundError:
        pass
    except (nats.errors.Error, OSError) as exc:
        raise TransportError(f"cannot read stream {config.name}: {exc!r}; check that JetStream is enabled (nats-server -js)") from exc
    try:
        await js.add_stream(config)
        log.info("created stream %s for %s", config.name, ", ".join(config.subjects or ()))
    except nats.js.errors.BadRequestError as exc:
        if not await _stream_exists(js, name):  # else: created meanwhile by another process
            raise TransportError(f"cannot create stream {config.name}: {exc.description}; "
                                 "check for another stream on the same subjects") from exc
    except (nats.errors.Error, OSError) as exc:
        timed_out = isinstance(exc, nats.errors.TimeoutError)  # while another process created it?
        if await _stream_appears(js, name, within=5.0 if timed_out else 0.0):
            return
        raise TransportError(f"cannot create stream {config.name}: {_reason(exc)}; {_create_hint(config, exc)}") from exc


STREAM_READ_PATIENCE = 15.0  # seconds: a busy 3-node cluster has taken more than 5 to elect


async def _stream_info(js: JetStreamContext, name: str, patience: float | None = None) -> StreamInfo:
    """``js.stream_info(name)``, asked again for up to ``patience`` s (``STREAM_READ_PATIENCE``)
    while JetStream does not answer in time: a cluster that is electing its leaders (at
    start, or after a server died) answers a moment later."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (STREAM_READ_PATIENCE if patience is None else patience)
    while True:
        try:
            return await js.stream_info(name)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            if loop.time() >= deadline:
                raise
            await asyncio.sleep(0.25)


def _reason(exc: BaseException) -> str:
    return getattr(exc, "description", None) or repr(exc)


def _create_hint(config: StreamConfig, exc: BaseException) -> str:
    if isinstance(exc, nats.errors.TimeoutError):
        return "JetStream did not answer in time; check that the servers (a cluster: a majority) run"
    if (config.num_replicas or 1) > 1:
        return f"--stream-replicas {config.num_replicas} needs a JetStream cluster of at least {config.num_replicas} servers"
    return "check JetStream limits and permissions"


async def _match_replicas(js: JetStreamContext, current: StreamConfig, wanted: int) -> None:
    have = current.num_replicas or 1
    if have == wanted:
        return
    try:
        await js.update_stream(replace(current, num_replicas=wanted))
    except (nats.errors.Error, OSError) as exc:
        raise TransportError(f"stream {current.name} has {have} replicas, --stream-replicas asks for {wanted}, "
                             f"and the server refused the change ({_reason(exc)}); pass --stream-replicas {have} "
                             f"or change the stream with `nats stream edit {current.name} --replicas {wanted}`"
                             ) from exc
    log.warning("stream %s: replicas changed from %d to %d", current.name, have, wanted)


async def _stream_appears(js: JetStreamContext, name: str, within: float = 5.0) -> bool:
    """True once the stream exists (another process's create may still be in flight)."""
    deadline = time.monotonic() + within
    while not await _stream_exists(js, name):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.25)
    return True


async def _stream_exists(js: JetStreamContext, name: str) -> bool:
    try:
        await js.stream_info(name)
        return True
    except (nats.errors.Error, OSError):
        return False


# -- the connection -----------------------------------------------------------------


@dataclass(frozen=True)
class NatsOptions:
    """How to reach NATS. Credentials may also be given in the URL (``nats://user:pw@host``)."""

    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    creds_file: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    name: str = "connstats"
    connect_timeout: float = 2.0
    reconnect_time_wait: float = 1.0
    request_timeout: float = 5.0  # JetStream API calls


def _tls_context(options: NatsOptions) -> ssl.SSLContext | None:
    if not (options.tls_ca or options.tls_cert):
        return None
    try:
        context = ssl.create_default_context(cafile=options.tls_ca)
        if options.tls_cert:
            context.load_cert_chain(options.tls_cert, options.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS files: {exc}; check --tls-ca/--tls-cert/--tls-key") from exc
    return context


def _login_refused(exc: BaseException) -> bool:
    """True if the server turned the login down (nats-py's 'Authorization Violation')."""
    return "authorization violation" in str(exc).lower()


def _connect_arguments(options: NatsOptions) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "servers": list(options.servers),
        "name": options.name,
        "connect_timeout": options.connect_timeout,
        "reconnect_time_wait": options.reconnect_time_wait,
        "max_reconnect_attempts": 1,  # the first connect fails fast; see connect()
        "allow_reconnect": True,
    }
    for key in ("user", "password", "token"):
        if getattr(options, key):
            arguments[key] = getattr(options, key)
    if options.creds_file:
        arguments["user_credentials"] = options.creds_file
    context = _tls_context(options)
    if context is not None:
        arguments["tls"] = context
    return arguments


def redacted(servers: tuple[str, ...]) -> str:
    return ", ".join(re.sub(r"//[^@/]*@", "//***@", s) for s in servers)


async def connect(options: NatsOptions, **callbacks: Any) -> Client:
    """Connect once (raise ``TransportError`` if no server answers), then reconnect forever."""

    refused: list[Exception] = []  # the server turned the login down (seen as an error, then a retry)
    given = callbacks.pop("error_cb", None)

    async def on_error(exc: Exception) -> None:
        if _login_refused(exc):
            refused.append(exc)
        if given is not None:
            await given(exc)
        else:
            log.debug("nats: %r", exc)

    arguments = {**_connect_arguments(options), **callbacks, "error_cb": on_error}
    try:
        client = await nats.connect(**arguments)
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        if refused or _login_refused(exc):
            raise TransportError(
                f"NATS at {redacted(options.servers)} refused the connection: authorization violation; "
                "run as root (`connstats up` keeps its credentials in its state directory) or pass "
                "credentials (--nats nats://USER:PASSWORD@HOST:PORT or --nats-creds FILE)") from exc
        raise TransportError(
            f"cannot connect to NATS at {redacted(options.servers)}: {type(exc).__name__}; "
            "check the URL, that nats-server runs, and the credentials"
        ) from exc
    # nats-py would retry the first connect forever with -1, so the limit is lifted only
    # once connected: from here on a lost server is waited for, never given up on.
    client.options["max_reconnect_attempts"] = -1
    return client
