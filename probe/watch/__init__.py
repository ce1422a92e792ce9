"""Devices that come and go, as probe services.

    watcher.py       LinkWatcher: deleted devices released, --iface kept, --auto attached
    link_monitor.py  the netlink socket and its dumps
    settings.py      WatchSettings
    docker_watch.py  DockerWatcher: containers' veths, attached and labelled (Docker API)
    podman_watch.py  PodmanWatcher: the same on podman's socket; pods named after the pod
    containers.py    ContainerIndex: network namespaces and the containers behind them
    guard.py         FilterGuard: our filters replaced or removed by somebody else
"""
