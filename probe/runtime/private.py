"""Files and directories readable by their owner only: the state directory and its secrets.

``connstats up`` keeps the NATS URL, the embedded server's users and passwords, its config
and its JetStream store in the state directory; none of it is for other local users.
"""
from __future__ import annotations

import os
from io import BufferedWriter
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create ``path`` (and its parents) if needed and make it 0700; return it."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, PRIVATE_DIR_MODE)
    return path


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner only (also when it existed before)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), PRIVATE_FILE_MODE)
        out.write(text)


def open_private_log(path: Path) -> BufferedWriter:
    """``path`` opened for appending (binary), mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE_MODE)
    os.fchmod(fd, PRIVATE_FILE_MODE)
    return os.fdopen(fd, "ab")


def prepare_state_dir(state_dir: Path) -> Path:
    """The state directory (and its outbox), created if needed, mode 0700: it holds the
    NATS URL and credentials, readable by their owner only."""
    from ..contract.errors import ConfigError

    try:
        private_dir(state_dir)
        private_dir(state_dir / "outbox")
    except OSError as exc:
        raise ConfigError(f"cannot create the state directory {state_dir} (mode 0700): {exc.strerror}; "
                          "set CONNSTATS_STATE_DIR to a directory you own") from exc
    return state_dir
