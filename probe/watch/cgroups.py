"""A process's cgroups -> the container ids it may belong to. Pure: the text of
``/proc/<pid>/cgroup`` in, candidates out, most likely first.

Which runtime an id belongs to is the runtime's to say (the cgroupfs kubepods layout is a
bare 64-hex id for Docker and containerd alike): the first candidate a runtime knows wins.
Layouts (last components of the path; docs/devices.md lists them with what was verified):

    docker, cgroupfs                /docker/<id>
    docker, systemd                 /system.slice/docker-<id>.scope
    containerd CRI, cgroupfs        /kubepods/<qos>/pod<uid>/<id>
    containerd CRI, systemd         /kubepods.slice/.../kubepods-<qos>-pod<uid>.slice/cri-containerd-<id>.scope
    containerd CRI, systemd (old)   /system.slice/containerd.service/kubepods-...-pod<uid>.slice:cri-containerd:<id>
    CRI-O                           .../crio-<id>.scope            (crio-conmon-<id>.scope: not the container)
    ctr run                         /<containerd namespace>/<id>   (any string)
    podman, systemd                 /machine.slice/libpod-<id>.scope[/container]  (libpod-conmon-<id>.scope: no)
    podman, cgroupfs                /libpod_parent/libpod-<id>

On a hybrid host the v2 line can be ``0::/`` while the v1 lines say more: every line is read.
"""
from __future__ import annotations

import re

ID_PREFIXES = ("docker-", "cri-containerd-", "crio-", "libpod-")
NOT_CONTAINERS = ("libpod-conmon-", "crio-conmon-")  # the runtimes' monitors, beside the container
STRUCTURAL = ("container",)  # podman's cgroupns leaf under the container's scope
V1_FIRST = ("memory", "cpu", "name=systemd")  # the v1 hierarchies read first

_POD_UID = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")


def cgroup_paths(text: str) -> list[str]:
    """The distinct paths of ``/proc/<pid>/cgroup``, most telling first: the v2 path unless it is
    ``/``, then the memory, cpu and name=systemd hierarchies, then the other v1 ones."""
    v2: list[str] = []
    first: dict[str, str] = {}
    others: list[str] = []
    for line in text.splitlines():
        number, sep, rest = line.partition(":")
        controllers, sep2, path = rest.partition(":")
        if not (sep and sep2) or path in ("", "/"):
            continue
        if number == "0" and controllers == "":
            v2.append(path)
            continue
        for controller in controllers.split(","):
            if controller in V1_FIRST:
                first.setdefault(controller, path)
        others.append(path)
    ordered = [*v2, *(first[c] for c in V1_FIRST if c in first), *others]
    return list(dict.fromkeys(ordered))


def candidate_ids(text: str) -> list[str]:
    """Container ids ``/proc/<pid>/cgroup`` may name, most likely first: per path, its
    components from the last, each with ``.scope`` and a runtime prefix stripped (after the
    last ``:`` for the old systemd layout); slices, services, ``pod<uid>`` levels and the
    runtimes' monitors are skipped."""
    found: list[str] = []
    for path in cgroup_paths(text):
        for component in reversed(path.strip("/").split("/")):
            candidate = _candidate(component)
            if candidate:
                found.append(candidate)
    return list(dict.fromkeys(found))


def _candidate(component: str) -> str:
    if component.endswith((".slice", ".service")) or component in STRUCTURAL or _POD_UID.fullmatch(component):
        return ""
    name = component.removesuffix(".scope").rsplit(":", 1)[-1]
    if name.startswith(NOT_CONTAINERS):
        return ""
    for prefix in ID_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def pod_uid(text: str) -> str:
    """The pod uid in the cgroup paths (``pod<uid>``, ``_`` for ``-`` under systemd), or ""."""
    for path in cgroup_paths(text):
        found = _POD_UID.search(path)
        if found:
            return found.group(1).replace("_", "-")
    return ""
