"""The Docker-API watcher: attach to each container's host-side veths on start, labelled
with its id, name, image and runtime; detach on die/destroy (podman: remove).

One class for every engine that speaks the Docker Engine API: Docker itself
(``runtime="docker"``) and podman's compatible socket (``runtime="podman"``, see
podman_watch.py, which names pods). The event stream (docker-py, blocking) is read in a
thread and handed to the event loop; every (re)connect lists the running containers, so
a missed event heals. Containers sharing one network namespace (``--network
container:X``, a podman pod) share its veths: the first one names them, the last one to
go detaches them. Namespaces and the shared attach helpers come from ``containers.py``;
the ``ContainerIndex`` is the probe's, shared with the link watcher and the other
runtimes' watchers; the probe is seen through ``ProbePort``.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPRoute

from ..contract.errors import ConnstatsError
from ..contract.record import Runtime
from ..runtime.backoff import Backoff
from ..seams import ProbePort
from .containers import (
    DEFAULT_DOCKER_SOCKET,
    Container,
    ContainerIndex,
    Netns,
    attach_owned,
    detach_quietly,
    owner_fields,
    peer_veths,
    report_failed,
)

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


@dataclass
class _Tracked:
    container: Container
    netns: Netns | None
    ifindexes: list[int] = field(default_factory=list)
    failures: int = 0


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
        self.tracked: dict[str, _Tracked] = {}
        self.errors = 0
        self._own_index = index is None  # none given: a private one, closed with the watcher
        self._index = index if index is not None else ContainerIndex()
        self._retry = settings.backoff()
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
                self.errors += 1
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
                self.errors += 1
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
        container = await self._naming(container_id, container)
        index = self._index
        netns = await asyncio.to_thread(index.resolver.netns_of_pid, container.pid)
        tracked = self.tracked.get(container_id)
        if tracked is not None and tracked.container.pid == container.pid:
            wanted = set(tracked.ifindexes)
            tracked.netns = tracked.netns or netns  # it had no veth at its start; now it has
        else:
            tracked = self.tracked[container_id] = _Tracked(container, netns)
            wanted = set()
        if netns is None:
            log.info("container %s (%s) has no veth into this namespace", container.name, container_id[:12])
            return
        if self._sharer(container_id, netns) is not None:
            log.debug("container %s shares its network namespace; its first container names it", container_id[:12])
            return
        index.by_netns[netns.inode] = container
        veths = await asyncio.to_thread(self._veths, netns.nsid)
        for ifindex, ifname in veths:
            if ifindex in wanted and any(d.ifindex == ifindex for d in self.probe.devices()):
                continue
            await self._attach(tracked, ifindex, ifname, container_id)

    async def _naming(self, container_id: str, container: Container) -> Container:
        """Who a container's network namespace is named after: the container itself here
        (podman_watch.py names a pod's after the pod)."""
        return container

    def _neighbours(self, container_id: str, netns: Netns | None) -> list[str]:
        """The other tracked containers in ``netns``, those holding its veths first."""
        if netns is None:
            return []
        others = [(not (t.ifindexes or t.failures), other_id) for other_id, t in self.tracked.items()
                  if other_id != container_id and t.netns is not None and t.netns.inode == netns.inode]
        return [other_id for _, other_id in sorted(others)]

    def _sharer(self, container_id: str, netns: Netns) -> str | None:
        """Another tracked container in ``netns`` that holds (or is attaching) its veths."""
        holders = [i for i in self._neighbours(container_id, netns) if self.tracked[i].ifindexes or self.tracked[i].failures]
        return holders[0] if holders else None

    def _veths(self, nsid: int) -> list[tuple[int, str]]:
        with IPRoute() as ipr:
            return peer_veths(ipr, nsid)

    async def _attach(self, tracked: _Tracked, ifindex: int, ifname: str, container_id: str) -> None:
        container, netns = tracked.container, tracked.netns
        try:
            await attach_owned(self.probe, ifindex, container.owner, self.source,
                               **owner_fields(netns, container))
        except ConnstatsError as exc:
            self.errors += 1
            tracked.failures += 1
            delay = self._retry.delay(tracked.failures)
            log.warning("container %s: attach to %s failed: %s; retry in %.1f s",
                        container.name, ifname, exc, delay)
            await report_failed(self.probe, ifindex, ifname, exc, tracked.failures, delay, self.source,
                                **owner_fields(netns, container))
            asyncio.get_running_loop().call_later(delay, self._queue.put_nowait, ("start", container_id))
            return
        tracked.failures = 0
        if ifindex not in tracked.ifindexes:
            tracked.ifindexes.append(ifindex)

    async def _on_stop(self, container_id: str) -> None:
        """die (or destroy, remove): detach its veths (their labels stay for the final
        drain), forget it; veths that another container in its namespace still uses are
        handed to that one instead."""
        tracked = self.tracked.pop(container_id, None)
        if tracked is None:
            return
        heirs = self._neighbours(container_id, tracked.netns)
        if heirs and tracked.netns is not None:  # the namespace lives on: its veths stay
            heir = self.tracked[heirs[0]]
            heir.ifindexes.extend(i for i in tracked.ifindexes if i not in heir.ifindexes)
            if tracked.ifindexes:
                self._index.by_netns[tracked.netns.inode] = heir.container
            return
        fields = owner_fields(tracked.netns, tracked.container)
        for ifindex in tracked.ifindexes:
            await detach_quietly(self.probe, ifindex, "detached", source=self.source, **fields)
        if tracked.netns is not None:
            self._index.by_netns.pop(tracked.netns.inode, None)


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
