"""An embedded nats-server for ``connstats up`` when no ``--nats`` is given.

Loopback only, JetStream on, its store under ``<state>/jetstream`` (0700), port 4222 if
free and a free port otherwise (also when another process takes the port between the look
and the server's bind: the server is known by a name of its own, never mistaken for
another on that port); its log goes to ``<state>/nats-server.log`` (0600). Given
``users`` (``nats_auth.NatsUsers``), it requires them: their ``authorization`` block goes
into ``<state>/nats-embedded.conf`` (0600, removed by ``stop()``) and every client must log in. The server runs in
its own session (a Ctrl-C on the terminal reaches only ``up``, which drains first and
then stops it) and gets SIGKILL from the kernel if ``up`` dies without stopping it.
"""
from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from connstats.probe.contract import ConfigError, TransportError
from connstats.probe.runtime.private import open_private_log, private_dir, write_private

from .nats_auth import SERVER_CONFIG_FILE, NatsUsers

DEFAULT_PORT = 4222
START_TRIES = 3
_PR_SET_PDEATHSIG = 1


def find_nats_server() -> str:
    path = shutil.which("nats-server") or ("/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None)
    if path is None:
        raise ConfigError("nats-server is not installed; `apt-get install nats-server` (make install does), "
                          "or pass --nats URL of a running server")
    return path


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_port(preferred: int = DEFAULT_PORT) -> int:
    """``preferred`` if it is free now, otherwise a free port the kernel chose (0: always that)."""
    if preferred and port_is_free(preferred):
        return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class EmbeddedNats:
    """``start()`` returns once the server answers; ``stop()`` ends it (SIGTERM, then SIGKILL)."""

    def __init__(self, state_dir: Path, preferred_port: int = DEFAULT_PORT,
                 config: Path | None = None, users: NatsUsers | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.preferred_port = preferred_port
        self.config = config  # an optional nats-server config file (-c)
        self.users = users  # None: no authentication (tests only; `up` always passes users)
        self.port = 0
        self._name = "connstats-embedded"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, timeout: float = 10.0) -> str:
        """Start the server and return its URL once it answers; on a port that another
        process took in the meantime, start again on a free one (up to ``START_TRIES``)."""
        binary = find_nats_server()
        config = self._write_config()
        preferred = self.preferred_port
        for _ in range(START_TRIES):
            self.port = pick_port(preferred)
            self._name = f"connstats-embedded-{secrets.token_hex(4)}"
            process = self._spawn(binary, config)
            if self._wait_ready(process, timeout):
                return self.url
            preferred = 0  # the port was taken: let the kernel choose the next
        raise TransportError(f"the embedded nats-server found no free port in {START_TRIES} tries; "
                             f"see {self.state_dir / 'nats-server.log'}")

    def _spawn(self, binary: str, config: Path | None) -> subprocess.Popen[bytes]:
        store = private_dir(self.state_dir / "jetstream")
        command = [binary, "-js", "-sd", str(store), "-a", "127.0.0.1", "-p", str(self.port),
                   "-n", self._name]
        if config is not None:
            command += ["-c", str(config)]
        with open_private_log(self.state_dir / "nats-server.log") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True,
                                             preexec_fn=_die_with_parent)
        return self._process

    def _write_config(self) -> Path | None:
        """The config file to pass with -c: ``config``, plus the users' block if any."""
        if self.users is None:
            return self.config
        text = self.config.read_text() + "\n" if self.config is not None else ""
        path = self.state_dir / SERVER_CONFIG_FILE
        write_private(path, text + self.users.server_config())
        return path

    def stop(self, timeout: float = 5.0) -> None:
        if self.users is not None:
            (self.state_dir / SERVER_CONFIG_FILE).unlink(missing_ok=True)
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def _wait_ready(self, process: subprocess.Popen[bytes], timeout: float) -> bool:
        """True once our server (``process``) answers; False if it exited because its port was taken."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = process.poll()
            if code is not None:
                self._process = None
                if self._port_was_taken():
                    return False
                raise TransportError(f"the embedded nats-server exited with {code}; "
                                     f"see {self.state_dir / 'nats-server.log'}")
            if self._answers():
                return True
            time.sleep(0.02)
        self.stop()
        raise TransportError(f"the embedded nats-server did not answer on port {self.port} within "
                             f"{timeout:g} s; see {self.state_dir / 'nats-server.log'}")

    def _answers(self) -> bool:
        """Whether our server (by its name, not another one on the port) says INFO."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.settimeout(0.5)
                info = s.recv(4096)
        except OSError:
            return False
        return info.startswith(b"INFO") and f'"server_name":"{self._name}"'.encode() in info

    def _port_was_taken(self) -> bool:
        log = self.state_dir / "nats-server.log"
        try:
            tail = log.read_bytes()[-2048:]
        except OSError:
            return False
        return b"address already in use" in tail and f":{self.port}".encode() in tail
