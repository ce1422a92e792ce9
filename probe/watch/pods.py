"""What a container's labels and annotations say about its Kubernetes pod: the pod
("<namespace>/<name>"), its workload, whether it is the sandbox that holds the pod's network
namespace, and the pod's own labels. Pure: no I/O.

Kubelet gives a pod's sandbox the pod's labels plus ``io.kubernetes.pod.{name,namespace,uid}``;
containerd's CRI adds ``io.cri-containerd.kind`` (``sandbox`` or ``container``) and the OCI
annotations ``io.kubernetes.cri.{container-type,sandbox-name,sandbox-namespace}``. A container
with no kind at all (``ctr run``, nerdctl) is not part of a pod and holds its own namespace.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

POD_NAME = "io.kubernetes.pod.name"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
CRI_KIND = "io.cri-containerd.kind"  # label: sandbox | container
CONTAINER_TYPE = "io.kubernetes.cri.container-type"  # annotation: sandbox | container
SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
TEMPLATE_HASH = "pod-template-hash"
WORKLOAD_LABELS = ("app.kubernetes.io/name", "app")
RUNTIME_PREFIXES = ("io.kubernetes.", "io.cri-containerd.")  # not the pod's own labels

# the suffix Kubernetes appends to generated names: 5 of these (no vowels, no 0, 1, 3)
_NAME_SUFFIX = re.compile(r"^(.+)-[bcdfghjklmnpqrstvwxz2456789]{5}$")


@dataclass(frozen=True, slots=True)
class PodMeta:
    """One container as its pod sees it; ``pod`` is "" when it belongs to none."""

    pod: str = ""  # "<k8s namespace>/<pod name>"
    workload: str = ""
    sandbox: bool = True  # holds the network namespace (a pod's sandbox, or a container of no pod)
    labels: tuple[tuple[str, str], ...] = ()  # the pod's labels, sorted (a sandbox's only)


def pod_meta(labels: Mapping[str, str], annotations: Mapping[str, str]) -> PodMeta:
    """What ``labels`` and ``annotations`` (a container's, in containerd) say about its pod."""
    kind = labels.get(CRI_KIND) or annotations.get(CONTAINER_TYPE) or ""
    sandbox = kind in ("", "sandbox")
    namespace = labels.get(POD_NAMESPACE) or annotations.get(SANDBOX_NAMESPACE) or ""
    name = labels.get(POD_NAME) or annotations.get(SANDBOX_NAME) or ""
    if not (namespace and name):
        return PodMeta(sandbox=sandbox)
    own = tuple(sorted((k, v) for k, v in labels.items() if not k.startswith(RUNTIME_PREFIXES)))
    return PodMeta(f"{namespace}/{name}", workload_of(name, labels), sandbox, own if sandbox else ())


def workload_of(pod_name: str, labels: Mapping[str, str]) -> str:
    """``app.kubernetes.io/name``, else ``app``, else the pod's name without the suffix its
    controller gave it: a ReplicaSet's ``-<pod-template-hash>-xxxxx`` (exact, with the hash
    label), else one generated ``-xxxxx`` (DaemonSet, Job); a StatefulSet's ``-N`` stays."""
    for key in WORKLOAD_LABELS:
        if labels.get(key):
            return labels[key]
    template_hash = labels.get(TEMPLATE_HASH)
    if template_hash:
        replica = re.match(rf"^(.+)-{re.escape(template_hash)}-[a-z0-9]{{5}}$", pod_name)
        if replica:
            return replica.group(1)
    generated = _NAME_SUFFIX.match(pod_name)
    return generated.group(1) if generated else pod_name
