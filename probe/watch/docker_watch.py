"""The Docker-API watcher: attach to each container's host-side veths on start, labelled
with its id, name, image and runtime; detach on die/destroy (podman: remove).

One class for every engine that speaks the Docker Engine API: Docker itself
(``runtime="docker"``) and podman's compatible socket (``runtime="podman"``, see
podman_watch.py, which names pods). The event stream (docker-py, blocking) is read in a
thread and handed to the event loop; every (re)connect lists the running containers, so
a missed event heals. What is done with a container's pid (its namespace, veths, attach,
release, containers sharing a namespace) is claims.py's, shared with the containerd
watcher; the ``ContainerIndex`` is the probe's, shared with the link watcher and the other
runtimes' watchers; the probe is seen through ``ProbePort``.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Hashable

from ..contract.record import Runtime
from ..runtime.backoff import Backoff
from ..seams import ProbePort
from .claims import Tracked, VethClaims
from .containers import DEFAULT_DOCKER_SOCKET, Container, ContainerIndex

log = logging.getLogger("connstats.probe.docker")

ENGINE_NAMES = {"docker": "Docker", "podman": "podman"}


@dataclass
class DockerSettings:
    socket_path: str = DEFAULT_DOCKER_SOCKET
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0
    runtime: Runtime = "docker"  # who answers on the socket: on every Container and event

    @property
    def engine(self) -> str:
        return ENGINE_NAMES.get(self.runtime, self.runtime)

    def backoff(self) -> Backoff:
        """Reconnects and attach retries: doubling from ``reconnect_min`` to ``reconnect_max``."""
        return Backoff(first=self.reconnect_min, ceiling=self.reconnect_max)


def container_from_inspect(doc: dict[str, Any], runtime: Runtime = "docker") -> Container:
    """A ``Container`` from the Engine API's ``GET /containers/{id}/json`` answer."""
    return Container(
        id=doc["Id"], name=doc.get("Name", "").lstrip("/"),
        image=(doc.get("Config") or {}).get("Image") or doc.get("Image", ""),
        pid=int((doc.get("State") or {}).get("Pid") or 0), runtime=runtime,
    )


class DockerWatcher:
    """Attaches to each running container's host-side veths, labelled; detaches on die.

    The Engine's event stream is read with docker-py in a thread and handed to the
    loop. Every (re)connect lists running containers first, so a missed event heals;
    a lost connection is retried with backoff and never stops the probe.
    """

    EVENTS = ("start", "die", "destroy", "remove")  # podman says remove where Docker says destroy

    def __init__(self, probe: ProbePort, settings: DockerSettings, index: ContainerIndex | None = None) -> None:
        self.probe = probe
        self.settings = settings
        self._errors = 0
        self._own_index = index is None  # none given: a private one, closed with the watcher
        self._index = index if index is not None else ContainerIndex()
        self.claims = VethClaims(probe, self._index, settings.runtime, settings.backoff(), self._start_again)
        self._client: Any = None
        self._stream: Any = None
        self._queue: asyncio.Queue = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self._closing = threading.Event()
        self.connected = asyncio.Event()

    @property
    def source(self) -> str:
        """What the attach events say attached the device: the runtime."""
        return self.settings.runtime

    @property
    def tracked(self) -> dict[Hashable, Tracked]:
        return self.claims.tracked

    @property
    def errors(self) -> int:
        return self._errors + self.claims.errors

    def _start_again(self, container_id: Hashable) -> None:
        self._queue.put_nowait(("start", container_id))

    async def start(self) -> None:
        engine, path = self.settings.engine, self.settings.socket_path
        if not os.path.exists(path):
            log.info("no %s socket at %s; not watching %s containers", engine, path, engine)
            return
        try:
            import docker  # noqa: F401  docker-py, needed only when there is a socket
        except ImportError:
            log.warning("a %s socket is at %s but the `docker` package is missing; "
                        "containers are not watched (pip install docker)", engine, path)
            return
        loop = asyncio.get_running_loop()
        runtime = self.settings.runtime
        self._tasks = [asyncio.create_task(self._connect_forever(loop), name=f"{runtime}-events"),
                       asyncio.create_task(self._handle_forever(), name=f"{runtime}-handler")]
        log.info("watching %s containers on %s", engine, path)

    async def close(self) -> None:
        self._closing.set()
        self._close_stream()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if self._client is not None:
            self._client.close()
        if self._own_index:
            await self._index.close()

    # -- the stream, in a thread -----------------------------------------------------------

    async def _connect_forever(self, loop: asyncio.AbstractEventLoop) -> None:
        reconnects = self.settings.backoff()
        while not self._closing.is_set():
            try:
                await asyncio.to_thread(self._open_stream)
                running = {doc["Id"] for doc in await asyncio.to_thread(self._running)}
                for container_id in set(self.tracked) - running:  # died while we were away
                    await self._queue.put(("die", container_id))
                for container_id in sorted(running):
                    await self._queue.put(("start", container_id))
                self.connected.set()
                reconnects.reset()
                await asyncio.to_thread(self._pump, loop)
            except Exception as exc:
                if self._closing.is_set():
                    return
                self._errors += 1
                log.warning("%s at %s: %s; retrying in %.1f s", self.settings.engine, self.settings.socket_path,
                            _reason(exc), reconnects.delay(reconnects.failures + 1))
            self.connected.clear()
            self._close_stream()
            await asyncio.sleep(reconnects.next())

    def _open_stream(self) -> None:
        import docker

        if self._client is None:
            self._client = docker.APIClient(base_url=f"unix://{self.settings.socket_path}", timeout=10)
        self._client.ping()
        self._stream = self._client.events(decode=True, filters=self.event_filters())

    def event_filters(self) -> dict[str, Any]:
        """What the engine is asked to send: the container events the watcher acts on."""
        return {"type": "container", "event": list(self.EVENTS)}

    def _running(self) -> list[dict[str, Any]]:
        return self._client.containers(filters={"status": "running"})

    def _pump(self, loop: asyncio.AbstractEventLoop) -> None:
        for event in self._stream:
            if self._closing.is_set():
                return
            action = event.get("Action") or event.get("status")
            if action in self.EVENTS:
                loop.call_soon_threadsafe(self._queue.put_nowait, (action, event["id"]))
        if not self._closing.is_set():
            raise ConnectionError("the event stream ended")

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()
            except Exception:
                pass

    # -- on the loop --------------------------------------------------------------------------

    async def _handle_forever(self) -> None:
        while True:
            action, container_id = await self._queue.get()
            try:
                if action == "start":
                    await self._on_start(container_id)
                else:
                    await self._on_stop(container_id)
            except Exception as exc:
                self._errors += 1
                log.warning("container %s %s: %s", container_id[:12], action, _reason(exc))

    async def _on_start(self, container_id: str) -> None:
        try:
            doc = await asyncio.to_thread(self._client.inspect_container, container_id)
        except Exception as exc:
            log.debug("inspect %s: %r", container_id[:12], exc)
            return  # gone already: its die event follows
        container = container_from_inspect(doc, self.settings.runtime)
        if not (doc.get("State") or {}).get("Running") or container.pid <= 0:
            return
        await self.claims.claim(container_id, await self._naming(container_id, container))

    async def _naming(self, container_id: str, container: Container) -> Container:
        """Who a container's network namespace is named after: the container itself here
        (podman_watch.py names a pod's after the pod)."""
        return container

    async def _on_stop(self, container_id: str) -> None:
        """die (or destroy, remove): detach its veths (their owner stays for the final
        drain) and forget it; veths another container in its namespace still uses stay."""
        await self.claims.release(container_id)


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.errno == errno.ENOENT:
        return "socket is gone"
    return text.splitlines()[0][:200]


def docker_watcher(socket_path: str = DEFAULT_DOCKER_SOCKET, index: ContainerIndex | None = None,
                   **settings: Any):
    """A service factory: ``DaemonSettings(services=[docker_watcher(path)])``; ``index`` is
    the probe's shared ``ContainerIndex``. Does nothing (one log line) when no socket is
    at ``socket_path``.
    """
    def factory(probe: ProbePort) -> DockerWatcher:
        return DockerWatcher(probe, DockerSettings(socket_path, **settings), index)

    return factory
