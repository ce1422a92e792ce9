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

Rows may carry the quality fields too (``rtt_min_us``, ``rtt_avg_us``, ``rtt_max_us``,
``retransmits``, ``drop_packets``, ``drop_bytes``, ``drop_reason``, and the average's
partials ``rtt_weighted`` and ``rtt_weight``: quality.py reads them). A connection's quality
is that of all its rows, whichever device counted them (drops are reported on the
receiver's device, retransmits on the sender's): RTT least, greatest and the records'
averages weighted by their packets (as ``connstats history --quality``), retransmits and
drops summed, the reason of the most dropped packets. An edge carries its connections' greatest RTT, their retransmits and drops
and the commonest reason. The map has ``quality`` true and these fields only when some row
has one. Drops that belong to no connection (the store's device drops) are listed on the
node of their device: its owner, the host, or a node of the device itself.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from connstats.sink.history import OVERFLOW

MAX_NODE_PROCESSES = 8  # per node: the programs that moved the most bytes there

CONNECTION_FIELDS = ["source", "target", "proto", "src_ip", "src_port", "dst_ip", "dst_port", "packets", "bytes",
                     "verdict", "source_process", "source_pid", "target_process", "target_pid"]
QUALITY_CONNECTION_FIELDS = ["rtt_avg_us", "rtt_max_us", "retransmits", "drop_packets", "drop_reason"]
QUALITY_EDGE_FIELDS = ("rtt_max_us", "retransmits", "drop_packets", "drop_bytes", "drop_reason")
_QUALITY_SIGNS = ("rtt_max_us", "retransmits", "drop_packets")  # a row with one of them set has quality


@dataclass
class Quality:
    """Quality added up over rows: RTT least, greatest and average weighted by packets,
    retransmits and drops summed, dropped packets per reason."""

    rtt_min_us: int = 0
    rtt_max_us: int = 0
    rtt_weighted: int = 0  # the records' average RTTs times their packets, summed
    rtt_weight: int = 0  # the packets of records with an RTT
    retransmits: int = 0
    drop_packets: int = 0
    drop_bytes: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def of(row: dict) -> Quality | None:
        if not any(row.get(name) for name in _QUALITY_SIGNS):
            return None
        average = row.get("rtt_avg_us") or 0  # a row without the partials: its packets weigh it
        weight = row.get("rtt_weight", row["packets"] if average else 0)
        reason = row.get("drop_reason") or ""
        return Quality(row.get("rtt_min_us") or 0, row.get("rtt_max_us") or 0,
                       row.get("rtt_weighted", average * weight), weight, row.get("retransmits") or 0, row.get("drop_packets") or 0, row.get("drop_bytes") or 0,
                       {reason: row.get("drop_packets") or 0} if row.get("drop_packets") else {})

    def add(self, other: Quality) -> None:
        self.rtt_min_us = min(filter(None, (self.rtt_min_us, other.rtt_min_us)), default=0)
        self.rtt_max_us = max(self.rtt_max_us, other.rtt_max_us)
        self.rtt_weighted += other.rtt_weighted
        self.rtt_weight += other.rtt_weight
        self.retransmits += other.retransmits
        self.drop_packets += other.drop_packets
        self.drop_bytes += other.drop_bytes
        for reason, packets in other.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + packets

    @property
    def rtt_avg_us(self) -> int:
        return self.rtt_weighted // self.rtt_weight if self.rtt_weight else 0

    @property
    def drop_reason(self) -> str:
        """The reason of the most dropped packets (ties: the first by name); "" without drops."""
        return min(self.reasons.items(), key=lambda item: (-item[1], item[0]))[0] if self.reasons else ""

    def fields(self, names: Collection[str]) -> list:
        return [getattr(self, name) for name in names]


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
        self.quality: dict[tuple, Quality] = {}  # per connection, from all its rows; drawn once
        for row in rows:
            if (found := Quality.of(row)) is not None:
                self.quality.setdefault(_key(row), Quality()).add(found)
        self.has_quality = bool(self.quality)
        self.edge_quality: dict[tuple[str, str], Quality] = {}
        self.device_nodes: dict[tuple[str, str], str] = {}  # (host, ifname) -> the node of its rows

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
        node_id = self.add(who)
        self.device_nodes.setdefault((row["host"], row["ifname"]), node_id)
        return node_id

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
        connection = [sender, receiver, row["proto"], row["src_ip"], row["src_port"], row["dst_ip"], row["dst_port"],
                      row["packets"], row["bytes"], row.get("verdict") or "", *sent_by, *received_by]
        if self.has_quality:
            quality = self.quality.pop(_key(row), None) or Quality()  # a connection drawn twice: its quality once
            self.edge_quality.setdefault((sender, receiver), Quality()).add(quality)
            connection += quality.fields(QUALITY_CONNECTION_FIELDS)
        self.connections.append(connection)

    def add_drops(self, drops: list[dict]) -> None:
        """Device drops (host, ifname, reason, packets, bytes) on the node of their device."""
        for drop in sorted(drops, key=lambda d: (-d["packets"], d["host"], d["ifname"], d["reason"])):
            node_id = self.device_nodes.get((drop["host"], drop["ifname"])) or self.add(device_node(drop))
            self.nodes[node_id].setdefault("drops", []).append(
                [drop["ifname"], drop["reason"], drop["packets"], drop["bytes"]])

    def body(self) -> dict[str, Any]:
        for node_id, seen in self.processes.items():
            busiest = sorted(seen.items(), key=lambda item: (-item[1], item[0]))[:MAX_NODE_PROCESSES]
            self.nodes[node_id]["processes"] = [[name, pid] for (name, pid), _ in busiest]
        for edge_key, quality in self.edge_quality.items():
            self.edges[edge_key].update(zip(QUALITY_EDGE_FIELDS, quality.fields(QUALITY_EDGE_FIELDS), strict=True))
        fields = CONNECTION_FIELDS + (QUALITY_CONNECTION_FIELDS if self.has_quality else [])
        return {"nodes": sorted(self.nodes.values(), key=lambda n: (n["kind"], n["id"])),
                "edges": sorted(self.edges.values(), key=lambda e: (-e["bytes"], e["source"], e["target"])),
                "connection_fields": fields, "connections": self.connections, "quality": self.has_quality}


def build_map(rows: list[dict], host_addresses: Mapping[str, Collection[str]] | None = None,
              drops: list[dict] | None = None) -> dict[str, Any]:
    """Nodes (pods, containers, hosts, devices, outside peers) and edges (sender ->
    receiver) from rows grouped by ``connection_owner``; ``host_addresses`` maps a host's
    name to its own addresses; ``drops``: the device drops that belong to no connection
    (the module docstring says how each is used).

    An edge's ``verdict`` is ``deny`` if any of its connections was denied (by the policy,
    in monitor or protect mode), else ``allow`` if any was allowed, else empty."""
    rows = [r for r in rows if r["src_ip"] != OVERFLOW]
    graph = _Graph(rows, {host: canonical(addresses) for host, addresses in (host_addresses or {}).items()})
    graph.learn_owners(rows)
    for row in rows:
        if row["direction"] == "ingress" and graph.counted_by_sender(row):
            continue
        graph.draw(row)
    graph.add_drops(drops or [])
    return graph.body()


_VERDICT_RANK = {"": 0, "allow": 1, "deny": 2}


def _worse(a: str, b: str) -> str:
    """An edge's verdict: deny if any of its connections was denied, else allow if any was
    allowed, else "" (no policy governs it)."""
    return max(a, b, key=lambda v: _VERDICT_RANK.get(v, 0))
