"""KV-cache transfer cost between a prefill replica and a decode replica placed on the cluster topology.

What moves: the KV cache of the prompt, ``prompt x kv_bytes_per_token`` with ``kv_bytes_per_token`` = the
model's K/V (or MLA latent) elements per token per layer x layers x bytes of the **prefill plan's** KV dtype.

How it moves: every GPU of the prefill replica holds the KV shard of its TP rank for the layers of its pipeline
stage and sends it over its own links, all ranks and stages at once (NIXL / Mooncake transfer engines move each
rank's pages GPU to GPU). The transfer takes as long as the busiest link: the larger of a sender GPU's shard and a
receiver GPU's shard (a decode replica with fewer ranks receives more per GPU), where a shard is
``kv_elems_per_token_per_layer(tp) x layers on the stage x dtype bytes`` (GQA heads split over TP ranks and
replicated beyond the KV head count; an MLA latent is replicated, so every rank moves it).

The link of a pair of GPUs comes from the topology (:meth:`Topology.group_link`): NVLink / NVSwitch when both
sit in one NVLink domain (a node, or a rack such as GB200 NVL72), the per-GPU NIC through the network otherwise (a
PCIe-only node uses its PCIe fabric). Its time is the collectives model's point-to-point fit:
``collective_time("send_recv", bytes, 2, ...)``, the fitted latency plus ``bytes / (bandwidth x efficiency(bytes))`` (:mod:`apex_opt.perf.collectives`; fitted on nccl-tests
``sendrecv_perf`` for the GPU, ``specs/calibration``). The worst rank pair sets the time.

>>> from apex_opt.catalog import get_cluster, get_gpu, get_model
>>> from apex_opt.topology.graph import Topology
>>> from apex_opt.schema.plan import Plan
>>> topo = Topology.build(get_cluster("h100x16"))
>>> m, g = get_model("llama-3.1-70b"), get_gpu("h100-sxm-80gb")
>>> p = Plan(gpu=g.name, tp=4, role="prefill")
>>> d = Plan(gpu=g.name, tp=4, role="decode")
>>> near = kv_transfer_cost(m, g, p, 0, d, 4, topo)  # same node: NVSwitch
>>> far = kv_transfer_cost(m, g, p, 0, d, 8, topo)   # next node: 400 Gb/s NIC per GPU
>>> near.fabric, far.fabric, near.bytes_per_token / 2**10
('nvlink', 'network', 320.0)
>>> near.time(4096) < far.time(4096)
True
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir.parallel import default_layer_split
from ..schema.gpu import DTYPE_BYTES, GPUSpec
from ..schema.model import ModelSpec
from ..schema.plan import Plan
from ..topology.graph import Topology
from .collectives import CollectiveParams, collective_time, load_collective_params


@dataclass(frozen=True)
class TopologyKVTransfer:
    """Transfer cost of one (prefill replica, decode replica) pair (a :class:`apex_opt.sim.disagg.KVTransfer`).

    ``bytes_per_token``: the KV cache of one token (all layers, reported as bytes moved); ``link_bytes_per_token``:
    what the busiest link carries per token; ``fabric`` ``nvlink`` | ``pcie`` | ``network``; ``nodes`` 1 or 2
    (the NVLink domains of the two ends of the worst pair); the bandwidths are per GPU, one direction, bytes/s.
    """

    bytes_per_token: float
    link_bytes_per_token: float
    fabric: str
    nodes: int
    intra_bw: float
    inter_bw: float | None
    params: CollectiveParams

    def time(self, tokens: int) -> float:
        if tokens <= 0:
            return 0.0
        return collective_time("send_recv", tokens * self.link_bytes_per_token, 2, nodes=self.nodes,
                               intra_bw=self.intra_bw, inter_bw=self.inter_bw, params=self.params,
                               intra_fabric=self.fabric if self.nodes == 1 else "nvlink")

    def bytes(self, tokens: int) -> float:
        return tokens * self.bytes_per_token


def kv_transfer_cost(model: ModelSpec, gpu: GPUSpec, prefill: Plan, prefill_offset: int, decode: Plan,
                     decode_offset: int, topology: Topology, params: CollectiveParams | None = None
                     ) -> TopologyKVTransfer:
    """The transfer cost from the replica of ``prefill`` at GPU ``prefill_offset`` to the replica of ``decode`` at
    ``decode_offset`` (GPU indices of ``topology``; replicas are placed as :mod:`apex_opt.perf.replica` does)."""
    dtype = DTYPE_BYTES[prefill.kv_dtype]
    per_token = model.kv_elems_per_token_per_layer(1) * model.num_layers * dtype  # unsplit K/V (or MLA latent)
    p_split = prefill.layers_per_stage or default_layer_split(model.num_layers, prefill.pp)
    d_split = decode.layers_per_stage or default_layer_split(model.num_layers, decode.pp)
    send = model.kv_elems_per_token_per_layer(prefill.tp) * max(p_split) * dtype
    recv = model.kv_elems_per_token_per_layer(decode.tp) * max(d_split) * dtype
    senders = [prefill_offset + i for i in range(prefill.gpus_per_replica)]
    receivers = [decode_offset + i for i in range(decode.gpus_per_replica)]
    # pair rank i of the larger side with rank i mod size of the smaller one; the slowest pair sets the time
    worst = None
    for i in range(max(len(senders), len(receivers))):
        a, b = senders[i % len(senders)], receivers[i % len(receivers)]
        if a == b:  # pragma: no cover - placement never overlaps replicas
            continue
        link = topology.group_link([a, b])
        key = (link.domains, -link.bandwidth)
        if worst is None or key > worst[0]:
            worst = (key, link)
    assert worst is not None
    link = worst[1]
    if params is None:
        params = load_collective_params(gpu.name, gpu.architecture)
    fabric = "network" if link.domains > 1 else ("pcie" if link.fabric == "pcie" else "nvlink")
    return TopologyKVTransfer(bytes_per_token=float(per_token), link_bytes_per_token=float(max(send, recv)),
                              fabric=fabric, nodes=link.domains, intra_bw=link.intra_bandwidth,
                              inter_bw=link.inter_bandwidth, params=params)


__all__ = ["TopologyKVTransfer", "kv_transfer_cost"]
