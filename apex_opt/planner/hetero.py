"""Mixed-GPU plans: which replica shape runs on which GPU kind of a heterogeneous cluster, chosen by CP-SAT.

A heterogeneous cluster (``h100x8-a100x8``: a node group per GPU kind) can serve one model with replicas of a
different shape on each kind: ``dp2 tp4`` on the H100s next to ``dp1 tp8`` on the A100s, say. The simulator's
router sends each replica a share of the traffic proportional to its weight (its decode throughput,
:func:`apex_opt.simulate.router_weight`), so every replica sees the same *load per unit of weight*
``phi = rate / W`` (``W`` the total weight of the deployment), and a replica of weight ``w`` receives
``phi * w`` requests/s. That makes the choice separable:

* per GPU kind, every shape (tp, pp <= 2, ep, dtypes; the engine's default limits) that fits the kind's memory
  and keeps its tensor-parallel groups inside one NVLink domain (a node, unless the cluster sets
  ``nvlink_domain``: the aggregated search's ``placement.tp`` rule, :func:`~apex_opt.planner.space.tp_placed`)
  is estimated by the cost model at each level of a grid of
  ``phi`` (:data:`LEVELS` levels, geometric), as one replica receiving ``phi * w`` requests/s;
* a CP-SAT model picks, per kind, one row (shape x replica count, or nothing) and one grid level: the total
  weight carries the rate at that level (``W >= rate / phi``, so the real load is at most the level's), each
  used kind's replicas meet the TTFT and TPOT bounds at that level, the capacities add up to the rate with the
  headroom, and each kind's GPUs bound its replica count; the user's plan constraints hold for every kind the mix
  uses (:mod:`apex_opt.planner.table`);
* the objective is the problem's primary metric (GPUs, their price, capacity, energy, or the worst kind's TPOT or
  TTFT), then fewer GPUs.

Each proposal is a :class:`~apex_opt.schema.plan.Deployment` of one plan per used kind, verified by simulation
and ranked with the other plans. Single-kind plans on the first group come from the main search; this search
finds the mixes and the plans on the other kinds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ortools.sat.python import cp_model

from ..errors import SolverError, SpecError
from ..perf.replica import check_divisibility
from ..schema.plan import Deployment, Plan
from ..simulate import router_weight
from ..topology.graph import Topology
from ..units import format_time
from .constraints import Constraint
from .estimates import ConfigEstimate, Estimator, Menu, ShapeKey
from .explain import side_infeasible_message
from .model import SideLabels, solve_once
from .objectives import Objective
from .prediction import Prediction
from .space import (
    PlanSpace,
    _ep_choices,
    _powers_of_two,
    _tp_nodes,
    dp_values,
    group_cluster,
    kv_dtypes,
    tp_placed,
    weight_dtypes,
)
from .table import REPLICA_FIELDS, DeploymentVars, Table, add_constraints, lower, replica_fields, upper

LEVELS = 16
MAX_PP = 2


@dataclass(frozen=True)
class KindShape:
    """One replica shape on one GPU kind, with its router weight and its estimates at every load level."""

    gpu: str
    key: ShapeKey
    pp: int
    weight: float  # router weight (decode tokens/s at full batch)
    capacity_rps: float  # one replica's sustainable rate within the TPOT SLO
    levels: tuple[ConfigEstimate, ...]  # one replica at phi_r * weight requests/s, r = 0 .. LEVELS-1

    def plan(self, engine: str, dp: int, seqs: int) -> Plan:
        extra: dict[str, int | tuple[int, ...]] = {"dp": dp, "pp": self.pp, "max_num_seqs": seqs}
        if self.pp > 1:
            extra["layers_per_stage"] = tuple(self.levels[-1].split)
        return self.key.plan(self.gpu, engine, **extra)


@dataclass
class KindTable:
    """Every shape of one node group, and the group's size."""

    gpu: str
    gpus: int
    gpus_per_node: int
    shapes: list[KindShape]
    domain_gpus: int  # GPUs per NVLink domain (a node, unless the cluster sets nvlink_domain)


@dataclass
class HeteroSpace:
    kinds: list[KindTable]
    phis: tuple[float, ...]
    build_time_s: float


def build_hetero_space(space: PlanSpace) -> HeteroSpace:
    """Estimate every shape of every GPU kind of ``space``'s (heterogeneous) cluster at every load level."""
    start = time.perf_counter()
    specs, opts = space.specs, space.options
    menu = Menu(specs.engine.scheduler.max_num_seqs, None)
    raw: list[tuple[int, ShapeKey, int, float, float, Estimator]] = []
    tables = []
    for gi, group in enumerate(specs.cluster.nodes):
        gpu = specs.gpus[group.gpu]
        sub = group_cluster(specs.cluster, gi)
        domain = specs.cluster.domain_gpus(group)  # tp may cross nodes inside one NVLink domain (GB200 NVL72)
        topology = Topology.build(sub, specs.gpus)
        est = Estimator(specs.model, gpu, specs.engine, topology, space.stats, specs.slo,
                        slo_slack=opts.slo_slack, headroom=opts.headroom, max_pp=MAX_PP)
        total = group.count * group.gpus_per_node
        tables.append(KindTable(gpu.name, total, group.gpus_per_node, [], domain))
        try:
            wds = weight_dtypes(opts, gpu, specs.model)
        except SpecError:  # --quantization fp8 on a kind without fp8 tensor cores: that kind runs bf16 only
            wds = ("bf16",)
        for wd in wds:
            for kd in kv_dtypes(opts):
                for tp in _powers_of_two(total if opts.tp_across_nodes else min(total, domain)):
                    for ep, moe_tp, _wide in _ep_choices(specs, tp):
                        key = ShapeKey(tp, ep, moe_tp, wd, kd)
                        try:
                            check_divisibility(specs.model, key.plan(gpu.name, specs.engine.name))
                        except SpecError:
                            continue
                        for pp in _powers_of_two(min(MAX_PP, specs.model.num_layers, total // tp)):
                            if not tp_placed(tp, pp, 1, domain, opts):  # the aggregated search's placement.tp
                                continue
                            sc = est.shape(key)
                            replica = sc.r1 if pp == 1 else sc.r2
                            if replica is None:
                                continue
                            probe = est.estimate(key, menu, pp, 1, lam=1e-6)
                            if not probe.fits:
                                continue
                            cap = probe.capacity_rps
                            if cap <= 0:
                                continue
                            raw.append((gi, key, pp, router_weight(replica), cap, est))
    if not raw:
        return HeteroSpace(tables, (), time.perf_counter() - start)
    # the load grid: from a tenth of the lightest shape's saturation load to the heaviest's, geometric
    sat = [cap / w for _, _, _, w, cap, _ in raw]
    lo, hi = min(sat) / 10.0, max(sat)
    phis = tuple(lo * (hi / lo) ** (r / (LEVELS - 1)) for r in range(LEVELS))
    for gi, key, pp, w, cap, est in raw:
        levels = tuple(est.estimate(key, menu, pp, 1, lam=phi * w) for phi in phis)
        tables[gi].shapes.append(KindShape(tables[gi].gpu, key, pp, w, cap, levels))
    return HeteroSpace(tables, phis, time.perf_counter() - start)


@dataclass(frozen=True)
class Mix:
    """A chosen deployment: per kind, ``(shape, dp)`` or None; and the load level it was priced at."""

    parts: tuple[tuple[KindShape, int] | None, ...]
    level: int


class HeteroModel:
    """CP-SAT over one row per GPU kind and a load level (see the module docstring).

    ``constraints`` are the user's plan constraints: each holds for every kind's plan the mix uses
    (:mod:`apex_opt.planner.table`).
    """

    def __init__(self, space: PlanSpace, hspace: HeteroSpace, objective: Objective, *,
                 constraints: Sequence[Constraint] = (), seed: int = 0, time_limit: float | None = None,
                 explain: bool = False) -> None:
        if not any(k.shapes for k in hspace.kinds):
            raise SolverError("no GPU kind of the cluster holds a replica of the model")
        self.space, self.hspace, self.objective = space, hspace, objective
        self.constraints = tuple(constraints)
        self.seed, self.time_limit = seed, time_limit
        m = self.model = cp_model.CpModel()
        self.labels = SideLabels(m, explain=explain, seed=seed, time_limit=time_limit)
        add = self.labels.add
        R = len(hspace.phis)
        opts, slo, rate = space.options, space.specs.slo, space.stats.rate
        self.level = m.new_int_var(0, R - 1, "level")
        need_w = [math.ceil(rate / phi * 1000) for phi in hspace.phis]  # weight in milli-units
        w_need = m.new_int_var(min(need_w), max(need_w), "weight_needed")
        m.add_element(self.level, need_w, w_need)
        self.rows: list[list[tuple[int, int] | None]] = []  # per kind: (shape index, dp) or None
        self.index: list[cp_model.IntVar] = []
        self.tables: list[Table] = []
        weights, caps, gpus, prices, idles = [], [], [], [], []
        tpots: list[cp_model.IntVar] = []
        ttfts: list[cp_model.IntVar] = []
        means: list[cp_model.IntVar] = []
        ns = 1e9
        for k, kind in enumerate(hspace.kinds):
            rows: list[tuple[int, int] | None] = [None]
            for s, shape in enumerate(kind.shapes):
                per = shape.key.tp * shape.pp
                for dp in dp_values(kind.gpus // per, None, opts):
                    if tp_placed(shape.key.tp, shape.pp, dp, kind.domain_gpus, opts):
                        rows.append((s, dp))
            self.rows.append(rows)
            table = Table(m, f"row_{kind.gpu}", rows, _kind_fields(kind, space))
            self.tables.append(table)
            idx = table.index
            self.index.append(idx)

            sh = kind.shapes
            weights.append(table.column_of("weight", [0 if r is None else round(
                r[1] * sh[r[0]].weight * 1000) for r in rows]))
            caps.append(table.column_of("capacity", [0 if r is None else round(
                r[1] * sh[r[0]].capacity_rps * 1e6) for r in rows]))
            gpus.append(table.column("gpus"))
            gpu_spec = space.specs.gpus[kind.gpu]
            prices.append(gpu_spec.price_per_hour)
            idles.append(gpu_spec.power.idle)
            # per (row, level): the replica's TPOT and long-prompt TTFT at that load (0 for "nothing here")
            flat_tpot, flat_ttft, flat_mean, flat_fit = [], [], [], []
            for r in rows:
                for lv in range(R):
                    e = None if r is None else kind.shapes[r[0]].levels[lv]
                    flat_tpot.append(0 if e is None else _int(e.tpot_s * ns))
                    flat_ttft.append(0 if e is None else _int(e.ttft_tail_s * ns))
                    flat_mean.append(0 if e is None else _int(e.ttft_s * ns))
                    flat_fit.append(1 if e is None or (e.fits and e.stable) else 0)
            at = m.new_int_var(0, len(rows) * R - 1, f"row_level_{kind.gpu}")
            m.add(at == idx * R + self.level)
            for name, flat, out in (("tpot", flat_tpot, tpots), ("ttft", flat_ttft, ttfts),
                                    ("ttft_mean", flat_mean, means)):
                var = m.new_int_var(min(flat), max(flat), f"{name}_{kind.gpu}")
                m.add_element(at, flat, var)
                out.append(var)
            fit = m.new_int_var(0, 1, f"fits_{kind.gpu}")
            m.add_element(at, flat_fit, fit)
            add(f"fits.{kind.gpu}", fit == 1,
                f"replicas on {kind.gpu} fit memory and keep up with their share of the load")
            if slo.tpot is not None:
                add("slo.tpot", tpots[-1] <= int(slo.tpot * opts.slo_slack * ns),
                    f"every used kind's TPOT <= {format_time(slo.tpot * opts.slo_slack)}")
            if slo.ttft is not None:
                add("slo.ttft", ttfts[-1] <= int(slo.ttft * opts.slo_slack * ns),
                    f"every used kind's TTFT of the long prompt <= {format_time(slo.ttft * opts.slo_slack)}")
        add("load", sum(weights) >= w_need, "the replicas' router weight takes the arrival rate at a load level "
            "each used kind's estimates were priced at")
        add("capacity", sum(caps) >= math.ceil(rate * (1 + opts.headroom) * 1e6),
            f"the replicas of all kinds carry {rate:.3g} req/s with {opts.headroom:.0%} headroom")
        self.gpus = sum(gpus)
        if opts.use_all_gpus:
            total = sum(k.gpus for k in hspace.kinds)
            add("gpus", self.gpus == total, f"use every GPU of the cluster ({total}: every GPU was asked for)")
        self._gpus_k, self._caps, self._tpots, self._ttfts = gpus, caps, tpots, ttfts
        self._prices = [round(p * 100) for p in prices]  # cents per GPU-hour
        self._idles = [round(w) for w in idles]
        self._add_user_constraints(means, prices)
        self._objective()

    def _add_user_constraints(self, means: list[cp_model.IntVar], prices: list[float]) -> None:
        """The user's plan constraints, on every kind's plan the mix uses, with the mix's predictions (the worst
        used kind's TTFT and TPOT at the chosen load level; :mod:`apex_opt.planner.table`)."""
        if not self.constraints:
            return
        m, space, st = self.model, self.space, self.space.stats
        tok_rate = st.rate * st.mean_output

        def worst(name: str, parts: list[cp_model.IntVar]) -> cp_model.IntVar:
            out = m.new_int_var(0, max(upper(p) for p in parts), name)
            m.add_max_equality(out, parts)
            return out

        def total(name: str, parts: list[Any]) -> cp_model.IntVar:
            out = m.new_int_var(sum(lower(p) for p in parts), sum(upper(p) for p in parts), name)
            m.add(out == sum(parts))
            return out

        def cost(k: int, table: Table) -> cp_model.IntVar:  # milli-USD per million output tokens on kind k
            return table.column_of("cost", [0 if r is None else _int(
                r[1] * self.hspace.kinds[k].shapes[r[0]].key.tp * self.hspace.kinds[k].shapes[r[0]].pp
                * prices[k] / 3600.0 / tok_rate * 1e9) for r in self.rows[k]])

        deployment: dict[str, Any] = {
            "gpus": lambda: total("gpus_all", self._gpus_k),
            "ttft_ns": lambda: worst("ttft_ns", means),
            "ttft_tail_ns": lambda: worst("ttft_tail_ns", self._ttfts),
            "tpot_ns": lambda: worst("tpot_ns", self._tpots),
            "capacity": lambda: total("capacity", self._caps),
            "throughput": lambda: total("throughput", [table.column_of("tokens", [0 if r is None else _int(
                r[1] * self.hspace.kinds[k].shapes[r[0]].capacity_rps * st.mean_output * 1e3)
                for r in self.rows[k]]) for k, table in enumerate(self.tables)]),
            "cost_per_mtok": lambda: total("cost_per_mtok", [cost(k, t) for k, t in enumerate(self.tables)]),
        }
        views = [DeploymentVars(table, deployment, space=space, what="mixed-GPU", max_pp=MAX_PP)
                 for table in self.tables]
        add_constraints(self.labels, self.constraints, views, space)

    def _objective(self) -> None:
        m = self.model
        metric = self.objective.levels[0][0]
        width = 2 * sum(k.gpus for k in self.hspace.kinds) + 1
        if metric == "cost_per_mtok_usd":
            primary = sum(p * g for p, g in zip(self._prices, self._gpus_k))
        elif metric == "energy_per_output_token_j":
            primary = sum(w * g for w, g in zip(self._idles, self._gpus_k))  # the idle draw dominates at SLO loads
        elif metric == "throughput_output_tok_s":
            primary = -sum(self._caps)
        elif metric in ("tpot_mean_s", "ttft_mean_s"):
            worst = m.new_int_var(0, 2**50, f"worst_{metric}")
            m.add_max_equality(worst, self._tpots if metric == "tpot_mean_s" else self._ttfts)
            primary = worst
        else:  # goodput per GPU, GPUs: every plan here meets the SLO bounds at the rate, so fewer GPUs win
            m.minimize(self.gpus)
            return
        m.minimize(primary * width + self.gpus)

    def limit_gpus(self, most: int) -> None:
        """Propose no plan with more than ``most`` GPUs from now on (one that could not place among the best)."""
        self.model.add(self.gpus <= most)

    def next(self) -> Mix | None:
        """The best mix not proposed before (None when none is left); the same choice is cut from later solves."""
        solver = solve_once(self.model, seed=self.seed, time_limit=self.time_limit, what="mixed-GPU plan")
        if solver is None:
            return None
        chosen = [int(solver.value(i)) for i in self.index]
        self.model.add_forbidden_assignments(self.index, [tuple(chosen)])
        parts = []
        for k, c in enumerate(chosen):
            r = self.rows[k][c]
            parts.append(None if r is None else (self.hspace.kinds[k].shapes[r[0]], r[1]))
        return Mix(tuple(parts), int(solver.value(self.level)))

    def _describe(self, solver: cp_model.CpSolver) -> str | None:
        rows = [self.rows[k][int(solver.value(i))] for k, i in enumerate(self.index)]
        parts = [None if r is None else (self.hspace.kinds[k].shapes[r[0]], r[1]) for k, r in enumerate(rows)]
        used = [p for p in parts if p]
        if not used:
            return None
        gpus = sum(dp * shape.key.tp * shape.pp for shape, dp in used)
        mix = Mix(tuple(parts), int(solver.value(self.level)))
        return f"{deployment(self.space, mix).label}: {gpus} GPUs"

    def explain(self) -> tuple[str, tuple[str, ...]]:
        """Why no mix exists: a minimal set of labelled constraints in conflict and, for each, the mix the search
        would choose without it (as :meth:`apex_opt.planner.disagg.DisaggModel.explain`)."""
        probe = self if self.labels.explain else HeteroModel(self.space, self.hspace, self.objective,
                                                             constraints=self.constraints, seed=self.seed,
                                                             time_limit=self.time_limit, explain=True)
        what = "mixed-GPU plan"
        labels = probe.labels.conflict(what, drop_first=("capacity", "load", "slo"),
                                     keep_last=("fits", "gpus"))
        if not labels:
            return "", ()
        fits = probe.labels.relaxations(labels, what, probe._describe)
        return side_infeasible_message("mixed-GPU plan", [(n, probe.labels.text[n]) for n in labels], fits), \
            tuple(labels)


def _kind_fields(kind: KindTable, space: PlanSpace) -> dict[str, Callable[[tuple[int, int]], int]]:
    """The columns of one kind's table (rows: shape index and replica count): the replica's decisions, its GPUs
    and its layer split, in the plan tables' vocabulary (:func:`~apex_opt.planner.table.replica_fields`)."""
    seqs = space.specs.engine.scheduler.max_num_seqs
    L = space.specs.model.num_layers

    def decisions(r: tuple[int, int]) -> dict[str, int]:
        shape = kind.shapes[r[0]]
        return replica_fields(shape.key, pp=shape.pp, dp=r[1], max_num_seqs=seqs, budget=None,
                              tp_nodes=_tp_nodes(shape.key.tp, shape.pp, r[1], kind.domain_gpus))

    def field(name: str) -> Callable[[tuple[int, int]], int]:
        return lambda r: decisions(r)[name]

    def layers(i: int) -> Callable[[tuple[int, int]], int]:
        def on(r: tuple[int, int]) -> int:
            shape = kind.shapes[r[0]]
            split = list(shape.levels[-1].split) if shape.pp > 1 else [L]
            return split[i] if i < len(split) else 0
        return on

    fields = {name: field(name) for name in REPLICA_FIELDS}
    fields["gpus"] = lambda r: r[1] * kind.shapes[r[0]].key.tp * kind.shapes[r[0]].pp
    fields.update({f"layers{i}": layers(i) for i in range(MAX_PP)})
    return fields


def _int(x: float) -> int:
    return int(min(round(x), 2**50)) if math.isfinite(x) else 2**50


def deployment(space: PlanSpace, mix: Mix) -> Deployment:
    seqs = space.specs.engine.scheduler.max_num_seqs
    plans = [shape.plan(space.specs.engine.name, dp, seqs) for part in mix.parts if part for shape, dp in [part]]
    return Deployment(plans=tuple(plans))


def predicted(space: PlanSpace, hspace: HeteroSpace, mix: Mix) -> Prediction:
    """The mix's predictions (as an aggregated plan's, with the traffic shares by router weight)."""
    st = space.stats
    used = [p for p in mix.parts if p]
    total_w = sum(shape.weight * dp for shape, dp in used)
    phi = st.rate / total_w
    gpus = sum(dp * shape.key.tp * shape.pp for shape, dp in used)
    capacity = sum(dp * shape.capacity_rps for shape, dp in used)
    share = {id(s): s.weight * dp / total_w for s, dp in used}
    # each replica at the actual load phi * w, priced at the nearest grid level at or above it
    level = next((r for r, p in enumerate(hspace.phis) if p >= phi), len(hspace.phis) - 1)
    ests = {id(s): s.levels[level] for s, _ in used}

    def mean(attr: str) -> float:
        return sum(share[id(s)] * getattr(ests[id(s)], attr) for s, _ in used)

    attainment = mean("attainment")
    goodput = min(st.rate, capacity) * attainment
    tok_rate = st.rate * st.mean_output
    idle = sum(dp * s.key.tp * s.pp * space.specs.gpus[s.gpu].power.idle for s, dp in used) / tok_rate
    # a level's estimate counts one replica's idle draw against the whole workload; the rest is dynamic energy
    dynamic = sum(share[id(s)] * (ests[id(s)].energy_per_token_j
                                  - s.key.tp * s.pp * space.specs.gpus[s.gpu].power.idle / tok_rate)
                  for s, _ in used)
    price = sum(dp * s.key.tp * s.pp * space.specs.gpus[s.gpu].price_per_hour for s, dp in used)
    return Prediction(
        fits=True,
        gpus=gpus,
        ttft_mean_s=mean("ttft_s"),
        ttft_tail_s=max(ests[id(s)].ttft_tail_s for s, _ in used),
        tpot_mean_s=mean("tpot_s"),
        slo_attainment=attainment,
        goodput_req_s=goodput,
        goodput_per_gpu_req_s=goodput / gpus,
        capacity_req_s=capacity,
        throughput_output_tok_s=capacity * st.mean_output,
        energy_per_output_token_j=idle + max(dynamic, 0.0),
        cost_per_mtok_usd=price / 3600.0 / tok_rate * 1e6,
        traffic_shares={f"{s.gpu}": round(share[id(s)], 4) for s, _ in used},
    )


__all__ = ["HeteroModel", "HeteroSpace", "KindShape", "KindTable", "Mix", "build_hetero_space", "deployment",
           "predicted"]
