"""The probe's only door to containerd: read-only calls on its gRPC socket (grpc.aio).

containerd's socket is root on the node: whoever may call it may create and run anything.
The probe calls only ``List``, ``ListStream``, ``Get`` and ``Subscribe`` (namespaces,
containers, tasks, events); tests/watch/test_containerd_client.py checks that this module
calls no other method of the API. grpc and the generated stubs (containerd_api/) are
imported when a ``ContainerdClient`` is made, i.e. only when a socket is there.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, AsyncIterator

if TYPE_CHECKING:
    from .containerd_api.services.containers.v1.containers_pb2 import Container as ContainerMsg
    from .containerd_api.types.task.task_pb2 import Process

NAMESPACE_HEADER = "containerd-namespace"
ALIVE = (2, 4, 5)  # containerd.v1.types.Status RUNNING, PAUSED, PAUSING: the namespace is held
TIMEOUT = 10.0  # seconds for one unary call
# the events the watcher follows, of every namespace (one stream; filters are ORed)
TOPICS = ("/tasks/start", "/tasks/exit", "/tasks/delete", "/containers/delete")


@dataclass(frozen=True, slots=True)
class Event:
    """One event of interest: its namespace and topic, the container, and for a task event
    its process (``exec_id`` "" or the container's id: the init process) and pid."""

    namespace: str
    topic: str
    container_id: str
    exec_id: str = ""
    pid: int = 0

    @property
    def of_init(self) -> bool:
        return self.exec_id in ("", self.container_id)


class ContainerdClient:
    """One channel to containerd's socket; the calls the watcher needs, each with a timeout."""

    def __init__(self, socket_path: str) -> None:
        import grpc

        api = load_api()
        self._grpc = grpc
        self._channel = grpc.aio.insecure_channel(f"unix://{socket_path}")
        self._namespaces = api.namespace_pb2_grpc.NamespacesStub(self._channel)
        self._containers = api.containers_pb2_grpc.ContainersStub(self._channel)
        self._tasks = api.tasks_pb2_grpc.TasksStub(self._channel)
        self._events = api.events_pb2_grpc.EventsStub(self._channel)
        self._pb: dict[str, Any] = {"namespaces": api.namespace_pb2, "containers": api.containers_pb2,
                                    "tasks": api.tasks_pb2, "events": api.events_pb2}
        self._payloads: dict[str, Any] = {
            "/tasks/start": api.task_pb2.TaskStart, "/tasks/exit": api.task_pb2.TaskExit,
            "/tasks/delete": api.task_pb2.TaskDelete, "/containers/delete": api.container_pb2.ContainerDelete}

    async def close(self) -> None:
        await self._channel.close()

    def subscribe(self) -> Any:
        """The event stream of every namespace, as a call for ``events`` (containerd sends its
        headers with the first event: a wait for the connection would wait for that)."""
        filters = [f'topic=="{topic}"' for topic in TOPICS]
        return self._events.Subscribe(self._pb["events"].SubscribeRequest(filters=filters))

    async def events(self, call: Any) -> AsyncIterator[Event]:
        """The events of ``subscribe``'s call, decoded; others are skipped."""
        async for envelope in call:
            payload = self._payloads.get(envelope.topic)
            if payload is None:
                continue
            body = payload.FromString(envelope.event.value)
            if envelope.topic == "/containers/delete":
                yield Event(envelope.namespace, envelope.topic, body.id)
            else:
                exec_id = "" if envelope.topic == "/tasks/start" else body.id
                yield Event(envelope.namespace, envelope.topic, body.container_id, exec_id, body.pid)

    async def namespaces(self) -> list[str]:
        answer = await self._namespaces.List(self._pb["namespaces"].ListNamespacesRequest(), timeout=TIMEOUT)
        return [namespace.name for namespace in answer.namespaces]

    async def tasks(self, namespace: str) -> list[Process]:
        answer = await self._tasks.List(self._pb["tasks"].ListTasksRequest(), timeout=TIMEOUT,
                                        metadata=_in(namespace))
        return list(answer.tasks)

    async def containers(self, namespace: str) -> AsyncIterator[ContainerMsg]:
        """Every container of ``namespace``, streamed (a node's whole list may pass gRPC's 4 MB)."""
        call = self._containers.ListStream(self._pb["containers"].ListContainersRequest(), timeout=TIMEOUT,
                                           metadata=_in(namespace))
        async for message in call:
            yield message.container

    async def container(self, namespace: str, container_id: str) -> ContainerMsg | None:
        """The container, or None when containerd has no such container (any more)."""
        try:
            answer = await self._containers.Get(self._pb["containers"].GetContainerRequest(id=container_id),
                                                timeout=TIMEOUT, metadata=_in(namespace))
        except self._grpc.aio.AioRpcError as exc:
            if exc.code() == self._grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return answer.container

    async def task(self, namespace: str, container_id: str) -> Process | None:
        """The container's init process, or None when it has no task (any more)."""
        try:
            answer = await self._tasks.Get(self._pb["tasks"].GetRequest(container_id=container_id),
                                           timeout=TIMEOUT, metadata=_in(namespace))
        except self._grpc.aio.AioRpcError as exc:
            if exc.code() == self._grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return answer.process


def load_api() -> SimpleNamespace:
    """The generated modules the client uses, by module name; importing them checks the grpcio
    and protobuf versions they were generated for (an error names the version wanted)."""
    from .containerd_api.events import container_pb2, task_pb2
    from .containerd_api.services.containers.v1 import containers_pb2, containers_pb2_grpc
    from .containerd_api.services.events.v1 import events_pb2, events_pb2_grpc
    from .containerd_api.services.namespaces.v1 import namespace_pb2, namespace_pb2_grpc
    from .containerd_api.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc

    return SimpleNamespace(**{module.__name__.rpartition(".")[2]: module for module in (
        container_pb2, task_pb2, containers_pb2, containers_pb2_grpc, events_pb2, events_pb2_grpc,
        namespace_pb2, namespace_pb2_grpc, tasks_pb2, tasks_pb2_grpc)})


def _in(namespace: str) -> tuple[tuple[str, str], ...]:
    return ((NAMESPACE_HEADER, namespace),)


def annotations_of(container: ContainerMsg) -> dict[str, str]:
    """The OCI spec's annotations (the spec is an ``Any`` holding the spec as JSON); {} if none."""
    try:
        spec = json.loads(container.spec.value or b"{}")
    except ValueError:
        return {}
    found = spec.get("annotations") if isinstance(spec, dict) else None
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def task_id(process: Process) -> str:
    """The container a listed task belongs to: ``Tasks.List`` says it in ``id`` (``container_id`` is "")."""
    return process.id or process.container_id
