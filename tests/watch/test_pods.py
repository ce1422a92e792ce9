"""Labels and annotations -> pod, workload, sandbox, the pod's labels (probe/watch/pods.py)."""
import pytest

from connstats.probe.watch.pods import PodMeta, pod_meta, workload_of

POD = {"io.kubernetes.pod.name": "web-7d9f8c6b5-x2x9z", "io.kubernetes.pod.namespace": "shop",
       "io.kubernetes.pod.uid": "8712f785-1a3e-41ec-a00b-e2dcc77431cb"}
SANDBOX = {**POD, "io.cri-containerd.kind": "sandbox", "pod-template-hash": "7d9f8c6b5", "app": "web"}
SANDBOX_ANNOTATIONS = {"io.kubernetes.cri.container-type": "sandbox",
                       "io.kubernetes.cri.sandbox-name": "web-7d9f8c6b5-x2x9z",
                       "io.kubernetes.cri.sandbox-namespace": "shop"}


@pytest.mark.parametrize("labels, annotations, meta", [
    # a pod's sandbox, as kubelet and the CRI label it: the pod's own labels kept
    (SANDBOX, SANDBOX_ANNOTATIONS,
     PodMeta("shop/web-7d9f8c6b5-x2x9z", "web", True, (("app", "web"), ("pod-template-hash", "7d9f8c6b5")))),
    # an app container of the pod: the pod, not the sandbox, no labels (the pod's are the
    # sandbox's: without them the workload is only the name minus one generated suffix)
    ({**POD, "io.cri-containerd.kind": "container", "io.kubernetes.container.name": "nginx"},
     {"io.kubernetes.cri.container-type": "container"},
     PodMeta("shop/web-7d9f8c6b5-x2x9z", "web-7d9f8c6b5", False, ())),
    # the kind from the annotation alone, the pod from the annotations alone
    ({}, SANDBOX_ANNOTATIONS, PodMeta("shop/web-7d9f8c6b5-x2x9z", "web-7d9f8c6b5", True, ())),
    ({}, {"io.kubernetes.cri.container-type": "container"}, PodMeta("", "", False, ())),
    # no kind at all: ctr run, nerdctl: its own namespace, no pod
    ({"nerdctl/name": "db"}, {}, PodMeta("", "", True, ())),
    ({}, {}, PodMeta()),
    # half a pod name is no pod
    ({"io.kubernetes.pod.name": "web-1", "io.cri-containerd.kind": "sandbox"}, {}, PodMeta("", "", True, ())),
])
def test_pod_meta(labels, annotations, meta):
    assert pod_meta(labels, annotations) == meta


@pytest.mark.parametrize("pod_name, labels, workload", [
    ("web-7d9f8c6b5-x2x9z", {"app.kubernetes.io/name": "shop-web", "app": "web"}, "shop-web"),  # the name label wins
    ("web-7d9f8c6b5-x2x9z", {"app": "web"}, "web"),
    ("web-7d9f8c6b5-x2x9z", {"pod-template-hash": "7d9f8c6b5"}, "web"),  # the ReplicaSet suffix, exact
    ("my-api-v2-5c7b9d8f4-abc12", {"pod-template-hash": "5c7b9d8f4"}, "my-api-v2"),  # any 5 chars after the hash
    ("web-7d9f8c6b5-x2x9z", {}, "web-7d9f8c6b5"),  # no hash label: one generated suffix only
    ("fluentd-7xk2p", {}, "fluentd"),  # DaemonSet, Job
    ("db-0", {}, "db-0"),  # StatefulSet: left alone
    ("redis-12", {"pod-template-hash": "zzz"}, "redis-12"),  # the hash is not in the name
    ("web-abcde", {}, "web-abcde"),  # vowels: not a generated suffix
    ("web", {"app.kubernetes.io/name": "", "app": ""}, "web"),  # empty labels do not count
])
def test_workload(pod_name, labels, workload):
    assert workload_of(pod_name, labels) == workload
