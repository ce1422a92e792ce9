"""probe/runtime/callers.py on real sockets and real files: the owner of a loopback peer's socket
as the kernel knows it (sock_diag), and the token file shared by the HTTP listeners."""
from __future__ import annotations

import os
import socket
import stat
import subprocess

import pytest

from connstats.probe.contract.errors import ConfigError
from connstats.probe.runtime.callers import TOKEN_FILE, TokenFile, group_id, socket_owner
from tests.fixtures.netns import require_root

HOLD = "import socket, sys, time; c = socket.socket({family}); c.connect(({addr!r}, {port})); sys.stdin.read()"


def accept_from(listener: socket.socket, family: int, addr: str, user: str | None):
    """A connection to ``listener`` from a process run as ``user`` (None: this one, root)."""
    port = listener.getsockname()[1]
    if user is None:
        client = socket.socket(family)
        client.connect((addr, port))
        conn, _ = listener.accept()
        return conn, client, None
    process = subprocess.Popen(["runuser", "-u", user, "--", "/usr/bin/python3", "-c",
                                HOLD.format(family=int(family), addr=addr, port=port)], stdin=subprocess.PIPE)
    listener.settimeout(10)
    conn, _ = listener.accept()
    return conn, None, process


@pytest.mark.parametrize("listen_family, listen_addr, client_family, client_addr", [
    (socket.AF_INET, "127.0.0.1", socket.AF_INET, "127.0.0.1"),
    (socket.AF_INET6, "::1", socket.AF_INET6, "::1"),
    (socket.AF_INET6, "::", socket.AF_INET, "127.0.0.1"),  # dual stack: the peer is ::ffff:127.0.0.1
])
@pytest.mark.parametrize("user, uid", [(None, 0), ("nobody", 65534)])
def test_the_owner_of_a_loopback_peer_is_the_kernels(listen_family, listen_addr, client_family, client_addr,
                                                     user, uid):
    require_root()
    with socket.socket(listen_family) as listener:
        listener.bind((listen_addr, 0))
        listener.listen()
        conn, client, process = accept_from(listener, client_family, client_addr, user)
        try:
            peer, own = conn.getpeername(), conn.getsockname()
            assert socket_owner(peer[:2], own[:2]) == uid
            assert socket_owner((peer[0], peer[1] ^ 1), own[:2]) is None  # no such socket here
        finally:
            conn.close()
            if client is not None:
                client.close()
            if process is not None:
                process.stdin.close()
                process.wait(10)


def test_the_token_file_is_shared_and_private(tmp_path):
    path = tmp_path / TOKEN_FILE
    first = TokenFile(path)
    assert first.current() is None and not first.matches("anything")
    made = first.ensure()
    assert len(made) == 32 and path.read_text() == made + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = TokenFile(path)
    assert second.ensure() == made  # an existing token is kept
    renewed = second.renew()
    assert renewed != made and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.current() == renewed  # the other reader sees the new file
    assert first.matches(renewed) and not first.matches(made) and not first.matches(None)
    assert sorted(os.listdir(tmp_path)) == [TOKEN_FILE]  # no temporary file left


def test_an_unknown_group_is_a_config_error():
    assert group_id("nogroup") == 65534
    with pytest.raises(ConfigError, match=r"^--http-group: no group 'no-such-group-i18' on this host; create it "
                                          r"\(groupadd no-such-group-i18\) or name another$"):
        group_id("no-such-group-i18")
