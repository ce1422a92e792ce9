"""The users of the embedded nats-server: the roles of deploy/nats-server.conf, fresh passwords.

``connstats up`` (without ``--nats``) makes one user per role, each with a random password,
every time it starts its embedded server:

    probe-<host>   publishes this host's flows and events, answers its control requests
    sink           pulls from the durable consumer, acks, publishes dead letters
    admin          the CLI: control requests, reading streams, watching live flows and alerts
    alert          the alert engine (connstats.sink.alerts): its durable consumer on the
                   flows, the CONNSTATS_ALERTS stream, answering ``connstats alerts``
    replay         ``connstats deadletter replay``: reads dead letters, publishes them back
                   to the flow subjects, deletes them from CONNSTATS_DEADLETTER

The server gets them in ``<state>/nats-embedded.conf``; the CLI finds them in
``<state>/nats-credentials.json`` together with the URL they belong to. Both files are
mode 0600 in a 0700 directory, so only root (the owner) can use the server: other local
users get "Authorization Violation". The permissions below are the ones in
deploy/nats-server.conf (tests/cli/test_nats_auth.py checks that the two agree).
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path

from connstats.probe.contract import ConfigError, NatsOptions, host_token
from connstats.probe.runtime.private import write_private

ROLES = ("probe", "sink", "admin", "alert", "replay")
CREDENTIALS_FILE = "nats-credentials.json"
SERVER_CONFIG_FILE = "nats-embedded.conf"
PASSWORD_BYTES = 24

SINK_PUBLISH = (
    "$JS.API.INFO",
    "$JS.API.STREAM.INFO.CONNSTATS", "$JS.API.STREAM.CREATE.CONNSTATS",
    "$JS.API.STREAM.INFO.CONNSTATS_DEADLETTER", "$JS.API.STREAM.CREATE.CONNSTATS_DEADLETTER",
    "$JS.API.STREAM.MSG.GET.CONNSTATS",
    "$JS.API.CONSUMER.INFO.CONNSTATS.connstats-sink",
    "$JS.API.CONSUMER.CREATE.CONNSTATS.connstats-sink",
    "$JS.API.CONSUMER.CREATE.CONNSTATS.connstats-sink.>",
    "$JS.API.CONSUMER.DURABLE.CREATE.CONNSTATS.connstats-sink",
    "$JS.API.CONSUMER.MSG.NEXT.CONNSTATS.connstats-sink",
    "$JS.ACK.CONNSTATS.connstats-sink.>",
    "connstats.v1.deadletter",
)
SINK_SUBSCRIBE = ("_INBOX.>",)
ADMIN_PUBLISH = (
    "connstats.v1.ctl.*.*",
    "$JS.API.INFO", "$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST", "$JS.API.STREAM.INFO.*",
    "$JS.API.STREAM.MSG.GET.*", "$JS.API.CONSUMER.NAMES.*", "$JS.API.CONSUMER.LIST.*",
    "$JS.API.CONSUMER.INFO.*.*",
)
ADMIN_SUBSCRIBE = ("_INBOX.>", "connstats.v1.flows.>", "connstats.v1.events.>", "connstats.v1.alerts.>",
                   "connstats.v1.policy.>")
ALERT_PUBLISH = (
    "$JS.API.INFO",
    "$JS.API.STREAM.INFO.CONNSTATS_ALERTS", "$JS.API.STREAM.CREATE.CONNSTATS_ALERTS",
    "$JS.API.CONSUMER.INFO.CONNSTATS.connstats-alerts",
    "$JS.API.CONSUMER.CREATE.CONNSTATS.connstats-alerts",
    "$JS.API.CONSUMER.CREATE.CONNSTATS.connstats-alerts.>",
    "$JS.API.CONSUMER.DURABLE.CREATE.CONNSTATS.connstats-alerts",
    "$JS.API.CONSUMER.MSG.NEXT.CONNSTATS.connstats-alerts",
    "$JS.ACK.CONNSTATS.connstats-alerts.>",
    "connstats.v1.alerts.>",
)
ALERT_SUBSCRIBE = ("_INBOX.>", "connstats.v1.ctl._alerts.>")
REPLAY_PUBLISH = (
    "$JS.API.INFO",
    "$JS.API.STREAM.INFO.CONNSTATS_DEADLETTER", "$JS.API.STREAM.MSG.GET.CONNSTATS_DEADLETTER",
    "$JS.API.STREAM.MSG.DELETE.CONNSTATS_DEADLETTER",
    "connstats.v1.flows.*",
)
REPLAY_SUBSCRIBE = ("_INBOX.>",)


def probe_publish(token: str) -> tuple[str, ...]:
    return (f"connstats.v1.flows.{token}", f"connstats.v1.events.{token}", f"connstats.v1.policy.{token}",
            "$JS.API.STREAM.INFO.CONNSTATS", "$JS.API.STREAM.CREATE.CONNSTATS")


def probe_subscribe(token: str) -> tuple[str, ...]:
    return (f"connstats.v1.ctl.{token}.>", "_INBOX.>")


@dataclass(frozen=True)
class RoleUser:
    """One NATS user: its name and password (never in ``repr``)."""

    user: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class NatsUsers:
    """One user per role."""

    probe: RoleUser
    sink: RoleUser
    admin: RoleUser
    alert: RoleUser
    replay: RoleUser | None = None  # None: read from a file written before the role existed

    @classmethod
    def generate(cls, host: str) -> NatsUsers:
        """Fresh random passwords; the probe user is ``probe-<host token>``."""
        def make(name: str) -> RoleUser:
            return RoleUser(name, secrets.token_urlsafe(PASSWORD_BYTES))

        return cls(make(f"probe-{host_token(host)}"), make("sink"), make("admin"), make("alert"), make("replay"))

    def role(self, name: str) -> RoleUser:
        if name not in ROLES:
            raise ConfigError(f"unknown NATS role {name!r}; use one of {', '.join(ROLES)}")
        user = getattr(self, name)
        if user is None:
            raise ConfigError(f"the running `connstats up` made no NATS user for role {name!r} (it is older); "
                              "restart it")
        return user

    def login(self, options: NatsOptions, role: str) -> NatsOptions:
        """``options`` logging in as ``role``'s user, with no other credentials."""
        user = self.role(role)
        return replace(options, user=user.user, password=user.password, token=None, creds_file=None)

    def server_config(self) -> str:
        """The ``authorization`` block of the nats-server config."""
        token = self.probe.user.removeprefix("probe-")
        users = [
            _user_block(self.probe, probe_publish(token), probe_subscribe(token),
                        'allow_responses: { max: 1, expires: "1m" }'),
            _user_block(self.sink, SINK_PUBLISH, SINK_SUBSCRIBE),
            _user_block(self.admin, ADMIN_PUBLISH, ADMIN_SUBSCRIBE),
            _user_block(self.alert, ALERT_PUBLISH, ALERT_SUBSCRIBE, 'allow_responses: { max: 1, expires: "1m" }'),
        ]
        if self.replay is not None:
            users.append(_user_block(self.replay, REPLAY_PUBLISH, REPLAY_SUBSCRIBE))
        return "authorization {\n  users = [\n" + "".join(users) + "  ]\n}\n"

    def to_json(self) -> dict[str, dict[str, str]]:
        return {role: {"user": u.user, "password": u.password}
                for role, u in ((r, getattr(self, r)) for r in ROLES) if u is not None}

    @classmethod
    def from_json(cls, document: dict) -> NatsUsers:
        def user(role: str) -> RoleUser:
            return RoleUser(str(document[role]["user"]), str(document[role]["password"]))

        return cls(user("probe"), user("sink"), user("admin"), user("alert"),
                   replay=user("replay") if "replay" in document else None)


def _quoted(subjects: tuple[str, ...]) -> str:
    return ", ".join(json.dumps(s) for s in subjects)


def _user_block(user: RoleUser, publish: tuple[str, ...], subscribe: tuple[str, ...],
                extra: str = "") -> str:
    return (f"    {{ user: {json.dumps(user.user)}, password: {json.dumps(user.password)}\n"
            f"      permissions: {{\n"
            f"        publish: {{ allow: [{_quoted(publish)}] }}\n"
            f"        subscribe: {{ allow: [{_quoted(subscribe)}] }}\n"
            + (f"        {extra}\n" if extra else "")
            + "      }\n    }\n")


# -- the credentials file -------------------------------------------------------------------


def write_credentials(path: Path, url: str, users: NatsUsers) -> None:
    """``{"url": URL, "users": {role: {"user", "password"}}}``, mode 0600."""
    write_private(path, json.dumps({"url": url, "users": users.to_json()}, indent=2) + "\n")


def read_credentials(path: Path) -> tuple[str, NatsUsers] | None:
    """The URL and users ``up`` wrote; None when the file is missing or not readable to us."""
    try:
        document = json.loads(path.read_text())
        return str(document["url"]), NatsUsers.from_json(document["users"])
    except OSError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not a credentials file written by `connstats up`; "
                          "remove it and restart `connstats up`") from exc
