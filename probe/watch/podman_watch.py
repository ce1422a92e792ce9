"""The podman watcher: the Docker-API watcher on podman's compatible socket, with
``runtime="podman"`` on every container and event, and pods named after the pod.

    podman "start" ─ compat inspect ─> Container(id, name, image, pid, runtime="podman")
                   ─ libpod containers/json?filters={"id":[id]} ─> Pod, PodName
                   ─ a pod with an infra container: libpod pods/{pod}/json ─> InfraContainerID
                     ─> Container(infra id, pod name, "", pid, "podman")
    podman "die"/"remove" ─────────────────────────────────> detach, forget

Every container of a pod shares the infra container's network namespace, so the pod,
not one of its containers, names the veths; the first of them to start attaches them,
the last to go detaches them (docker_watch.py). Rootful podman only: a rootless
podman's containers have no veth in the host's namespace.
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from ..seams import ProbePort
from .containers import DEFAULT_PODMAN_SOCKET, Container, ContainerIndex
from .docker_watch import DockerSettings, DockerWatcher

log = logging.getLogger("connstats.probe.podman")

LIBPOD = "/v4.0.0/libpod"  # podman 4 and 5 answer it; 3 would need /v3.0.0


def pod_container(container: Container, listed: dict[str, Any], pod: dict[str, Any] | None) -> Container:
    """Who ``container``'s namespace is named after: its pod (the infra container's id,
    the pod's name) when it is in a pod with an infra container, else itself.
    ``listed`` is its entry of libpod's ``containers/json``, ``pod`` libpod's pod inspect."""
    infra = (pod or {}).get("InfraContainerID") or ""
    if not listed.get("Pod") or not infra:
        return container  # no pod, or a pod without infra: each container has its own namespace
    return Container(id=infra, name=listed.get("PodName") or (pod or {}).get("Name", ""), image="",
                     pid=container.pid, runtime="podman")


class PodmanWatcher(DockerWatcher):
    """``DockerWatcher`` on podman's socket; a pod's containers are named after the pod."""

    def event_filters(self) -> dict[str, Any]:
        """Every container event: podman 4.3 matches an ``event`` filter against its own
        names ("died"), while the compatible stream says "die" (seen: with the filter of
        Docker, no die ever came). The watcher drops what it does not act on."""
        return {"type": "container"}

    async def _naming(self, container_id: str, container: Container) -> Container:
        try:
            return await asyncio.to_thread(self._pod_container, container_id, container)
        except Exception as exc:  # an older podman without the libpod API: the container's own name
            log.debug("libpod lookup of %s: %r", container_id[:12], exc)
            return container

    def _pod_container(self, container_id: str, container: Container) -> Container:
        [listed] = self._libpod("containers/json", all="true", filters=json.dumps({"id": [container_id]}))
        pod = self._libpod(f"pods/{listed['Pod']}/json") if listed.get("Pod") else None
        return pod_container(container, listed, pod)

    def _libpod(self, path: str, **params: str) -> Any:
        client = self._client
        answer = client.get(f"{client.base_url}{LIBPOD}/{path}", params=params, timeout=10)
        answer.raise_for_status()
        return answer.json()


def podman_watcher(socket_path: str = DEFAULT_PODMAN_SOCKET, index: ContainerIndex | None = None,
                   **settings: Any):
    """A service factory like ``docker_watcher``, for podman's socket; ``index`` is the
    probe's shared ``ContainerIndex``. Does nothing (one log line) when no socket is at
    ``socket_path`` (on systemd hosts ``podman.socket`` makes it; nothing else does).
    """
    def factory(probe: ProbePort) -> PodmanWatcher:
        return PodmanWatcher(probe, DockerSettings(socket_path, runtime="podman", **settings), index)

    return factory
