"""The cluster as a networkx graph of GPUs, NVSwitches / PCIe switches, NICs and the network fabric.

Edges carry ``bandwidth`` (bytes/s, one direction) and ``latency`` (s). A device group's collective cost comes from
the graph: the bottleneck bandwidth along the paths the group uses, and whether it spans NVLink domains.

An NVLink domain is the set of GPUs on one switch fabric: a node, unless the cluster sets ``nvlink_domain`` (GB200
NVL72: 18 trays of 4 GPUs on one NVLink switch system). The GPUs of a domain larger than a node all hang off one
``d<k>/switch``, so a group spanning trays of one domain talks over NVLink; only groups spanning domains use the
network.

>>> from apex_opt.catalog import get_cluster
>>> topo = Topology.build(get_cluster("h100x16"))
>>> topo.num_gpus, topo.group_link(range(8)).nodes, topo.group_link(range(16)).nodes
(16, 1, 2)
>>> topo.group_link(range(8)).bandwidth / 1e9, topo.group_link(range(16)).bandwidth / 1e9
(450.0, 50.0)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import networkx as nx

from ..schema.cluster import ClusterSpec
from ..schema.gpu import GPUSpec


@dataclass(frozen=True)
class GroupLink:
    """What a device group communicates over."""

    size: int
    nodes: int
    fabric: str  # nvswitch | nvlink-mesh | pcie | infinity-fabric | network
    bandwidth: float  # bottleneck per-GPU bandwidth, bytes/s one direction
    intra_bandwidth: float
    inter_bandwidth: float | None
    latency: float
    domains: int = 1  # NVLink domains spanned, rounded up to a divisor of ``size``; ``nodes`` counts hosts


@dataclass(frozen=True)
class GPUSlot:
    index: int
    node: int
    local: int
    kind: str
    domain: int = 0  # the NVLink domain (the node, unless the cluster sets nvlink_domain)


class Topology:
    """GPUs numbered node by node; ``slots[i]`` says where GPU ``i`` sits."""

    def __init__(self, graph: nx.Graph, slots: tuple[GPUSlot, ...], cluster: ClusterSpec) -> None:
        self.graph = graph
        self.slots = slots
        self.cluster = cluster
        # the switch each node's GPUs hang off: its own, or its NVLink domain's
        self._switch = {slot.node: next(n for n in graph.neighbors(f"gpu{slot.index}")
                                        if graph.nodes[n]["kind"] not in ("nic", "gpu")) for slot in slots}

    @classmethod
    def build(cls, cluster: ClusterSpec, gpus: dict[str, GPUSpec] | None = None) -> Topology:
        """Build the graph; ``gpus`` maps GPU names to specs (the catalog by default)."""
        if gpus is None:
            from ..catalog import get_gpu

            gpus = {g.gpu: get_gpu(g.gpu) for g in cluster.nodes}
        g = nx.Graph()
        net = cluster.network
        g.add_node("fabric", kind="network")
        slots: list[GPUSlot] = []
        node_index = 0
        domain = -1
        for group in cluster.nodes:
            per_domain = cluster.domain_gpus(group) // group.gpus_per_node  # nodes per NVLink domain
            spec = gpus[group.gpu]
            link = spec.intra_node
            if group.fabric == "pcie" or link.kind.startswith("pcie"):
                intra_bw = (spec.host_link.bandwidth if spec.host_link else link.bandwidth)
                intra_bw = min(intra_bw, link.bandwidth)
                fabric = "pcie"
            else:
                intra_bw = link.bandwidth
                fabric = group.fabric
            for j in range(group.count):
                if j % per_domain == 0:
                    domain += 1
                if per_domain == 1:
                    switch = f"n{node_index}/switch"
                    g.add_node(switch, kind=fabric, node=node_index)
                else:  # one switch fabric for every node of the domain
                    switch = f"d{domain}/switch"
                    g.add_node(switch, kind=fabric, domain=domain)
                for local in range(group.gpus_per_node):
                    idx = len(slots)
                    gpu = f"gpu{idx}"
                    nic = f"n{node_index}/nic{local}"
                    g.add_node(gpu, kind="gpu", node=node_index, local=local, gpu=group.gpu)
                    g.add_node(nic, kind="nic", node=node_index)
                    g.add_edge(gpu, switch, bandwidth=intra_bw, latency=link.latency, fabric=fabric)
                    g.add_edge(gpu, nic, bandwidth=min(net.bandwidth_per_gpu, intra_bw * 4), latency=0.0,
                               fabric="pcie")
                    g.add_edge(nic, "fabric", bandwidth=net.bandwidth_per_gpu, latency=net.latency, fabric="network")
                    slots.append(GPUSlot(idx, node_index, local, group.gpu, domain))
                node_index += 1
        return cls(g, tuple(slots), cluster)

    @property
    def num_gpus(self) -> int:
        return len(self.slots)

    def path_link(self, a: int, b: int) -> tuple[float, float, str]:
        """Bottleneck bandwidth, summed latency and the slowest fabric on the shortest path from GPU a to b."""
        return _path_link(self, a, b)

    def group_link(self, members: Iterable[int]) -> GroupLink:
        """How a group of GPU indices communicates: nodes and NVLink domains spanned, bottleneck bandwidth, latency.

        A group inside one NVLink domain uses its switch fabric even when it spans nodes (trays of an NVL72); a group
        spanning domains uses the network between them, NVLink inside each.
        """
        members = tuple(members)
        nodes = {self.slots[i].node for i in members}
        domains = {self.slots[i].domain for i in members}
        first = members[0]
        home = self.slots[first].domain
        intra = [self.path_link(first, m) for m in members[1:] if self.slots[m].domain == home]
        cross = [self.path_link(first, m) for m in members[1:] if self.slots[m].domain != home]
        intra_bw = min((bw for bw, _, _ in intra), default=self._local_bandwidth(first))
        intra_lat = max((lat for _, lat, _ in intra), default=0.0)
        if cross:
            inter_bw = min(bw for bw, _, _ in cross)
            latency = max(lat for _, lat, _ in cross)
            return GroupLink(len(members), len(nodes), "network", inter_bw, intra_bw, inter_bw, latency,
                             _even_split(len(domains), len(members)))
        fabric = self.graph.nodes[self._switch[self.slots[first].node]]["kind"]
        return GroupLink(len(members), len(nodes), fabric, intra_bw, intra_bw, None, intra_lat)

    def _local_bandwidth(self, gpu: int) -> float:
        return self.graph.edges[f"gpu{gpu}", self._switch[self.slots[gpu].node]]["bandwidth"]

    def nodes_of(self, members: Iterable[int]) -> int:
        return len({self.slots[i].node for i in members})


def _even_split(parts: int, size: int) -> int:
    """The smallest count >= ``parts`` that divides ``size``: the collective model spreads a group evenly over its
    domains, so a group split unevenly (8 + 56 GPUs over two NVL72 racks is fine, 16 + 72 + 40 is not) is priced as
    if spread over more, smaller parts (a pessimistic choice)."""
    return next(d for d in range(parts, size + 1) if size % d == 0)


@lru_cache(maxsize=4096)
def _path_link_cached(topo_id: int, a: int, b: int, topo: Topology) -> tuple[float, float, str]:
    path = nx.shortest_path(topo.graph, f"gpu{a}", f"gpu{b}")
    bw = float("inf")
    lat = 0.0
    fabric = ""
    for u, v in itertools.pairwise(path):
        e = topo.graph.edges[u, v]
        if e["bandwidth"] < bw:
            bw = e["bandwidth"]
            fabric = e["fabric"]
        lat += e["latency"]
    return bw, lat, fabric


def _path_link(topo: Topology, a: int, b: int) -> tuple[float, float, str]:
    return _path_link_cached(id(topo), a, b, topo)
