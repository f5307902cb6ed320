"""The plan space: every candidate (replica shape x engine limits x dp) with the cost model's predictions.

A candidate is one row of the tables the CP-SAT model indexes (:mod:`apex_opt.planner.model`):

* **shape**: ``tp`` (powers of two), ``pp`` (powers of two up to ``max_pp`` and the layer count), ``ep`` and the
  MoE ``moe_tp = tp / ep`` split (MoE models; vLLM only runs ``ep == tp``), the wide-EP layout (attention data
  parallel over ``dp`` ranks, experts over all ``tp x dp`` GPUs; SGLang and vLLM V1, pp = 1, the ``dp`` ranks
  being one group), weight and KV dtypes the user allows;
* **limits**: ``max_num_seqs`` and the chunked-prefill budget from a small menu;
* **dp**: every replica count up to ``dense_dp``; above it, the counts around the smallest one that carries the
  arrival rate (``dp_need``, from one replica's predicted capacity), a geometric ladder (5% steps) up to the
  most that fit, and that most. A 1024-GPU cluster thus has about a hundred dp values per shape, not a thousand,
  and the planning time grows with the logarithm of the cluster size (``benchmarks/scale.py``).

Rows that break divisibility (heads, KV heads, experts) stay in the table, flagged, so that the ``divisibility``
constraint can be named in an infeasibility explanation like any other.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import cached_property

from ..errors import SpecError
from ..perf.replica import check_divisibility
from ..schema.cluster import ClusterSpec
from ..schema.gpu import GPUSpec
from ..schema.model import ModelSpec
from ..schema.plan import Plan
from ..specs import Specs
from ..topology.graph import Topology
from .estimates import ConfigEstimate, Estimator, Menu, RoleEstimate, ShapeKey
from .workload_stats import WorkloadStats

QUANTIZATION = ("none", "fp8", "int8", "int4", "fp4", "any")
KV_DTYPES = ("bf16", "fp8", "any")
DTYPE_BITS = {"bf16": 16, "fp16": 16, "fp8": 8, "int8": 8, "int4": 4, "fp4": 4}


@dataclass(frozen=True)
class SearchOptions:
    """What the search may choose from, and the slack of the analytical bounds.

    ``disaggregation``: ``off`` (aggregated plans), ``auto`` (also xPyD prefill/decode plans, ranked with the
    aggregated ones on simulated metrics) or ``only`` (disaggregated plans only); see
    :mod:`apex_opt.planner.disagg`.

    ``quantization`` *allows* a weight format besides bf16 (``any``: fp8 and int4); ``kv_dtype`` picks the KV-cache
    format (``any``: bf16 or fp8). ``slo_slack`` loosens the analytical SLO bounds (the simulation has the last
    word); ``headroom`` is the share of capacity kept free by the ``capacity`` constraint.
    """

    quantization: str = "none"
    kv_dtype: str = "bf16"
    use_all_gpus: bool = False
    tp_across_nodes: bool = False
    max_pp: int = 16
    max_num_seqs: tuple[int, ...] = (128, 256)
    budgets: tuple[int | None, ...] = (None, 2048, 8192)
    slo_slack: float = 1.1
    headroom: float = 0.1
    dense_dp: int = 32
    dp_step: float = 1.05
    disaggregation: str = "auto"

    def __post_init__(self) -> None:
        if self.quantization not in QUANTIZATION:
            raise SpecError(f"{{quantization=}}'{self.quantization}' is unknown; use one of {', '.join(QUANTIZATION)}",
                            option="quantization")
        if self.kv_dtype not in KV_DTYPES:
            raise SpecError(f"{{kv_dtype=}}'{self.kv_dtype}' is unknown; use one of {', '.join(KV_DTYPES)}",
                            option="kv_dtype")
        if self.max_pp < 1:
            raise SpecError(f"max_pp {self.max_pp} must be at least 1")
        if not self.max_num_seqs or any(n < 1 for n in self.max_num_seqs):
            raise SpecError("the max_num_seqs menu needs at least one positive value")
        if self.slo_slack < 1.0:
            raise SpecError(f"slo_slack {self.slo_slack} must be >= 1 (the bounds may only be loosened)")
        if not 0 <= self.headroom < 1:
            raise SpecError(f"headroom {self.headroom} must be in [0, 1)")
        if self.disaggregation not in ("off", "auto", "only"):
            raise SpecError(f"{{disaggregation=}}'{self.disaggregation}' is unknown; use off (aggregated plans only), "
                            "auto (aggregated and prefill/decode-disaggregated plans, ranked together) or only",
                            option="disaggregation")
        if self.dense_dp < 1:
            raise SpecError(f"dense_dp {self.dense_dp} must be at least 1")
        if self.dp_step <= 1.0:
            raise SpecError(f"dp_step {self.dp_step} must be > 1 (the ratio between dp values above dense_dp)")


@dataclass(frozen=True)
class Candidate:
    """One row of the plan space."""

    index: int
    key: ShapeKey
    menu: Menu
    pp: int
    dp: int
    tp_nodes: int
    divisible: bool
    est: ConfigEstimate | None  # None for rows that break divisibility
    why_not_divisible: str = ""

    @property
    def tp(self) -> int:
        return self.key.tp

    @property
    def gpus(self) -> int:
        return self.dp * self.pp * self.key.tp

    @property
    def label(self) -> str:
        return self.plan().label

    def plan(self, gpu: str = "gpu", engine: str = "vllm-0.6", split: tuple[int, ...] | None = None) -> Plan:
        split = split or (self.est.split if self.est else None)
        extra = dict(self.menu.plan_fields(), dp=self.dp, pp=self.pp)
        if self.pp > 1 and split:
            extra["layers_per_stage"] = tuple(split)
        return self.key.plan(gpu, engine, **extra)

    def describe(self) -> str:
        b = "default" if self.menu.budget is None else str(self.menu.budget)
        return f"{self.plan().label} max_num_seqs={self.menu.max_num_seqs} budget={b}"


@dataclass
class PlanSpace:
    """All candidates of one problem, with the context the constraints and the report need."""

    specs: Specs
    options: SearchOptions
    stats: WorkloadStats
    gpu_name: str
    total_gpus: int
    gpus_per_node: int
    candidates: tuple[Candidate, ...]
    estimator: Estimator
    topology: Topology
    build_time_s: float = 0.0
    shapes: int = 0
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.candidates)

    @cached_property
    def domain_gpus(self) -> int:
        """GPUs per NVLink domain of the planned node group: a node, unless the cluster sets ``nvlink_domain``."""
        return self.specs.cluster.domain_gpus(self.specs.cluster.nodes[0])

    @cached_property
    def max_pp(self) -> int:
        return max((c.pp for c in self.candidates), default=1)

    def plan(self, cand: Candidate, split: tuple[int, ...] | None = None) -> Plan:
        return cand.plan(self.gpu_name, self.specs.engine.name, split)


def weight_dtypes(options: SearchOptions, gpu: GPUSpec, model: ModelSpec | None = None) -> tuple[str, ...]:
    """The weight formats the search may use on ``gpu``: fp8, int8 (W8A8) and fp4 need the GPU's tensor cores for
    that format (a peak in its spec); int4 is weight-only (16-bit math). ``any`` stays fp8 and int4.

    A checkpoint that is already quantized is served as stored (engines load it with its own method and quantize
    nothing more): one choice, named for its format when it covers every linear layer (``fp8`` for DeepSeek-V3),
    else ``bf16`` (gpt-oss: fp4 experts, bf16 attention).
    """
    q = model.checkpoint_weights if model is not None else None
    if q is not None:
        return (q.dtype if q.scope == "linear" else "bf16",)
    allowed = ["bf16"]
    for dtype in ("int8", "fp4"):
        if options.quantization == dtype:
            if dtype not in gpu.peak_flops:
                raise SpecError(f"{{quantization=}}{dtype}: {gpu.name} has no {dtype} tensor cores (no {dtype} peak in "
                                "its spec); use fp8, int4 or none", option="quantization")
            allowed.append(dtype)
    if options.quantization in ("fp8", "any"):
        if "fp8" in gpu.peak_flops:
            allowed.append("fp8")
        elif options.quantization == "fp8":
            raise SpecError(f"{{quantization=}}fp8: {gpu.name} has no fp8 tensor cores; use int4 or none",
                            option="quantization")
    if options.quantization in ("int4", "any"):
        allowed.append("int4")
    return tuple(allowed)


def kv_dtypes(options: SearchOptions) -> tuple[str, ...]:
    return {"bf16": ("bf16",), "fp8": ("fp8",), "any": ("bf16", "fp8")}[options.kv_dtype]


def _powers_of_two(limit: int) -> list[int]:
    out = []
    x = 1
    while x <= limit:
        out.append(x)
        x *= 2
    return out


def _tp_nodes(tp: int, pp: int, dp: int, gpus_per_node: int) -> int:
    """Most nodes (or NVLink domains, given the GPUs per domain) any TP group spans when replicas fill GPUs in order
    (see apex_opt.perf.replica)."""
    worst = 1
    for r in range(dp):
        for s in range(pp):
            start = (r * pp + s) * tp
            worst = max(worst, (start + tp - 1) // gpus_per_node - start // gpus_per_node + 1)
    return worst


def tp_placed(tp: int, pp: int, dp: int, domain_gpus: int, options: SearchOptions) -> bool:
    """The ``placement.tp`` rule: every tensor-parallel group of ``dp`` replicas of ``tp x pp`` GPUs, filled in
    order, inside one NVLink domain of ``domain_gpus`` (:meth:`ClusterSpec.domain_gpus`: a node, unless the cluster
    sets ``nvlink_domain``), unless ``options.tp_across_nodes``. The aggregated search constrains its ``tp_nodes``
    column with it (:func:`apex_opt.planner.constraints.builtin_constraints`); the disaggregated and mixed-GPU
    searches keep only the rows it admits.

    >>> tp_placed(8, 1, 1, 4, SearchOptions()), tp_placed(8, 1, 1, 72, SearchOptions())
    (False, True)
    """
    return options.tp_across_nodes or _tp_nodes(tp, pp, dp, domain_gpus) == 1


def group_cluster(cluster: ClusterSpec, i: int) -> ClusterSpec:
    """Node group ``i`` of a (heterogeneous) cluster as a cluster of its own, keeping the network and the NVLink
    domain size, so that a search priced on one GPU kind sees its links as the whole cluster does."""
    group = cluster.nodes[i]
    return ClusterSpec(name=f"{cluster.name}[{group.gpu}]", nodes=(group,), network=cluster.network,
                       nvlink_domain=cluster.nvlink_domain)


def _ep_choices(specs: Specs, tp: int, total: int = 0) -> list[tuple[int, int | None, int]]:
    """``(ep, moe_tp, wide_dp)`` layouts of the MoE layers for a TP degree (``(1, None, 1)`` for dense models).

    Expert parallelism inside the TP group (vLLM only runs ``ep == tp``); with an engine that runs attention data
    parallel (SGLang ``--enable-dp-attention``, vLLM V1 ``--data-parallel-size`` with expert parallelism), also
    the wide-EP layouts: ``wide_dp`` attention ranks of ``tp`` GPUs whose MoE layers span all ``tp x wide_dp`` GPUs
    (one expert group each), up to ``total`` GPUs.
    """
    moe = specs.model.moe
    if moe is None:
        return [(1, None, 1)]
    out: list[tuple[int, int | None, int]] = [(1, None, 1)]
    whole_group = specs.engine.ep_whole_tp_group
    for ep in _powers_of_two(tp):
        if ep < 2 or moe.num_experts % ep:
            continue
        if whole_group and ep != tp:  # vLLM's --enable-expert-parallel puts experts over the whole TP group
            continue
        out.append((ep, tp // ep, 1))
    if specs.engine.dp_attention:
        for wide in _powers_of_two(total // tp if total else 0):
            span = tp * wide
            if wide >= 2 and moe.num_experts % span == 0:
                out.append((span, 1, wide))
    return out


def build_space(specs: Specs, options: SearchOptions | None = None) -> PlanSpace:
    """Enumerate and estimate every candidate of ``specs`` (see the module docstring)."""
    options = options or SearchOptions()
    start = time.perf_counter()
    group = specs.cluster.nodes[0]
    total = group.count * group.gpus_per_node
    gpn = group.gpus_per_node
    domain = specs.cluster.domain_gpus(group)  # tp may cross nodes inside one NVLink domain (GB200 NVL72)
    gpu = specs.gpus[group.gpu]
    notes = []
    if specs.cluster.is_heterogeneous:
        notes.append(f"heterogeneous cluster: single-kind plans on its first node group ({total} x {gpu.name}); "
                     "mixed-GPU plans come from the cpsat solver's mixed search")
    topology = Topology.build(specs.cluster, specs.gpus)
    stats = WorkloadStats.of(specs.workload, specs.slo)
    estimator = Estimator(specs.model, gpu, specs.engine, topology, stats, specs.slo, slo_slack=options.slo_slack,
                          headroom=options.headroom, max_pp=options.max_pp)
    L = specs.model.num_layers
    menus = [Menu(n, b) for n in sorted(set(options.max_num_seqs)) for b in _budgets(specs, gpu, options.budgets)]
    rows: list[Candidate] = []
    shapes = 0
    for wd in weight_dtypes(options, gpu, specs.model):
        for kd in kv_dtypes(options):
            for tp in _powers_of_two(total):
                for ep, moe_tp, wide in _ep_choices(specs, tp, total):
                    key = ShapeKey(tp, ep, moe_tp, wd, kd, wide)
                    probe = key.plan(gpu.name, specs.engine.name)
                    try:
                        check_divisibility(specs.model, probe)
                        divisible, why = True, ""
                    except SpecError as exc:
                        divisible, why = False, str(exc)
                    for pp in _powers_of_two(min(options.max_pp, L, total // tp) if wide == 1 else 1):
                        shapes += 1
                        for menu in menus:
                            most = total // (tp * pp) if wide == 1 else wide  # wide EP: its ranks are one group
                            top = estimator.estimate(key, menu, pp, most) if divisible else None
                            dps = [wide] if wide > 1 else dp_values(most, dp_need(top, most, stats.rate,
                                                                                     options.headroom), options)
                            for dp in dps:
                                est = (top if dp == most else estimator.estimate(key, menu, pp, dp)) if divisible \
                                    else None
                                rows.append(Candidate(len(rows), key, menu, pp, dp, _tp_nodes(tp, pp, dp, domain),
                                                      divisible, est, why))
    return PlanSpace(specs, options, stats, gpu.name, total, gpn, tuple(rows), estimator, topology,
                     time.perf_counter() - start, shapes, notes)


def dp_values(most: int, need: int | None, options: SearchOptions) -> list[int]:
    """The replica counts the space holds for one shape, ascending (see the module docstring).

    Every count up to ``options.dense_dp``; above it, ``need - 4 .. need + 8`` around the smallest count that
    carries the load (None: unknown), a ladder rising by ``options.dp_step`` and ``most`` itself.

    >>> dp_values(8, None, SearchOptions())
    [1, 2, 3, 4, 5, 6, 7, 8]
    >>> len(dp_values(1024, 300, SearchOptions())) < 150
    True
    """
    values = set(range(1, min(options.dense_dp, most) + 1))
    x = float(options.dense_dp)
    while x < most:
        values.add(round(x))
        x = max(x * options.dp_step, x + 1)
    values.add(most)
    if need is not None:
        values.update(range(max(need - 4, 1), min(need + 8, most) + 1))
    return sorted(values)


def dp_need(top: ConfigEstimate | RoleEstimate | None, most: int, rate: float, headroom: float) -> int | None:
    """Replicas needed to carry ``rate`` within ``headroom``, from the capacity predicted at ``most`` replicas."""
    if top is None or top.capacity_rps <= 0:
        return None
    per_replica = top.capacity_rps / most
    return max(math.ceil(rate / (per_replica * (1.0 - headroom))), 1)


def _budgets(specs: Specs, gpu: GPUSpec, budgets: tuple[int | None, ...]) -> list[int | None]:
    """The budget menu without entries equal to the engine's own default (chunked, same budget)."""
    from ..perf.engine_rules import resolve_engine

    default = resolve_engine(specs.engine, Plan(gpu=gpu.name, engine=specs.engine.name), specs.model, gpu)
    seen: list[int | None] = []
    for b in budgets:
        if b is not None and default.chunked_prefill and b == default.max_num_batched_tokens:
            b = None
        if b not in seen:
            seen.append(b)
    return seen


def scale(x: float, unit: float, cap: int = 2**40) -> int:
    """``x / unit`` rounded to an int the solver can hold (inf and NaN become ``cap``)."""
    if x is None or not math.isfinite(x):
        return cap
    return int(min(max(round(x / unit), -cap), cap))


__all__ = ["Candidate", "PlanSpace", "SearchOptions", "build_space", "dp_need", "dp_values", "scale"]
