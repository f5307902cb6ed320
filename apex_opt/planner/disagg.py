"""Disaggregated plans: how many prefill and decode replicas (xPyD), of which shapes, chosen by CP-SAT.

A disaggregated deployment is a pair: ``x`` prefill replicas of one shape and ``y`` decode replicas of another
(each with its own tp / pp / ep and engine limits), the KV cache of every request moved from the first to the
second over the cluster's links. The cost model prices each role on its own
(:meth:`~apex_opt.planner.estimates.Estimator.estimate_role`): a prefill replica serves prompts only, so its
TTFT has no decode interference; a decode replica never prefills, so its TPOT has none either, plus the KV
transfer spread over the output.

The role tables (:class:`RoleRow`, every shape x engine limits x replica count that fits memory, splits its
heads evenly and keeps its tensor-parallel groups inside a node) are two index variables of one CP-SAT model
(:class:`DisaggModel`), with labelled constraints: ``gpus`` (both roles together within the cluster),
``slo.ttft`` (prefill), ``slo.tpot`` (decode), ``capacity.prefill`` and ``capacity.decode`` (each role carries
the arrival rate with the headroom), ``formats`` (one weight and KV format on both sides). (Candidates that fail memory, divisibility or placement are not in the tables at all: a disaggregated
search that finds nothing is not an error, the aggregated plans stand.) The objective is
the problem's primary metric for the pair (goodput per GPU is the product of both roles' attainments over the
GPUs of both), then fewer GPUs. Each proposal is simulated as a :class:`~apex_opt.schema.plan.Deployment` by
the disaggregated simulator and ranked with the aggregated plans on the simulated metrics: the planner thereby
chooses aggregated or disaggregated, and the ratio.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from ortools.sat.python import cp_model

from ..errors import SolverError, SpecError
from ..perf.kv_transfer import kv_transfer_cost
from ..perf.replica import check_divisibility
from ..schema.plan import Deployment, Plan
from .estimates import Menu, RoleEstimate, ShapeKey
from .model import solve_once
from .objectives import Objective
from .space import (
    DTYPE_BITS,
    PlanSpace,
    _budgets,
    _ep_choices,
    _powers_of_two,
    _tp_nodes,
    dp_need,
    dp_values,
    kv_dtypes,
    weight_dtypes,
)

ROLES = ("prefill", "decode")
DISAGGREGATION = ("off", "auto", "only")
#: pipeline depths searched for a role (a role replica is a serving instance; deep pipelines only add latency)
MAX_ROLE_PP = 2


@dataclass(frozen=True)
class RoleRow:
    """``dp`` replicas of one shape serving one role."""

    role: str
    key: ShapeKey
    menu: Menu
    pp: int
    dp: int
    est: RoleEstimate

    def plan(self, gpu: str, engine: str) -> Plan:
        extra = dict(self.menu.plan_fields(), dp=self.dp, pp=self.pp, role=self.role)
        if self.pp > 1:
            extra["layers_per_stage"] = tuple(self.est.split)
        return self.key.plan(gpu, engine, **extra)


@dataclass
class DisaggSpace:
    """Both role tables of a problem."""

    prefill: list[RoleRow]
    decode: list[RoleRow]
    build_time_s: float


def _menus(space: PlanSpace, role: str) -> list[Menu]:
    opts = space.options
    if role == "prefill":  # the chunk budget shapes a prefill; a prefill-only batch never nears max_num_seqs
        seqs = space.specs.engine.scheduler.max_num_seqs
        return [Menu(seqs, b) for b in _budgets(space.specs, space.estimator.gpu, opts.budgets)]
    return [Menu(n, None) for n in sorted(set(opts.max_num_seqs))]


def build_disagg_space(space: PlanSpace) -> DisaggSpace:
    """Estimate every role replica set that could take part in a disaggregated plan of ``space``'s problem."""
    start = time.perf_counter()
    specs, opts, est = space.specs, space.options, space.estimator
    total, gpn = space.total_gpus, space.domain_gpus  # tp groups stay inside one NVLink domain
    L = specs.model.num_layers
    rate = space.stats.rate
    tables: dict[str, list[RoleRow]] = {r: [] for r in ROLES}
    for wd in weight_dtypes(opts, est.gpu, specs.model):
        for kd in kv_dtypes(opts):
            for tp in _powers_of_two(total // 2):
                for ep, moe_tp, _wide in _ep_choices(specs, tp):
                    key = ShapeKey(tp, ep, moe_tp, wd, kd)
                    try:
                        check_divisibility(specs.model, key.plan(est.gpu.name, specs.engine.name))
                    except SpecError:
                        continue
                    for pp in _powers_of_two(min(MAX_ROLE_PP, opts.max_pp, L, total // (2 * tp))):
                        if not opts.tp_across_nodes and _tp_nodes(tp, pp, 1, gpn) > 1:
                            continue
                        transfer = _transfer_s(space, key, pp)
                        for role in ROLES:
                            for menu in _menus(space, role):
                                most = (total - tp * pp) // (tp * pp)  # the other role needs GPUs too
                                if most < 1:
                                    continue
                                top = est.estimate_role(role, key, menu, pp, most, transfer)
                                if not top.fits:
                                    continue
                                for dp in dp_values(most, dp_need(top, most, rate, opts.headroom), opts):
                                    if not opts.tp_across_nodes and _tp_nodes(tp, pp, dp, gpn) > 1:
                                        continue
                                    e = top if dp == most else est.estimate_role(role, key, menu, pp, dp, transfer)
                                    tables[role].append(RoleRow(role, key, menu, pp, dp, e))
    return DisaggSpace(tables["prefill"], tables["decode"], time.perf_counter() - start)


def _transfer_s(space: PlanSpace, key: ShapeKey, pp: int) -> float:
    """Seconds to move a mean prompt's KV cache between two replicas of this shape, on different nodes if any."""
    specs = space.specs
    gpu = space.estimator.gpu
    size = key.tp * pp
    if 2 * size > space.total_gpus:
        return 0.0
    prefill = key.plan(gpu.name, specs.engine.name, pp=pp, role="prefill")
    decode = key.plan(gpu.name, specs.engine.name, pp=pp, role="decode")
    offset = max(space.gpus_per_node, size) if space.total_gpus >= space.gpus_per_node + size else size
    cost = kv_transfer_cost(specs.model, gpu, prefill, 0, decode, offset, space.topology)
    return cost.time(max(round(space.stats.mean_prompt), 1))


class DisaggModel:
    """CP-SAT over (prefill row, decode row) pairs; :meth:`next` yields pairs best first (see the module docstring)."""

    def __init__(self, space: PlanSpace, dspace: DisaggSpace, objective: Objective, *, seed: int = 0,
                 time_limit: float | None = None) -> None:
        if not dspace.prefill or not dspace.decode:
            raise SolverError("no disaggregated plan: a role has no replica shape that fits")
        self.space, self.dspace, self.objective = space, dspace, objective
        self.seed, self.time_limit = seed, time_limit
        m = self.model = cp_model.CpModel()
        P, D = dspace.prefill, dspace.decode
        self.ip = m.new_int_var(0, len(P) - 1, "prefill")
        self.id = m.new_int_var(0, len(D) - 1, "decode")
        opts, slo, rate = space.options, space.specs.slo, space.stats.rate

        def col(name: str, rows: list[RoleRow], index: cp_model.IntVar,
                fn: Callable[..., float]) -> cp_model.IntVar:  # fn(row); some bind a loop variable by default
            values = [int(fn(r)) for r in rows]
            var = m.new_int_var(min(values), max(values), name)
            m.add_element(index, values, var)
            return var

        gp = col("gpus_p", P, self.ip, lambda r: r.est.gpus)
        gd = col("gpus_d", D, self.id, lambda r: r.est.gpus)
        self.gpus = m.new_int_var(2, 2 * space.total_gpus, "gpus")
        m.add(self.gpus == gp + gd)
        if opts.use_all_gpus:
            m.add(self.gpus == space.total_gpus)
        else:
            m.add(self.gpus <= space.total_gpus)
        for name, bits in (("weight", "weight_dtype"), ("kv", "kv_dtype")):
            a = col(f"{name}_bits_p", P, self.ip, lambda r, b=bits: DTYPE_BITS[getattr(r.key, b)])
            b_ = col(f"{name}_bits_d", D, self.id, lambda r, b=bits: DTYPE_BITS[getattr(r.key, b)])
            m.add(a == b_)
        ns = 1e9
        self.ttft = col("ttft_ns", P, self.ip, lambda r: _int(r.est.ttft_s * ns))
        tail = col("ttft_tail_ns", P, self.ip, lambda r: _int(r.est.ttft_tail_s * ns))
        self.tpot = col("tpot_ns", D, self.id, lambda r: _int(r.est.tpot_s * ns))
        if slo.ttft is not None:
            m.add(tail <= int(slo.ttft * opts.slo_slack * ns))
        if slo.tpot is not None:
            m.add(self.tpot <= int(slo.tpot * opts.slo_slack * ns))
        need = math.ceil(rate * (1 + opts.headroom) * 1e6)
        self.cap_p = col("capacity_p", P, self.ip, lambda r: _int(r.est.capacity_rps * 1e6))
        self.cap_d = col("capacity_d", D, self.id, lambda r: _int(r.est.capacity_rps * 1e6))
        m.add(self.cap_p >= need)
        m.add(self.cap_d >= need)
        att_p = col("attainment_p", P, self.ip, lambda r: round(r.est.attainment * 1000))
        att_d = col("attainment_d", D, self.id, lambda r: round(r.est.attainment * 1000))
        self.att = m.new_int_var(0, 10**6, "attainment_ppm")
        m.add_multiplication_equality(self.att, [att_p, att_d])
        e_p = col("energy_p", P, self.ip, lambda r: _int(r.est.energy_per_token_j * 1e6))
        e_d = col("energy_d", D, self.id, lambda r: _int(r.est.energy_per_token_j * 1e6))
        self.energy = e_p + e_d
        self.cuts = 0
        self._objective()

    def _objective(self) -> None:
        m = self.model
        metric = self.objective.levels[0][0]
        assert metric is not None  # a function objective is refused before this search (_single_plan_rules)
        width = 2 * self.space.total_gpus + 1
        if metric in ("gpus", "cost_per_mtok"):
            m.minimize(self.gpus)
            return
        if metric == "goodput_per_gpu":
            q = m.new_int_var(0, 10**9, "goodput_per_gpu")
            num = m.new_int_var(0, 10**9, "attainment_x1000")
            m.add(num == 1000 * self.att)
            m.add_division_equality(q, num, self.gpus)
            m.minimize(-q * width + self.gpus)
            return
        if metric == "throughput":
            low = m.new_int_var(0, 2**50, "capacity")
            m.add_min_equality(low, [self.cap_p, self.cap_d])
            m.minimize(-low * width + self.gpus)
            return
        term = {"energy_per_token": self.energy, "tpot": self.tpot, "ttft": self.ttft}[metric]
        m.minimize(term * width + self.gpus)

    def next(self) -> tuple[RoleRow, RoleRow] | None:
        """The best pair not proposed before (None when none is left); its layouts are cut from later solves."""
        solver = solve_once(self.model, seed=self.seed, time_limit=self.time_limit, what="disaggregated plan")
        if solver is None:
            return None
        p = self.dspace.prefill[int(solver.value(self.ip))]
        d = self.dspace.decode[int(solver.value(self.id))]
        same_p = [i for i, r in enumerate(self.dspace.prefill) if _layout(r) == _layout(p)]
        same_d = [i for i, r in enumerate(self.dspace.decode) if _layout(r) == _layout(d)]
        self.model.add_forbidden_assignments([self.ip, self.id], [(a, b) for a in same_p for b in same_d])
        self.cuts += 1
        return p, d


def _layout(r: RoleRow) -> tuple:
    return (r.key, r.pp, r.dp)


def _int(x: float) -> int:
    return int(min(round(x), 2**50)) if math.isfinite(x) else 2**50


def deployment(space: PlanSpace, p: RoleRow, d: RoleRow) -> Deployment:
    gpu, engine = space.gpu_name, space.specs.engine.name
    return Deployment(plans=(p.plan(gpu, engine), d.plan(gpu, engine)))


def predicted(space: PlanSpace, p: RoleRow, d: RoleRow) -> dict:
    """The pair's predictions, in the keys of an aggregated plan's (``RankedPlan.predicted``)."""
    st = space.stats
    gpus = p.est.gpus + d.est.gpus
    capacity = min(p.est.capacity_rps, d.est.capacity_rps)
    attainment = p.est.attainment * d.est.attainment
    goodput = min(st.rate, capacity) * attainment
    tok_rate = st.rate * st.mean_output
    return {
        "ttft_mean_s": p.est.ttft_s,
        "ttft_tail_s": p.est.ttft_tail_s,
        "tpot_mean_s": d.est.tpot_s,
        "attainment": attainment,
        "goodput_req_s": goodput,
        "goodput_per_gpu_req_s": goodput / gpus,
        "capacity_req_s": capacity,
        "throughput_output_tok_s": capacity * st.mean_output,
        "energy_per_output_token_j": p.est.energy_per_token_j + d.est.energy_per_token_j,
        "cost_per_mtok_usd": gpus * space.estimator.gpu.price_per_hour / 3600.0 / tok_rate * 1e6,
        "batch": d.est.batch,
        "kv_tokens": d.est.kv_tokens,
        "kv_needed": d.est.kv_needed,
        "fits": True,
        "gpus": gpus,
        "prefill_utilisation": p.est.batch,
    }


__all__ = ["DISAGGREGATION", "DisaggModel", "DisaggSpace", "RoleRow", "build_disagg_space", "deployment",
           "predicted"]
