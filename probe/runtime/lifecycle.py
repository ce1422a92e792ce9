"""How a long-running connstats process stops: SIGINT and SIGTERM set one ``stop`` event,
and whoever runs the process (``connstats up``, ``probe``, ``sink``) waits on it."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Iterator

log = logging.getLogger("connstats")


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM set ``stop`` (a second one only warns)."""
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            log.warning("already stopping; waiting for the last interval to be stored")
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    try:
        yield
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
