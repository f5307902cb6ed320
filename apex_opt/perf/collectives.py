"""Collective communication cost: a topology-aware alpha-beta model with fitted efficiencies.

For a group of ``n`` GPUs inside one node, on an intra-node fabric ``f`` (``nvlink``/NVSwitch or
``pcie``) with per-GPU, per-direction link bandwidth ``B``::

    t = alpha_f(kind, n) + bus(kind, n) * S / (B * eff_f[kind] / (1 + c_f / n) * ramp_f(chunk))

    alpha_f    = latency_s + latency_step_s * steps(kind, n)         (the small-message floor)
    steps      = 2(n-1) all_reduce; n-1 all_gather, reduce_scatter, alltoall; 1 send_recv
    ramp_f(c)  = 1 / (1 + (ramp_bytes / c) ** ramp_exp)               (bandwidth ramps up with size)
    chunk      = S / n per ring step (S for send_recv)
    bus        = 2(n-1)/n all_reduce; (n-1)/n all_gather, reduce_scatter, alltoall; 1 send_recv

``S`` is the per-GPU buffer in bytes, as nccl-tests counts it: the all-reduce buffer, the gathered
output of an all-gather, the input of a reduce-scatter, the whole send buffer of an all-to-all and
the message of a send/recv.

A group spanning ``N = nodes`` nodes with ``g = n / N`` GPUs per node runs NCCL's rail pattern:
intra-node traffic on the intra fabric, inter-node traffic on the per-GPU NICs (bandwidth
``inter_bw`` each, ``g ** rail_exp`` of them usable per node; ``rail_exp = 1`` is a rail-optimised
cluster). The two phases are pipelined, so the slower one counts::

    t = alpha_net(kind, n) + max(t_intra, t_inter)
    all_reduce   t_intra = 2(g-1)/g S / B_intra     t_inter = 2(N-1)/N S / (g^rail B_net)
    all_gather,
    reduce_scatter          (g-1)/g S / B_intra               (N-1)/N S / (g^rail B_net)
    alltoall               (g-1)/n S / B_intra               (n-g)/n S / (g^(rail-1) B_net)
    send_recv                                                 S / B_net

with every ``B`` already multiplied by its fabric's efficiency and ramp.

vLLM's custom all-reduce (one node, NVLink, 2/4/6/8 GPUs, messages <= 8 MiB; see
``custom_allreduce_applies``) is a separate fitted curve: one-shot (every GPU reads all peers'
buffers, ``(n-1) S`` bytes in) or two-shot (reduce-scatter + all-gather, ``2(n-1)/n S``)::

    t = latency_{one,two}_shot_s + traffic / (B * bw_eff)

The parameters are fitted by ``benchmarks/fit_calibration.py`` and loaded from
``specs/calibration/<gpu>.json``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .gemm import calibration_section

__all__ = [
    "CollectiveParams",
    "CustomAllReduceParams",
    "FabricParams",
    "bus_factor",
    "collective_curve",
    "collective_time",
    "custom_allreduce_applies",
    "load_collective_params",
    "ring_steps",
]

_KIND_ALIASES = {
    "all_reduce": "all_reduce", "allreduce": "all_reduce", "all-reduce": "all_reduce",
    "all_gather": "all_gather", "allgather": "all_gather", "all-gather": "all_gather",
    "reduce_scatter": "reduce_scatter", "reducescatter": "reduce_scatter", "reduce-scatter": "reduce_scatter",
    "alltoall": "alltoall", "all_to_all": "alltoall", "all-to-all": "alltoall",
    "send_recv": "send_recv", "sendrecv": "send_recv", "p2p": "send_recv", "send": "send_recv",
}
_FABRIC_ALIASES = {
    "nvlink": "nvlink", "nvswitch": "nvlink", "xgmi": "nvlink", "infinity_fabric": "nvlink",
    "pcie": "pcie",
    "network": "network", "ib": "network", "infiniband": "network", "ethernet": "network", "roce": "network",
}
CUSTOM_AR_MAX_BYTES = 8 * 1024 * 1024


def _kind(kind: str) -> str:
    try:
        return _KIND_ALIASES[kind.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown collective '{kind}'; use one of "
                         "all_reduce, all_gather, reduce_scatter, alltoall, send_recv") from None


def _fabric_name(name: str) -> str:
    """Canonical fabric kind; accepts versioned spellings such as ``nvlink4`` or ``pcie5``."""
    key = name.strip().lower()
    if key in _FABRIC_ALIASES:
        return _FABRIC_ALIASES[key]
    for prefix in ("nvlink", "nvswitch", "xgmi", "infinity"):
        if key.startswith(prefix):
            return "nvlink"
    if key.startswith("pcie"):
        return "pcie"
    raise ValueError(f"unknown fabric '{name}'; use nvlink (nvswitch), pcie or network")


def bus_factor(kind: str, n: int) -> float:
    """Bytes each GPU moves per byte of buffer, for the ring/direct algorithm of ``kind``."""
    kind = _kind(kind)
    if n <= 1:
        return 0.0
    if kind == "all_reduce":
        return 2.0 * (n - 1) / n
    if kind == "send_recv":
        return 1.0
    return (n - 1) / n


def ring_steps(kind: str, n: int) -> int:
    """Sequential communication steps of the ring/direct algorithm (the latency count)."""
    kind = _kind(kind)
    if n <= 1:
        return 0
    if kind == "all_reduce":
        return 2 * (n - 1)
    if kind == "send_recv":
        return 1
    return n - 1


@dataclass(frozen=True)
class FabricParams:
    """Fitted alpha-beta parameters of one fabric kind (see the module docstring)."""

    latency_s: float  # fixed part of the small-message floor
    latency_step_s: float  # added per ring step (2(n-1) for all_reduce, n-1 for all_gather, ...)
    bw_eff: tuple[tuple[str, float], ...]  # (collective kind, asymptotic fraction of link bandwidth)
    small_n_penalty: float = 0.0
    ramp_bytes: float = 1.0
    ramp_exp: float = 0.5
    rail_exp: float = 1.0  # network only

    def efficiency(self, kind: str, n: int, chunk_bytes: float) -> float:
        """Fraction of the link bandwidth reached by ``kind`` over ``n`` ranks moving ``chunk_bytes`` per step."""
        return self.ramp(kind, n)(chunk_bytes)

    def ramp(self, kind: str, n: int) -> Callable[[float], float]:
        """:meth:`efficiency` of ``kind`` over ``n`` ranks as a function of the bytes moved per step."""
        eff = dict(self.bw_eff)
        base = eff.get(kind, eff.get("all_reduce", min(eff.values()) if eff else 0.5))
        top = base / (1.0 + self.small_n_penalty / max(n, 1))
        ramp_bytes, ramp_exp = self.ramp_bytes, self.ramp_exp
        return lambda chunk_bytes: top * (1.0 / (1.0 + (ramp_bytes / max(chunk_bytes, 1.0)) ** ramp_exp))

    def latency(self, kind: str, n: int) -> float:
        return self.latency_s + self.latency_step_s * ring_steps(kind, n)

    def to_dict(self) -> dict[str, Any]:
        return {"latency_s": self.latency_s, "latency_step_s": self.latency_step_s, "bw_eff": dict(self.bw_eff),
                "small_n_penalty": self.small_n_penalty, "ramp_bytes": self.ramp_bytes, "ramp_exp": self.ramp_exp,
                "rail_exp": self.rail_exp}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FabricParams:
        return cls(latency_s=float(d["latency_s"]), latency_step_s=float(d["latency_step_s"]),
                   bw_eff=tuple(sorted((str(k), float(v)) for k, v in dict(d["bw_eff"]).items())),
                   small_n_penalty=float(d.get("small_n_penalty", 0.0)), ramp_bytes=float(d.get("ramp_bytes", 1.0)),
                   ramp_exp=float(d.get("ramp_exp", 0.5)), rail_exp=float(d.get("rail_exp", 1.0)))


@dataclass(frozen=True)
class CustomAllReduceParams:
    """vLLM custom all-reduce: latencies of the one-shot and two-shot kernels and a bandwidth fraction."""

    latency_one_shot_s: float
    latency_two_shot_s: float
    bw_eff: float

    def to_dict(self) -> dict[str, Any]:
        return {"latency_one_shot_s": self.latency_one_shot_s, "latency_two_shot_s": self.latency_two_shot_s,
                "bw_eff": self.bw_eff}


@dataclass(frozen=True)
class CollectiveParams:
    """Per-fabric fits (``nvlink``, ``pcie``, ``network``) plus the custom all-reduce curve for one GPU."""

    gpu: str
    source: str
    fabrics: tuple[tuple[str, FabricParams], ...]
    custom_allreduce: CustomAllReduceParams | None = None

    def fabric_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.fabrics)

    def fabric(self, name: str) -> FabricParams:
        key = _fabric_name(name)
        for fname, params in self.fabrics:
            if fname == key:
                return params
        raise KeyError(f"collective calibration for {self.gpu} has no '{key}' fabric")

    def with_fabric(self, name: str, params: FabricParams) -> CollectiveParams:
        key = _fabric_name(name)
        rest = [(f, p) for f, p in self.fabrics if f != key]
        return replace(self, fabrics=tuple(sorted([*rest, (key, params)])))

    def with_custom_allreduce(self, params: CustomAllReduceParams) -> CollectiveParams:
        return replace(self, custom_allreduce=params)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "fabrics": {f: p.to_dict() for f, p in self.fabrics},
                "custom_allreduce": self.custom_allreduce.to_dict() if self.custom_allreduce else None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, gpu: str, source: str | None = None) -> CollectiveParams:
        fabrics = tuple(sorted((_fabric_name(f), FabricParams.from_dict(p)) for f, p in dict(d["fabrics"]).items()))
        car = d.get("custom_allreduce")
        return cls(gpu=gpu, source=source if source is not None else str(d.get("source", "")), fabrics=fabrics,
                   custom_allreduce=CustomAllReduceParams(**{k: float(v) for k, v in car.items()}) if car else None)


def _chunk(kind: str, nbytes: float, n: int) -> float:
    """Bytes moved per step: the message for send_recv, one of n slices otherwise."""
    return nbytes if kind == "send_recv" else nbytes / max(n, 1)


def custom_allreduce_applies(nbytes: float, n: int, *, nodes: int = 1, intra_fabric: str = "nvlink") -> bool:
    """Whether vLLM (v0.6) would run this all-reduce with its custom kernel rather than NCCL.

    One node, world size 2/4/6/8, full NVLink for more than 2 GPUs, and at most 8 MiB.
    """
    if nodes != 1 or n not in (2, 4, 6, 8) or nbytes > CUSTOM_AR_MAX_BYTES:
        return False
    return n == 2 or _fabric_name(intra_fabric) == "nvlink"


def _custom_allreduce_time(nbytes: float, n: int, bw: float, p: CustomAllReduceParams) -> float:
    one_shot = n == 2 or (n <= 4 and nbytes < 512 * 1024) or (n <= 8 and nbytes < 256 * 1024)
    if one_shot:
        return p.latency_one_shot_s + (n - 1) * nbytes / (bw * p.bw_eff)
    return p.latency_two_shot_s + 2.0 * (n - 1) / n * nbytes / (bw * p.bw_eff)


def collective_time(
    kind: str,
    nbytes: float,
    n: int,
    *,
    nodes: int = 1,
    intra_bw: float,
    inter_bw: float | None,
    params: CollectiveParams,
    custom_allreduce: bool = False,
    intra_fabric: str = "nvlink",
) -> float:
    """Seconds for one collective over ``n`` GPUs spread evenly over ``nodes`` nodes.

    Parameters
    ----------
    kind : ``all_reduce``, ``all_gather``, ``reduce_scatter``, ``alltoall`` or ``send_recv``.
    nbytes : per-GPU buffer size in bytes (nccl-tests convention, see the module docstring).
    n : GPUs in the group (2 for send_recv).
    nodes : nodes the group spans (``n`` must be a multiple of it).
    intra_bw : per-GPU, per-direction intra-node bandwidth of ``intra_fabric`` (bytes/s), e.g.
        450e9 for H100 NVLink 4 (900 GB/s bidirectional), 300e9 for A100, 15.75e9 for PCIe 3 x16.
    inter_bw : per-GPU NIC bandwidth in bytes/s (e.g. 50e9 for 400 Gb/s); required when ``nodes > 1``.
    params : fitted parameters (:func:`load_collective_params`).
    custom_allreduce : the engine's custom all-reduce is enabled (vLLM default); used only where
        :func:`custom_allreduce_applies`, NCCL otherwise.
    intra_fabric : ``nvlink`` (NVSwitch or NVLink bridge; also ``nvlink4``, ``xgmi``...) or ``pcie``
        (``pcie4``...). Pass the GPU's intra-node link kind: the PCIe fit is much less efficient.

    Raises
    ------
    ValueError on an unknown kind/fabric, ``n`` not divisible by ``nodes``, or a multi-node group
    without ``inter_bw``.

    Examples
    --------
    >>> p = load_collective_params("h100-sxm-80gb")
    >>> one = collective_time("all_reduce", 16 * 2**20, 8, nodes=1, intra_bw=450e9, inter_bw=50e9, params=p)
    >>> two = collective_time("all_reduce", 16 * 2**20, 8, nodes=2, intra_bw=450e9, inter_bw=50e9, params=p)
    >>> one < two
    True
    """
    kind = _kind(kind)
    _check_group(n, nodes)
    if n == 1 or nbytes <= 0:
        return 0.0
    return _curve(kind, n, nodes, intra_bw, inter_bw, params, custom_allreduce, intra_fabric)(nbytes)


@functools.lru_cache(maxsize=4096)
def _curve(kind: str, n: int, nodes: int, intra_bw: float, inter_bw: float | None, params: CollectiveParams,
           custom_allreduce: bool, intra_fabric: str) -> Callable[[float], float]:
    """:func:`collective_curve`, kept for the groups and links a run asks about again (a simulation prices the same
    KV transfer or pipeline send at every step)."""
    return collective_curve(kind, n, nodes=nodes, intra_bw=intra_bw, inter_bw=inter_bw, params=params,
                            custom_allreduce=custom_allreduce, intra_fabric=intra_fabric)


def _check_group(n: int, nodes: int) -> None:
    if n < 1 or nodes < 1 or n % nodes:
        raise ValueError(f"a group of {n} GPUs cannot span {nodes} nodes evenly")


def collective_curve(
    kind: str,
    n: int,
    *,
    nodes: int = 1,
    intra_bw: float,
    inter_bw: float | None,
    params: CollectiveParams,
    custom_allreduce: bool = False,
    intra_fabric: str = "nvlink",
) -> Callable[[float], float]:
    """:func:`collective_time` of one group on one link as a function of the buffer size in bytes.

    What does not depend on the size (aliases, the fabric's fit, latency, bus factor, the efficiency before its
    ramp) is worked out once; the function returned does the same arithmetic in the same order, so its values
    equal :func:`collective_time`'s to the last bit. A step model tabulates one collective at thousands of sizes.
    Raises the errors of :func:`collective_time` that do not depend on the size, at once.

    >>> p = load_collective_params("h100-sxm-80gb")
    >>> curve = collective_curve("all_gather", 8, intra_bw=450e9, inter_bw=None, params=p)
    >>> curve(2**20) == collective_time("all_gather", 2**20, 8, intra_bw=450e9, inter_bw=None, params=p)
    True
    """
    kind = _kind(kind)
    _check_group(n, nodes)
    if n == 1:
        return lambda nbytes: 0.0
    if kind == "send_recv" and n != 2:
        raise ValueError(f"send_recv is between 2 GPUs (got n={n})")
    g = n // nodes
    if nodes == 1:
        custom = params.custom_allreduce
        if not (custom_allreduce and kind == "all_reduce" and custom is not None
                and custom_allreduce_applies(0.0, n, nodes=1, intra_fabric=intra_fabric)):
            custom = None  # the custom kernel never runs here; where it may, it runs up to CUSTOM_AR_MAX_BYTES
        fab = params.fabric(intra_fabric)
        ramp = fab.ramp(kind, n)
        latency, bus = fab.latency(kind, n), bus_factor(kind, n)

        def one_node(nbytes: float) -> float:
            if nbytes <= 0:
                return 0.0
            if custom is not None and nbytes <= CUSTOM_AR_MAX_BYTES:
                return _custom_allreduce_time(nbytes, n, intra_bw, custom)
            bw = intra_bw * ramp(_chunk(kind, nbytes, n))
            return latency + bus * nbytes / bw

        return one_node

    if inter_bw is None or inter_bw <= 0:
        raise ValueError(f"a {kind} over {nodes} nodes needs the per-GPU network bandwidth (inter_bw)")
    net = params.fabric("network")
    net_ramp = net.ramp(kind, nodes)
    rails = g ** net.rail_exp
    net_latency = net.latency(kind, n)
    # a group link described only as "network" still has an intra-node part: NVLink by default
    intra_ramp = params.fabric("nvlink" if _fabric_name(intra_fabric) == "network" else intra_fabric).ramp(kind, g) \
        if g > 1 else None
    bus_g, bus_nodes = bus_factor(kind, g), bus_factor(kind, nodes)

    def across_nodes(nbytes: float) -> float:
        if nbytes <= 0:
            return 0.0
        chunk = _chunk(kind, nbytes, n)
        bn = inter_bw * net_ramp(chunk)
        t_intra = 0.0
        if intra_ramp is not None:
            bi = intra_bw * intra_ramp(chunk)
            if kind == "alltoall":
                t_intra = (g - 1) / n * nbytes / bi
            elif kind != "send_recv":
                t_intra = bus_g * nbytes / bi
        if kind == "send_recv":
            t_inter = nbytes / bn
        elif kind == "alltoall":
            t_inter = (n - g) / n * nbytes / (bn * rails / g)
        else:
            t_inter = bus_nodes * nbytes / (bn * rails)
        return net_latency + max(t_intra, t_inter)

    return across_nodes


def load_collective_params(gpu_name: str, architecture: str = "") -> CollectiveParams:
    """Fitted collective parameters for ``gpu_name``; GPUs without profiles reuse the nearest fit.

    >>> p = load_collective_params("h100-sxm-80gb")
    >>> sorted(p.fabric_names())
    ['network', 'nvlink', 'pcie']
    """
    section, gpu, source = calibration_section(gpu_name, "collectives", architecture)
    return CollectiveParams.from_dict(section, gpu=gpu, source=source)
