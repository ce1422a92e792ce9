"""The map's nodes and edges from store rows grouped by ``connection_owner`` (pure functions).

Who a node is, in this order:

    the device's owner     pod:<host>/<ns>/<name> (a pod's device), else container:<host>/<name>
    this host              host:<host>, for an address of that host (``host_addresses``):
                           whatever device it was seen on, and however many there are
    another node's         an address some container or device sent from (or received at)
    an outside peer        peer:<address>

A row's own end is its source on egress and its destination on ingress (directions are
as seen from the device's owner). The host's addresses come from the host itself (the
page's server asks the kernel for its own); rows alone cannot tell them: a container's
packets to its host end's address and to an address routed through the host leave the
same veth in the same direction, and nothing in the record says which the host kept. So a
host whose addresses the page does not know is drawn as today, each address a peer: a
real outside address is never taken for the host.

A connection counted on both ends' devices is drawn once, from the sender's egress: an
ingress row whose sender is another node's address is left out, and one from an address
of the host only when the same connection was counted as egress on one of that host's
devices (the host sending through a bridge it has an address on); the host's packets to
a routed veth cross that veth alone and are drawn from its ingress.

Rows may carry ``pod``, ``workload``, ``process``, ``pid``, ``peer_process`` and
``peer_pid`` (stores that know them); a row without them is drawn as before. ``process``
is the program at the device's end, ``peer_process`` the one at the other end when it is
on this host too: so on egress the sender's is ``process``, on ingress the receiver's.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from connstats.sink.history import OVERFLOW

MAX_NODE_PROCESSES = 8  # per node: the programs that moved the most bytes there

CONNECTION_FIELDS = ["source", "target", "proto", "src_ip", "src_port", "dst_ip", "dst_port", "packets", "bytes",
                     "verdict", "source_process", "source_pid", "target_process", "target_pid"]


@dataclass(frozen=True)
class Who:
    """A node's identity: its id, kind, label, Kubernetes namespace and workload."""

    id: str
    kind: str  # pod, container, host, device, peer
    label: str
    namespace: str = ""
    workload: str = ""

    def node(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "label": self.label, "namespace": self.namespace,
                "workload": self.workload, "bytes": 0, "packets": 0, "processes": []}


def host_node(host: str) -> Who:
    return Who(f"host:{host}", "host", host)


def peer_node(address: str) -> Who:
    return Who(f"peer:{address}", "peer", address)


def owner_node(row: dict) -> Who | None:
    """The pod or container whose device counted ``row``; None for a device of the host."""
    pod = row.get("pod") or ""
    if pod:
        namespace, _, name = pod.rpartition("/")
        return Who(f"pod:{row['host']}/{pod}", "pod", name, namespace, row.get("workload") or "")
    if row["container_name"] and row["container_name"] != OVERFLOW:
        return Who(f"container:{row['host']}/{row['container_name']}", "container", row["container_name"])
    return None


def device_node(row: dict) -> Who:
    return Who(f"device:{row['host']}/{row['ifname']}", "device", f"{row['ifname']} ({row['host']})")


def ends(row: dict) -> tuple[str, str]:
    """(own address, remote address): directions are as seen from the device's owner."""
    if row["direction"] == "egress":
        return row["src_ip"], row["dst_ip"]
    return row["dst_ip"], row["src_ip"]


def canonical(addresses: Collection[str]) -> frozenset[str]:
    """Addresses as the probe writes them (``ipaddress``'s text); what is not one is left out."""
    out = set()
    for text in addresses:
        try:
            out.add(str(ipaddress.ip_address(text.split("%", 1)[0])))
        except ValueError:
            continue
    return frozenset(out)


def _key(row: dict) -> tuple:
    return (row["host"], row["proto"], row["src_ip"], row["src_port"], row["dst_ip"], row["dst_port"])


class _Graph:
    """Nodes, edges and connections as rows are added (``build_map`` is its one user)."""

    def __init__(self, rows: list[dict], host_addresses: Mapping[str, frozenset[str]]) -> None:
        self.host_addresses = host_addresses
        self.nodes: dict[str, dict] = {}
        self.processes: dict[str, dict[tuple[str, int], int]] = {}  # node -> (process, pid) -> bytes
        self.owner: dict[str, str] = {}  # address -> the node that sent from it (or received at it)
        self.egress = {_key(r) for r in rows if r["direction"] == "egress"}
        self.edges: dict[tuple[str, str], dict] = {}
        self.connections: list[list] = []

    def is_host(self, row: dict, address: str) -> bool:
        return address in self.host_addresses.get(row["host"], ())

    def add(self, who: Who) -> str:
        self.nodes.setdefault(who.id, who.node())
        return who.id

    def local(self, row: dict) -> str:
        """The node that counted ``row``: its device's owner, the host (a device of the host
        whose own end is the host's address), or the device."""
        who = owner_node(row)
        if who is None:
            who = host_node(row["host"]) if self.is_host(row, ends(row)[0]) else device_node(row)
        return self.add(who)

    def learn_owners(self, rows: list[dict]) -> None:
        """An address is a node's if that node sent from it (egress first), else if it
        received at it from somebody else (a bridge in hairpin mode floods a frame back to
        its sender, whose ingress then shows the receiver's address as its own end: that
        must not make the address the sender's). The host's addresses are the host's."""
        for row in sorted(rows, key=lambda r: r["direction"] != "egress"):
            node_id = self.local(row)
            here = ends(row)[0]
            if self.is_host(row, here):
                continue
            if row["direction"] == "egress" or self.owner.get(row["src_ip"]) != node_id:
                self.owner.setdefault(here, node_id)

    def counted_by_sender(self, row: dict) -> bool:
        """Whether ``row`` (ingress) is drawn from its sender's egress instead."""
        remote = ends(row)[1]
        if self.is_host(row, remote):
            return _key(row) in self.egress
        return remote in self.owner

    def remote(self, row: dict) -> str:
        address = ends(row)[1]
        if self.is_host(row, address):
            return self.add(host_node(row["host"]))
        return self.owner.get(address) or self.add(peer_node(address))

    def draw(self, row: dict) -> None:
        here, there = self.local(row), self.remote(row)
        own = (row.get("process") or "", row.get("pid") or 0)
        other = (row.get("peer_process") or "", row.get("peer_pid") or 0)
        if row["direction"] == "egress":
            (sender, sent_by), (receiver, received_by) = (here, own), (there, other)
        else:
            (sender, sent_by), (receiver, received_by) = (there, other), (here, own)
        edge = self.edges.setdefault((sender, receiver), {"source": sender, "target": receiver, "bytes": 0,
                                                          "packets": 0, "connections": 0, "verdict": ""})
        edge["verdict"] = _worse(edge["verdict"], row.get("verdict") or "")
        edge["bytes"] += row["bytes"]
        edge["packets"] += row["packets"]
        edge["connections"] += 1
        for node_id in {sender, receiver}:
            self.nodes[node_id]["bytes"] += row["bytes"]
            self.nodes[node_id]["packets"] += row["packets"]
        for node_id, process in ((sender, sent_by), (receiver, received_by)):
            if process[0]:
                seen = self.processes.setdefault(node_id, {})
                seen[process] = seen.get(process, 0) + row["bytes"]
        self.connections.append([sender, receiver, row["proto"], row["src_ip"], row["src_port"], row["dst_ip"],
                                 row["dst_port"], row["packets"], row["bytes"], row.get("verdict") or "",
                                 *sent_by, *received_by])

    def body(self) -> dict[str, Any]:
        for node_id, seen in self.processes.items():
            busiest = sorted(seen.items(), key=lambda item: (-item[1], item[0]))[:MAX_NODE_PROCESSES]
            self.nodes[node_id]["processes"] = [[name, pid] for (name, pid), _ in busiest]
        return {"nodes": sorted(self.nodes.values(), key=lambda n: (n["kind"], n["id"])),
                "edges": sorted(self.edges.values(), key=lambda e: (-e["bytes"], e["source"], e["target"])),
                "connection_fields": CONNECTION_FIELDS, "connections": self.connections}


def build_map(rows: list[dict], host_addresses: Mapping[str, Collection[str]] | None = None) -> dict[str, Any]:
    """Nodes (pods, containers, hosts, devices, outside peers) and edges (sender ->
    receiver) from rows grouped by ``connection_owner``; ``host_addresses`` maps a host's
    name to its own addresses (the module docstring says how each is used).

    An edge's ``verdict`` is ``deny`` if any of its connections was denied (by the policy,
    in monitor or protect mode), else ``allow`` if any was allowed, else empty."""
    rows = [r for r in rows if r["src_ip"] != OVERFLOW]
    graph = _Graph(rows, {host: canonical(addresses) for host, addresses in (host_addresses or {}).items()})
    graph.learn_owners(rows)
    for row in rows:
        if row["direction"] == "ingress" and graph.counted_by_sender(row):
            continue
        graph.draw(row)
    return graph.body()


_VERDICT_RANK = {"": 0, "allow": 1, "deny": 2}


def _worse(a: str, b: str) -> str:
    """An edge's verdict: deny if any of its connections was denied, else allow if any was
    allowed, else "" (no policy governs it)."""
    return max(a, b, key=lambda v: _VERDICT_RANK.get(v, 0))
