"""The embedded nats-server's users (cli/nats_auth.py) on a real nats-server, and how every
command finds them: only whoever reads the state directory may log in.
"""
from __future__ import annotations

import json
import stat

import nats
import pytest

from connstats.cli.config import Config
from connstats.cli.embedded_nats import EmbeddedNats
from connstats.cli.nats_auth import CREDENTIALS_FILE, SERVER_CONFIG_FILE, NatsUsers, read_credentials, write_credentials
from connstats.cli.options import NatsFlags
from connstats.probe.contract import (
    NatsOptions,
    StreamSettings,
    connect,
    ensure_stream,
    flow_stream_config,
    flows_subject,
)
from connstats.probe.contract.errors import ConfigError, TransportError
from connstats.sink.consumer import dead_letter_headers
from connstats.sink.deadletters import read_dead_letters, replay
from connstats.sink.jetstream import deadletter_stream_config
from tests.fixtures.nats import free_port
from tests.fixtures.secure_nats import DEPLOY_CONFIG, deployed_permissions, embedded_permissions
from tests.fixtures.wait import until_async


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_embedded_roles_are_the_deployed_roles():
    assert deployed_permissions(DEPLOY_CONFIG.read_text()) == embedded_permissions("PROBE_HOST")


def test_the_permissions_parser_sees_a_changed_subject():
    changed = DEPLOY_CONFIG.read_text().replace('"connstats.v1.deadletter"', '"connstats.v1.>"')
    assert deployed_permissions(changed)["sink.publish"] ^ embedded_permissions("x")["sink.publish"] == {
        "connstats.v1.>", "connstats.v1.deadletter"}


def test_passwords_are_random_and_never_in_repr():
    first, second = NatsUsers.generate("web-1.example"), NatsUsers.generate("web-1.example")
    assert (first.probe.user, first.sink.user, first.admin.user) == ("probe-web-1%2Eexample", "sink", "admin")
    passwords = [u.password for users in (first, second) for u in (users.probe, users.sink, users.admin)]
    assert len(set(passwords)) == 6 and all(len(p) == 32 for p in passwords)
    assert not [p for p in passwords if p in repr(first) + repr(second)]
    with pytest.raises(ConfigError, match="unknown NATS role 'root'"):
        first.role("root")


@pytest.fixture
def embedded(tmp_path):
    """An EmbeddedNats with fresh users, as ``up`` starts it; stopped by pid at teardown."""
    server = EmbeddedNats(tmp_path, preferred_port=free_port(), users=NatsUsers.generate("node-1"))
    server.start()
    yield server
    server.stop()


async def test_the_embedded_server_lets_in_only_its_users(embedded, tmp_path):
    anonymous = NatsOptions(servers=(embedded.url,), connect_timeout=1.0)
    with pytest.raises(TransportError) as refused:
        await connect(anonymous)
    assert str(refused.value) == (f"NATS at {embedded.url} refused the connection: authorization violation; "
                                  "run as root (`connstats up` keeps its credentials in its state directory) "
                                  "or pass credentials (--nats nats://USER:PASSWORD@HOST:PORT or --nats-creds FILE)")
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(embedded.url, allow_reconnect=False, connect_timeout=1.0)
    wrong = embedded.users.login(anonymous, "admin")
    with pytest.raises(TransportError):
        await connect(NatsOptions(servers=wrong.servers, user="admin", password="x" + wrong.password,
                                  connect_timeout=1.0))

    admin = await connect(embedded.users.login(anonymous, "admin"))
    try:
        assert (await admin.jetstream().account_info()).limits is not None
    finally:
        await admin.close()
    # every file the server uses is its owner's only
    assert mode(tmp_path / "jetstream") == 0o700
    assert mode(tmp_path / "nats-server.log") == 0o600
    assert mode(tmp_path / SERVER_CONFIG_FILE) == 0o600
    embedded.stop()
    assert not (tmp_path / SERVER_CONFIG_FILE).exists()  # it holds the passwords


async def test_the_embedded_roles_have_their_permissions(embedded):
    base = NatsOptions(servers=(embedded.url,), connect_timeout=1.0)
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    sink = await connect(embedded.users.login(base, "sink"), error_cb=on_error)
    try:
        await sink.publish(flows_subject("node-1"), b"{}")
        await sink.flush()
        await until_async(lambda: errors, 2.0, "the permissions violation")
        assert errors == [f'nats: permissions violation for publish to "{flows_subject("node-1")}"']
    finally:
        await sink.close()


async def test_the_replay_role_replays_dead_letters_and_the_sink_may_not(embedded):
    """``connstats deadletter replay``'s login: it reads a dead letter, publishes it back to its
    flow subject and deletes it; the sink (which wrote it) may not read it."""
    base = NatsOptions(servers=(embedded.url,), connect_timeout=1.0, request_timeout=1.0)
    sink = await connect(embedded.users.login(base, "sink"))
    try:
        js = sink.jetstream()
        await ensure_stream(js, flow_stream_config(StreamSettings()))
        await ensure_stream(js, deadletter_stream_config(StreamSettings()))
        await js.publish("connstats.v1.deadletter", b"{}", headers=dead_letter_headers(
            "store failed: disk full", "store_failed", flows_subject("node-1"), 5))
        with pytest.raises(TransportError) as refused:
            await read_dead_letters(js)  # it may write dead letters, not read them (nor publish flows)
        assert str(refused.value) == ("cannot read a dead letter: TimeoutError; check the NATS connection and "
                                      "the user's permissions (see docs/nats.md, Dead letters)")
    finally:
        await sink.close()
    replayer = await connect(embedded.users.login(base, "replay"))
    try:
        js = replayer.jetstream()
        done = await replay(js, await read_dead_letters(js, reason="store_failed"))
        assert [(d.seq, d.subject, d.data) for d in done.replayed] == [(1, flows_subject("node-1"), b"{}")]
        assert await read_dead_letters(js) == []
    finally:
        await replayer.close()
    admin = await connect(embedded.users.login(base, "admin"))
    try:
        assert (await admin.jetstream().stream_info("CONNSTATS")).state.messages == 1  # the replay
    finally:
        await admin.close()


def test_credentials_of_an_older_up_have_no_replay_user(tmp_path):
    users = NatsUsers.generate("node-1")
    document = users.to_json()
    del document["replay"]
    older = NatsUsers.from_json(document)
    assert older.role("admin") == users.admin
    with pytest.raises(ConfigError) as missing:
        older.role("replay")
    assert str(missing.value) == ("the running `connstats up` made no NATS user for role 'replay' (it is older); "
                                  "restart it")


# -- how commands find the credentials ------------------------------------------------------------


def config_in(state, **env) -> Config:
    return Config({}, {"CONNSTATS_STATE_DIR": str(state), **env}, None)


def test_every_command_logs_in_with_the_credentials_up_wrote(tmp_path):
    users = NatsUsers.generate("node-1")
    url = "nats://127.0.0.1:4333"
    (tmp_path / "nats.url").write_text(url + "\n")
    write_credentials(tmp_path / CREDENTIALS_FILE, url, users)
    assert mode(tmp_path / CREDENTIALS_FILE) == 0o600
    assert read_credentials(tmp_path / CREDENTIALS_FILE) == (url, users)
    config = config_in(tmp_path)

    cli = NatsFlags().options(config, name="connstats-cli")
    assert (cli.servers, cli.user, cli.password) == ((url,), "admin", users.admin.password)
    probe = NatsFlags().options(config, role="probe")
    assert (probe.user, probe.password) == ("probe-node-1", users.probe.password)
    sink = NatsFlags().options(config, role="sink")
    assert (sink.user, sink.password) == ("sink", users.sink.password)
    replay = NatsFlags().options(config, role="replay")
    assert (replay.user, replay.password) == ("replay", users.replay.password)
    # --nats naming the same server still logs in; another server does not get the password
    assert NatsFlags(url=url).options(config).user == "admin"
    assert NatsFlags(url="nats://10.0.0.5:4222").options(config).user is None
    # credentials of one's own come first: --nats-creds, the environment, user:password@ in the URL
    assert NatsFlags(creds="/etc/connstats/admin.creds").options(config).user is None
    assert config_in(tmp_path, CONNSTATS_NATS_CREDS="/x.creds").nats_options().user is None
    own = NatsFlags(url="nats://ops:secret@127.0.0.1:4333").options(config)
    assert (own.user, own.password, own.servers) == (None, None, ("nats://ops:secret@127.0.0.1:4333",))


def test_no_or_unreadable_credentials_mean_no_login(tmp_path):
    (tmp_path / "nats.url").write_text("nats://127.0.0.1:4333\n")
    assert NatsFlags().options(config_in(tmp_path)).user is None
    (tmp_path / CREDENTIALS_FILE).write_text("{not json")
    with pytest.raises(ConfigError) as broken:
        NatsFlags().options(config_in(tmp_path))
    assert str(broken.value) == (f"{tmp_path / CREDENTIALS_FILE} is not a credentials file written by "
                                 "`connstats up`; remove it and restart `connstats up`")
    (tmp_path / CREDENTIALS_FILE).write_text(json.dumps({"url": "nats://127.0.0.1:4333"}))
    with pytest.raises(ConfigError):
        NatsFlags().options(config_in(tmp_path))
