"""containerd's socket is root on the node: the probe reads through it and never writes.
Also what one container record of containerd's says (no containerd needed)."""
import ast
import json
from pathlib import Path

import pytest
from google.protobuf.any_pb2 import Any

from connstats.probe.watch import containerd_client
from connstats.probe.watch.containerd_api.services.containers.v1 import containers_pb2
from connstats.probe.watch.containerd_api.services.events.v1 import events_pb2
from connstats.probe.watch.containerd_api.services.namespaces.v1 import namespace_pb2
from connstats.probe.watch.containerd_api.services.tasks.v1 import tasks_pb2
from connstats.probe.watch.containerd_client import Event, annotations_of
from connstats.probe.watch.containerd_watch import container_of
from connstats.probe.watch.containers import Container
from connstats.probe.watch.pods import PodMeta

READ_ONLY = {"List", "ListStream", "Get", "Subscribe"}
PROBE = Path(containerd_client.__file__).resolve().parent.parent


def rpc_methods() -> set[str]:
    """Every method of the four services the stubs hold."""
    found = set()
    for module in (containers_pb2, tasks_pb2, events_pb2, namespace_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            found.update(method.name for method in service.methods)
    return found


def test_the_client_calls_only_read_methods():
    assert {"Create", "Update", "Delete", "Kill", "Exec", "Publish", "Forward"} <= rpc_methods()  # it sees writes
    tree = ast.parse(Path(containerd_client.__file__).read_text())
    called = {node.func.attr for node in ast.walk(tree)
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}
    assert rpc_methods() & called == READ_ONLY


def test_no_other_module_reaches_the_services():
    reaching = sorted(str(path.relative_to(PROBE)) for path in PROBE.rglob("*.py")
                      if "containerd_api" not in path.parts and "_pb2_grpc" in path.read_text())
    assert reaching == ["watch/containerd_client.py"]


def record(container_id: str, labels: dict, annotations: dict | None) -> containers_pb2.Container:
    spec = b"" if annotations is None else json.dumps({"ociVersion": "1.0.2", "annotations": annotations}).encode()
    return containers_pb2.Container(
        id=container_id, labels=labels,
        spec=Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/Spec", value=spec))


@pytest.mark.parametrize("message, meta, container", [
    (record("ff91", {"io.kubernetes.pod.name": "web-7d9f8c6b5-x2x9z", "io.kubernetes.pod.namespace": "shop",
                     "io.cri-containerd.kind": "sandbox", "app": "web"}, {}),
     PodMeta("shop/web-7d9f8c6b5-x2x9z", "web", True, (("app", "web"),)),
     Container("ff91", "web-7d9f8c6b5-x2x9z", "", 42, "containerd", "shop/web-7d9f8c6b5-x2x9z", "web",
               (("app", "web"),))),
    (record("ff91", {}, {"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-name": "db-0",
                         "io.kubernetes.cri.sandbox-namespace": "shop"}),  # the annotations alone
     PodMeta("shop/db-0", "db-0", True, ()), Container("ff91", "db-0", "", 42, "containerd", "shop/db-0", "db-0")),
    (record("0523", {"io.kubernetes.pod.name": "web-7d9f8c6b5-x2x9z", "io.kubernetes.pod.namespace": "shop",
                     "io.cri-containerd.kind": "container"}, None),  # an app container: no spec needed
     PodMeta("shop/web-7d9f8c6b5-x2x9z", "web-7d9f8c6b5", False, ()),
     Container("0523", "web-7d9f8c6b5-x2x9z", "", 42, "containerd", "shop/web-7d9f8c6b5-x2x9z", "web-7d9f8c6b5")),
    (record("4b1e", {"nerdctl/name": "cache"}, {}), PodMeta(), Container("4b1e", "cache", "", 42, "containerd")),
    (record("sbx1", {}, None), PodMeta(), Container("sbx1", "sbx1", "", 42, "containerd")),  # ctr run
])
def test_a_container_record_says_its_pod_and_names_the_namespace(message, meta, container):
    assert container_of(message, 42) == (meta, container)


def test_annotations_come_from_the_spec_json_and_a_broken_spec_has_none():
    assert annotations_of(record("x", {}, {"a": "b"})) == {"a": "b"}
    broken = containers_pb2.Container(id="x", spec=Any(type_url="t", value=b"{not json"))
    assert annotations_of(broken) == {} and annotations_of(record("x", {}, None)) == {}


@pytest.mark.parametrize("event, of_init", [
    (Event("k8s.io", "/tasks/exit", "ff91", "ff91", 7), True),  # the init process: its id is the container's
    (Event("k8s.io", "/tasks/exit", "ff91", "exec-3", 9), False),  # an exec'd process
    (Event("k8s.io", "/tasks/delete", "ff91", "", 7), True),
    (Event("k8s.io", "/containers/delete", "ff91"), True),
])
def test_only_the_init_process_ends_a_container(event, of_init):
    assert event.of_init is of_init
