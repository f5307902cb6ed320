"""One replica of a plan, placed on the cluster: its stage layouts, engine settings, memory and cost model.

Placement fills GPUs in order: replica ``r``, stage ``s``, TP rank ``t`` sit on GPU
``offset + (r * pp + s) * tp + t``, so a TP group stays inside one NVLink domain whenever ``tp`` divides the GPUs
per node, and stages go to the next GPUs (the next node once a node is full).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SpecError
from ..ir.parallel import StageLayout, stage_layouts
from ..schema.cluster import ClusterSpec
from ..schema.engine import EngineSpec
from ..schema.gpu import GPUSpec
from ..schema.model import ModelSpec
from ..schema.plan import Plan
from ..topology.graph import GroupLink, Topology
from .engine_rules import EngineSettings, resolve_engine
from .memory import PlanMemory, plan_memory
from .step import PlanReplicaCost, StageCost


@dataclass(frozen=True)
class Replica:
    """Everything the simulator and the planner need to know about one replica of a plan."""

    plan: Plan
    model: ModelSpec
    gpu: GPUSpec
    settings: EngineSettings
    layouts: tuple[StageLayout, ...]
    memory: PlanMemory
    cost: PlanReplicaCost
    links: dict[str, GroupLink]

    @property
    def kv_tokens(self) -> int:
        return self.memory.kv_tokens


def check_divisibility(model: ModelSpec, plan: Plan) -> None:
    """Raise :class:`SpecError` naming the field when a plan cannot shard the model."""
    if model.num_heads % plan.tp:
        raise SpecError(f"plan tp={plan.tp}: the model's {model.num_heads} attention heads are not divisible by tp; "
                        f"choose tp among {[d for d in (1, 2, 4, 8, 16, 32) if model.num_heads % d == 0]}")
    if not model.mla and plan.tp > model.num_kv_heads and plan.tp % model.num_kv_heads:
        raise SpecError(f"plan tp={plan.tp}: {model.num_kv_heads} KV heads cannot be replicated evenly over tp ranks")
    if model.intermediate_size % plan.tp:
        raise SpecError(f"plan tp={plan.tp}: intermediate_size {model.intermediate_size} is not divisible by tp")
    if plan.pp > model.num_layers:
        raise SpecError(f"plan pp={plan.pp}: the model has only {model.num_layers} layers")
    if plan.layers_per_stage is not None and sum(plan.layers_per_stage) != model.num_layers:
        split = ",".join(str(n) for n in plan.layers_per_stage)
        even = [model.num_layers // plan.pp + (1 if i < model.num_layers % plan.pp else 0) for i in range(plan.pp)]
        raise SpecError(f"{{layers_per_stage=}}{split[:80]} sums to {sum(plan.layers_per_stage)} layers, but "
                        f"{model.name} has {model.num_layers}; give pp={plan.pp} counts that add up to "
                        f"{model.num_layers}, e.g. {{layers_per_stage=}}{','.join(map(str, even))}, or leave it out",
                        option="layers_per_stage")
    if plan.ep > 1:
        if not model.moe:
            raise SpecError(f"plan ep={plan.ep}: {model.name} is a dense model; expert parallelism needs an MoE model")
        if model.moe.num_experts % plan.ep:
            raise SpecError(f"plan ep={plan.ep}: {model.moe.num_experts} experts are not divisible by ep")
        if model.moe.expert_intermediate_size % plan.expert_tp:
            raise SpecError(f"plan moe_tp={plan.expert_tp}: the expert width is not divisible by it")


def build_replica(
    model: ModelSpec,
    gpu: GPUSpec,
    plan: Plan,
    engine: EngineSpec,
    *,
    topology: Topology | None = None,
    offset: int = 0,
) -> Replica:
    """Place one replica of ``plan`` at GPU ``offset`` of ``topology`` and build its cost and memory models.

    Without a topology the replica sits on nodes of 8 GPUs of ``gpu`` over NVSwitch (1 node per 8 GPUs).
    """
    check_divisibility(model, plan)
    size = plan.gpus_per_replica * (plan.dp if plan.dp_attention else 1)
    if topology is None:
        per_node = min(8, max(size, 1))
        nodes = -(-size // per_node)
        topology = Topology.build(ClusterSpec.homogeneous(gpu.name, nodes, per_node), {gpu.name: gpu})
    if offset + size > topology.num_gpus:
        raise SpecError(f"plan {plan.label} needs {plan.gpus} GPUs at offset {offset}; the cluster has "
                        f"{topology.num_gpus}")
    tp_group = range(offset, offset + plan.tp)
    links = {"tp": topology.group_link(tp_group)}
    if plan.pp > 1:
        links["pp"] = topology.group_link([offset + plan.tp - 1, offset + plan.tp])
    if plan.ep > 1 or (plan.dp_attention and plan.dp > 1):  # the GPUs an MoE layer spans (dp-attention: all)
        span = plan.tp * (plan.dp if plan.dp_attention else 1)
        links["ep"] = topology.group_link(range(offset, offset + span))
    settings = resolve_engine(engine, plan, model, gpu, nodes_per_tp_group=links["tp"].nodes,
                              nvlink=links["tp"].fabric not in ("pcie", "network"))
    layouts = stage_layouts(model, plan, act_bytes=2.0)  # activations cross stages in 16 bits, fp8 math included
    memory = plan_memory(model, gpu, plan, settings, layouts)
    stages = tuple(StageCost(model, gpu, plan, layout, settings, links) for layout in layouts)
    return Replica(plan, model, gpu, settings, tuple(layouts), memory, PlanReplicaCost(stages), links)
