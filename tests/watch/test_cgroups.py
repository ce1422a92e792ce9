"""/proc/<pid>/cgroup -> candidate container ids, one row per layout (probe/watch/cgroups.py)."""
import pytest

from connstats.probe.watch.cgroups import candidate_ids, cgroup_paths, pod_uid

ID = "ff91d738e71a" + "0123456789abcdef" * 3 + "a0eb"  # 64 hex
UID = "8712f785-1a3e-41ec-a00b-e2dcc77431cb"


def v2(path: str) -> str:
    return f"0::{path}\n"


def hybrid(path: str) -> str:
    """A hybrid host like this one: every v1 hierarchy and the unified one say the same."""
    return f"12:pids:{path}\n5:cpu,cpuacct:{path}\n4:memory:{path}\n1:name=systemd:{path}\n0::{path}\n"


@pytest.mark.parametrize("text, first", [
    (v2(f"/docker/{ID}"), ID),  # docker, cgroupfs
    (v2(f"/csd0123/{ID}"), ID),  # docker, cgroupfs, the tests' --cgroup-parent
    (v2(f"/system.slice/docker-{ID}.scope"), ID),  # docker, systemd
    (v2(f"/kubepods/besteffort/pod{UID}/{ID}"), ID),  # containerd CRI, cgroupfs
    (v2(f"/kubepods/burstable/pod{UID}/{ID}"), ID),
    (v2(f"/kubepods/pod{UID}/{ID}"), ID),  # guaranteed: no qos level
    (v2(f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID.replace('-', '_')}.slice/"
        f"cri-containerd-{ID}.scope"), ID),  # containerd CRI, systemd
    (v2(f"/system.slice/containerd.service/kubepods-besteffort-pod{UID.replace('-', '_')}.slice:cri-containerd:{ID}"),
     ID),  # containerd CRI, systemd, old
    (v2(f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice/crio-{ID}.scope"),
     ID),  # CRI-O
    (hybrid("/k8s.io/sbx1"), "sbx1"),  # plain ctr run (seen here)
    (v2(f"/machine.slice/libpod-{ID}.scope"), ID),  # podman rootful, systemd
    (v2(f"/machine.slice/libpod-{ID}.scope/container"), ID),  # ... with a cgroup namespace on v2
    (hybrid(f"/libpod_parent/libpod-{ID}"), ID),  # podman, cgroupfs (seen here)
    ("4:memory:/process_api/0123abcd\n0::/\n", "0123abcd"),  # hybrid: the v2 line says nothing
    (hybrid(f"/i24kubepods/besteffort/pod{UID}/{ID}"), ID),  # the tests' kubepods-shaped path (seen here)
])
def test_the_first_candidate_is_the_container_id(text, first):
    assert candidate_ids(text)[0] == first


@pytest.mark.parametrize("text, candidates", [
    (v2(f"/kubepods/besteffort/pod{UID}/{ID}"), [ID, "besteffort", "kubepods"]),  # no pod<uid> level
    (v2(f"/machine.slice/libpod-conmon-{ID}.scope"), []),  # podman's monitor, not the container
    (v2(f"/kubepods.slice/crio-conmon-{ID}.scope"), []),  # CRI-O's
    (v2("/"), []),  # the host
    ("", []),
    ("12:pids:/\n4:memory:/\n0::/\n", []),
    ("4:memory:/k8s.io/a\n0::/k8s.io/b\n", ["b", "k8s.io", "a"]),  # v2 first, then v1, no repeats
])
def test_candidates(text, candidates):
    assert candidate_ids(text) == candidates


def test_paths_v2_then_memory_cpu_systemd_then_the_rest():
    text = "9:blkio:/e\n1:name=systemd:/d\n5:cpu,cpuacct:/c\n4:memory:/b\n0::/a\n"
    assert cgroup_paths(text) == ["/a", "/b", "/c", "/d", "/e"]


@pytest.mark.parametrize("text, uid", [
    (v2(f"/kubepods/besteffort/pod{UID}/{ID}"), UID),
    (v2(f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID.replace('-', '_')}.slice/"
        f"cri-containerd-{ID}.scope"), UID),
    (v2(f"/docker/{ID}"), ""),
])
def test_pod_uid(text, uid):
    assert pod_uid(text) == uid
