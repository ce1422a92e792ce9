"""Files in the state directory are readable by their owner only (modes checked exactly)."""
from __future__ import annotations

import os
import stat

import pytest

from connstats.probe.contract.errors import ConfigError
from connstats.probe.runtime.private import prepare_state_dir, write_private


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_state_directory_is_created_0700_and_an_open_one_is_closed(tmp_path):
    state = tmp_path / "a" / "state"
    assert prepare_state_dir(state) == state
    assert (mode(state), mode(state / "outbox")) == (0o700, 0o700)
    old = os.umask(0)
    try:
        opened = tmp_path / "opened"
        opened.mkdir(mode=0o777)
        (opened / "outbox").mkdir(mode=0o755)
    finally:
        os.umask(old)
    prepare_state_dir(opened)
    assert (mode(opened), mode(opened / "outbox")) == (0o700, 0o700)


def test_a_state_directory_that_cannot_be_made_is_a_one_line_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError) as failed:
        prepare_state_dir(tmp_path / "file" / "state")
    assert str(failed.value) == (f"cannot create the state directory {tmp_path / 'file' / 'state'} (mode 0700): "
                                 "Not a directory; set CONNSTATS_STATE_DIR to a directory you own")


def test_private_files_are_0600_also_when_they_existed_readable(tmp_path):
    url = tmp_path / "nats.url"
    url.write_text("old\n")
    url.chmod(0o644)
    write_private(url, "nats://127.0.0.1:4222\n")
    assert (mode(url), url.read_text()) == (0o600, "nats://127.0.0.1:4222\n")
    fresh = tmp_path / "nats-credentials.json"
    write_private(fresh, "{}\n")
    assert mode(fresh) == 0o600


def test_the_embedded_server_s_store_and_log_are_closed_even_if_they_were_open(tmp_path):
    from connstats.cli.embedded_nats import EmbeddedNats
    from tests.fixtures.nats import free_port

    (tmp_path / "jetstream").mkdir(mode=0o755)
    (tmp_path / "jetstream").chmod(0o755)
    (tmp_path / "nats-server.log").write_text("an older run\n")
    (tmp_path / "nats-server.log").chmod(0o644)
    server = EmbeddedNats(tmp_path, preferred_port=free_port())
    server.start()
    try:
        assert (mode(tmp_path / "jetstream"), mode(tmp_path / "nats-server.log")) == (0o700, 0o600)
        assert (tmp_path / "nats-server.log").read_text().startswith("an older run\n")
    finally:
        server.stop()
