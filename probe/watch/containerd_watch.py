"""The containerd watcher: Kubernetes pods (namespace ``k8s.io``) and plain containerd
containers (ctr, nerdctl), in every containerd namespace; attach to the host-side veths of
each network namespace a sandbox holds, labelled with its pod; detach when its task ends.

    connect (backoff)  Subscribe (/tasks/start, /tasks/exit, /tasks/delete, /containers/delete)
                       first, then per namespace Tasks.List + Containers.ListStream:
                       "start" for each running task, "stop" for claimed ones that are gone
    /tasks/start       Containers.Get -> labels, OCI annotations (pods.py) -> a sandbox, or a
                       container of no pod, claims its namespace's veths (claims.py) as
                       Container(id, pod name, "", pid, "containerd", pod, workload, pod labels);
                       an app container of a pod shares its sandbox's namespace: nothing to do
    /tasks/exit (init), /tasks/delete (init), /containers/delete   release

grpc is imported only when a socket is there (containerd_client.py, read-only calls only).
The namespace ``moby`` (Docker's own containers, when Docker runs on containerd) is skipped
while the Docker watcher runs. Mirrors ``DockerWatcher`` (docker_watch.py): the same claims,
the same shared ``ContainerIndex``, the probe seen through ``ProbePort``.
"""
from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Hashable

from ..runtime.backoff import Backoff
from ..seams import ProbePort
from .claims import Tracked, VethClaims
from .containers import Container, ContainerIndex
from .pods import PodMeta, pod_meta

if TYPE_CHECKING:
    from .containerd_api.services.containers.v1.containers_pb2 import Container as ContainerMsg
    from .containerd_client import ContainerdClient, Event

log = logging.getLogger("connstats.probe.containerd")

DEFAULT_CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
DOCKER_NAMESPACE = "moby"
NERDCTL_NAME = "nerdctl/name"

Key = tuple[str, str]  # (containerd namespace, container id)


@dataclass
class ContainerdSettings:
    socket_path: str = DEFAULT_CONTAINERD_SOCKET
    skip_namespaces: tuple[str, ...] = ()  # (DOCKER_NAMESPACE,) while the Docker watcher runs
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0

    def backoff(self) -> Backoff:
        """Reconnects and attach retries: doubling from ``reconnect_min`` to ``reconnect_max``."""
        return Backoff(first=self.reconnect_min, ceiling=self.reconnect_max)


def container_of(message: ContainerMsg, pid: int) -> tuple[PodMeta, Container]:
    """What containerd's container record says: its pod, and the ``Container`` that names
    the namespace (a pod's sandbox: the pod's name; else the nerdctl name or the id)."""
    from .containerd_client import annotations_of

    labels = dict(message.labels)
    meta = pod_meta(labels, annotations_of(message))
    name = meta.pod.partition("/")[2] if meta.pod else labels.get(NERDCTL_NAME) or message.id
    return meta, Container(message.id, name, "", pid, runtime="containerd", pod=meta.pod,
                           workload=meta.workload, pod_labels=meta.labels)


class ContainerdWatcher:
    """Attaches to the veths of every sandbox's namespace, labelled with its pod; detaches
    when its task ends. Every (re)connect lists the tasks first, so a missed event heals; a
    lost connection is retried with backoff and never stops the probe."""

    def __init__(self, probe: ProbePort, settings: ContainerdSettings, index: ContainerIndex | None = None) -> None:
        self.probe = probe
        self.settings = settings
        self._errors = 0
        self._own_index = index is None  # none given: a private one, closed with the watcher
        self._index = index if index is not None else ContainerIndex()
        self.claims = VethClaims(probe, self._index, "containerd", settings.backoff(), self._start_again)
        self._client: ContainerdClient | None = None
        self._queue: asyncio.Queue[tuple[str, Any, int, Any]] = asyncio.Queue()  # action, Key, pid, record
        self._tasks: list[asyncio.Task[None]] = []
        self.connected = asyncio.Event()

    @property
    def tracked(self) -> dict[Hashable, Tracked]:
        return self.claims.tracked

    @property
    def errors(self) -> int:
        return self._errors + self.claims.errors

    async def start(self) -> None:
        path = self.settings.socket_path
        if not os.path.exists(path):
            log.info("no containerd socket at %s; not watching containerd containers", path)
            return
        try:
            import grpc  # noqa: F401  grpcio, needed only when there is a socket
        except ImportError:
            log.warning("a containerd socket is at %s but the `grpcio` package is missing; "
                        "pods are not watched (pip install grpcio protobuf)", path)
            return
        try:  # the stubs check the grpcio and protobuf they were generated for
            from .containerd_client import load_api

            load_api()
        except Exception as exc:
            log.warning("a containerd socket is at %s but containerd's API does not load (%s); pods are "
                        "not watched (pip install 'grpcio>=1.85.4' 'protobuf>=7.35.1,<8')", path, _reason(exc))
            return
        self._tasks = [asyncio.create_task(self._connect_forever(), name="containerd-events"),
                       asyncio.create_task(self._handle_forever(), name="containerd-handler")]
        log.info("watching containerd containers on %s%s", path,
                 f" (not namespace {', '.join(self.settings.skip_namespaces)})" if self.settings.skip_namespaces else "")

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self._close_client()
        if self._own_index:
            await self._index.close()

    # -- the connection ---------------------------------------------------------------------

    async def _connect_forever(self) -> None:
        from .containerd_client import ContainerdClient

        reconnects = self.settings.backoff()
        while True:
            reader: asyncio.Task[None] | None = None
            try:
                self._client = client = ContainerdClient(self.settings.socket_path)
                # Subscribe first, so that nothing happening while we list is lost; what comes
                # meanwhile waits in ``events`` until the list is queued (containerd sends a
                # stream's headers with its first event: nothing to wait for before listing)
                events: asyncio.Queue[Event | BaseException] = asyncio.Queue()
                reader = asyncio.create_task(_read(client, events), name="containerd-stream")
                running = await self._running(client)
                for key in set(self.tracked) - set(running):  # gone while we were away
                    self._queue.put_nowait(("stop", key, 0, None))
                for key, (pid, message) in sorted(running.items()):
                    self._queue.put_nowait(("start", key, pid, message))
                self.connected.set()
                reconnects.reset()
                while not isinstance(event := await events.get(), BaseException):
                    self._on_event(event)
                raise event
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._errors += 1
                log.warning("containerd at %s: %s; retrying in %.1f s", self.settings.socket_path,
                            _reason(exc), reconnects.delay(reconnects.failures + 1))
            finally:
                if reader is not None:
                    reader.cancel()
                    await asyncio.gather(reader, return_exceptions=True)
            self.connected.clear()
            await self._close_client()
            await asyncio.sleep(reconnects.next())

    async def _running(self, client: ContainerdClient) -> dict[Key, tuple[int, ContainerMsg]]:
        """Every live task (running or paused) of every namespace watched, with its container's record."""
        from .containerd_client import ALIVE, task_id

        found: dict[Key, tuple[int, ContainerMsg]] = {}
        for namespace in await client.namespaces():
            if namespace in self.settings.skip_namespaces:
                continue
            pids = {task_id(t): t.pid for t in await client.tasks(namespace) if t.status in ALIVE and t.pid > 0}
            async for message in client.containers(namespace):
                if message.id in pids:
                    found[(namespace, message.id)] = (pids[message.id], message)
        return found

    def _on_event(self, event: Event) -> None:
        if event.namespace in self.settings.skip_namespaces or not event.of_init:
            return  # Docker's own, or an exec'd process of a container
        key = (event.namespace, event.container_id)  # queued in order: a stop after its start (a no-op if unclaimed)
        self._queue.put_nowait(("start" if event.topic == "/tasks/start" else "stop", key, event.pid, None))

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except Exception as exc:
                log.debug("closing the containerd channel: %r", exc)

    # -- on the loop ------------------------------------------------------------------------

    def _start_again(self, key: Hashable) -> None:
        self._queue.put_nowait(("start", key, 0, None))

    async def _handle_forever(self) -> None:
        while True:
            action, key, pid, message = await self._queue.get()
            try:
                if action == "start":
                    await self._on_start(key, pid, message)
                else:
                    await self.claims.release(key)
            except Exception as exc:
                self._errors += 1
                log.warning("containerd container %s/%s %s: %s", key[0], key[1][:12], action, _reason(exc))

    async def _on_start(self, key: Key, pid: int, message: ContainerMsg | None) -> None:
        """A running task: its sandbox (or a container of no pod) claims its namespace."""
        client = self._client
        if client is None:
            return  # disconnected: the next connect lists it
        namespace, container_id = key
        if message is None:
            message = await client.container(namespace, container_id)
        if pid <= 0:
            task = await client.task(namespace, container_id)
            pid = task.pid if task is not None else 0
        if message is None or pid <= 0:
            return  # gone already: its exit event follows
        meta, container = container_of(message, pid)
        if not meta.sandbox:
            log.debug("container %s of pod %s shares its sandbox's namespace", container_id[:12], meta.pod)
            return
        await self.claims.claim(key, container)


async def _read(client: ContainerdClient, into: asyncio.Queue[Event | BaseException]) -> None:
    """The event stream into ``into``, ended by the error that ended it."""
    try:
        async for event in client.events(client.subscribe()):
            into.put_nowait(event)
        into.put_nowait(ConnectionError("the event stream ended"))
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        into.put_nowait(exc)


def _reason(exc: BaseException) -> str:
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if callable(code) and callable(details):  # grpc.aio.AioRpcError: its status and what it says
        text = f"{code().name} {details() or ''}"
    else:
        text = str(exc) or type(exc).__name__
    return text.strip().splitlines()[0][:200]


def containerd_watcher(socket_path: str = DEFAULT_CONTAINERD_SOCKET, index: ContainerIndex | None = None,
                       **settings: Any):
    """A service factory: ``DaemonSettings(services=[containerd_watcher(path)])``; ``index`` is
    the probe's shared ``ContainerIndex``. Does nothing (one log line) when no socket is at
    ``socket_path``."""
    def factory(probe: ProbePort) -> ContainerdWatcher:
        return ContainerdWatcher(probe, ContainerdSettings(socket_path, **settings), index)

    return factory
