"""Devices that come and go, as probe services.

    watcher.py       LinkWatcher: deleted devices released, --iface kept, --auto attached
    link_monitor.py  the netlink socket and its dumps
    settings.py      WatchSettings
    docker_watch.py  DockerWatcher: containers' veths, attached and labelled (Docker API)
    podman_watch.py  PodmanWatcher: the same on podman's socket; pods named after the pod
    docker_watch.py  DockerWatcher: containers' veths, attached and labelled
    containerd_watch.py  ContainerdWatcher: pods' (sandboxes') veths, attached and labelled
    containerd_client.py the read-only calls on containerd's socket (stubs: containerd_api/)
    claims.py        VethClaims: a runtime's container -> its namespace's veths, both watchers
    pods.py          labels and annotations -> pod, workload (pure)
    cgroups.py       /proc/<pid>/cgroup -> candidate container ids (pure)
    containers.py    ContainerIndex: network namespaces and the containers behind them
    guard.py         FilterGuard: our filters replaced or removed by somebody else
"""
