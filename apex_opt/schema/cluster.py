"""Cluster specs: node groups of one GPU kind each, an intra-node fabric and an inter-node network."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..bounds import MAX_GPUS, format_count
from ..errors import SpecError
from ..units import Bandwidth, Seconds
from .base import Spec


class NodeGroup(Spec):
    """``count`` identical nodes of ``gpus_per_node`` GPUs of kind ``gpu``."""

    gpu: str
    count: int = Field(ge=1, description="number of nodes")
    gpus_per_node: int = Field(ge=1, le=72)
    fabric: Literal["nvswitch", "nvlink-mesh", "pcie", "infinity-fabric"] = "nvswitch"


class Network(Spec):
    """The scale-out network, per GPU (one NIC per GPU)."""

    kind: str = "infiniband-ndr"
    bandwidth_per_gpu: Bandwidth = Field(gt=0)
    latency: Seconds = Field(default=5e-6, ge=0)


class ClusterSpec(Spec):
    """A cluster.

    >>> c = ClusterSpec.homogeneous("h100-sxm-80gb", nodes=2, gpus_per_node=8)
    >>> c.total_gpus, c.gpus_per_node, c.is_heterogeneous
    (16, 8, False)
    """

    name: str
    description: str = ""
    nodes: tuple[NodeGroup, ...] = Field(min_length=1)
    network: Network = Network(bandwidth_per_gpu=50e9)
    nvlink_domain: int | None = Field(
        default=None, ge=1, le=MAX_GPUS,
        description="GPUs that share one NVLink switch fabric across nodes, a whole number of nodes (e.g. 72 for "
                    "GB200 NVL72: 18 trays of 4 GPUs); unset: each node is its own domain")

    @model_validator(mode="after")
    def _unique_gpu_groups(self) -> ClusterSpec:
        kinds = [g.gpu for g in self.nodes]
        if len(set(kinds)) != len(kinds):
            raise ValueError("each GPU kind appears in one node group only; merge groups of the same gpu")
        total = sum(g.count * g.gpus_per_node for g in self.nodes)
        if total > MAX_GPUS:  # checked before any per-GPU graph is built
            i, big = max(enumerate(self.nodes), key=lambda item: item[1].count * item[1].gpus_per_node)
            rest = total - big.count * big.gpus_per_node
            most = max(0, (MAX_GPUS - rest) // big.gpus_per_node)
            raise ValueError(f"nodes[{i}].count {format_count(big.count)} x {big.gpus_per_node} GPUs per node makes "
                             f"{format_count(total)} GPUs in "
                             f"the cluster, more than the {MAX_GPUS:,} apex-opt supports; use a count of at most "
                             f"{most:,}")
        if self.nvlink_domain is not None:
            for i, g in enumerate(self.nodes):
                if self.nvlink_domain % g.gpus_per_node:
                    raise ValueError(f"nvlink_domain {self.nvlink_domain} is not a whole number of nodes[{i}]'s "
                                     f"{g.gpus_per_node}-GPU nodes; use a multiple of {g.gpus_per_node}")
        return self

    @classmethod
    def homogeneous(
        cls,
        gpu: str,
        nodes: int = 1,
        gpus_per_node: int = 8,
        *,
        fabric: str | None = None,
        network_bandwidth: str | float = "400Gb/s",
        name: str | None = None,
    ) -> ClusterSpec:
        """The quick form ``--gpu NAME --nodes N --gpus-per-node M``."""
        if fabric is None:
            fabric = "pcie" if gpu.startswith(("l40", "v100-pcie", "a100-pcie", "rtx")) else (
                "infinity-fabric" if gpu.startswith("mi") else "nvswitch"
            )
        try:
            return cls.parse(
                {
                    "name": name or f"{nodes}x{gpus_per_node}-{gpu}",
                    "nodes": [{"gpu": gpu, "count": nodes, "gpus_per_node": gpus_per_node, "fabric": fabric}],
                    "network": {"bandwidth_per_gpu": network_bandwidth},
                },
                source="{gpu}/{nodes}/{gpus_per_node}",
                kind="cluster",
            )
        except SpecError as exc:  # the options as the caller spells them: gpu=/nodes= in Python, --gpu/--nodes
            raise SpecError(str(exc), option=("gpu", "nodes", "gpus_per_node")) from None

    @property
    def total_gpus(self) -> int:
        return sum(g.count * g.gpus_per_node for g in self.nodes)

    @property
    def num_nodes(self) -> int:
        return sum(g.count for g in self.nodes)

    @property
    def is_heterogeneous(self) -> bool:
        return len(self.nodes) > 1

    @property
    def gpus_per_node(self) -> int:
        """GPUs per node (the smallest group's, on a heterogeneous cluster)."""
        return min(g.gpus_per_node for g in self.nodes)

    @property
    def gpu(self) -> str:
        """The GPU kind of the first (or only) node group."""
        return self.nodes[0].gpu

    def domain_gpus(self, group: NodeGroup) -> int:
        """GPUs per NVLink domain in ``group``: ``nvlink_domain``, else one node.

        Domains are whole nodes, counted node by node within a group (never across two groups); a group whose
        node count does not fill its last domain ends with a smaller one.

        >>> c = ClusterSpec.homogeneous("h100-sxm-80gb", nodes=2)
        >>> c.domain_gpus(c.nodes[0])
        8
        """
        return self.nvlink_domain or group.gpus_per_node

    def group(self, gpu: str) -> NodeGroup:
        for g in self.nodes:
            if g.gpu == gpu:
                return g
        raise KeyError(gpu)
