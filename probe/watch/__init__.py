"""Devices that come and go, as probe services.

    watcher.py       LinkWatcher: deleted devices released, --iface kept, --auto attached
    link_monitor.py  the netlink socket and its dumps
    settings.py      WatchSettings
    docker_watch.py  DockerWatcher: containers' veths, attached and labelled
    containers.py    ContainerIndex: network namespaces and the containers behind them
    guard.py         FilterGuard: our filters replaced or removed by somebody else
"""
