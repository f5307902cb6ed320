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
the arrival rate with the headroom), ``formats`` (one weight and KV format on both sides), and the user's plan
constraints, each on both roles (:mod:`apex_opt.planner.table`: ``v.tp`` is each side's, ``v.decode.tp`` the
decode side's, ``v.gpus`` the pair's). On a cluster of several
GPU kinds each role may run on any kind: every kind has its own rows, priced on its own GPU, and each row names
the *partner* kind the other role runs on (its KV transfer is priced over the link between the two); the model
then adds ``pairing`` (the rows' kinds and partners agree) and ``gpus.<kind>`` (both roles' GPUs on a kind within
its count) and, for ``min-cost``, prices the pair per kind. When no pair meets every label,
:meth:`DisaggModel.explain` names a minimal set of them in conflict and the pair the search would choose without
each. (Candidates that fail memory, divisibility or placement are not in the tables at all: a disaggregated
search that finds nothing is not an error, the aggregated plans stand.) The objective is
the problem's primary metric for the pair (goodput per GPU is the product of both roles' attainments over the
GPUs of both), then fewer GPUs. Each proposal is simulated as a :class:`~apex_opt.schema.plan.Deployment` by
the disaggregated simulator and ranked with the aggregated plans on the simulated metrics: the planner thereby
chooses aggregated or disaggregated, and the ratio.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ortools.sat.python import cp_model

from ..errors import SolverError, SpecError
from ..perf.kv_transfer import kv_transfer_cost
from ..perf.replica import check_divisibility
from ..schema.plan import Deployment, Plan
from ..topology.graph import Topology
from ..units import format_time
from .constraints import Constraint
from .estimates import Estimator, Menu, RoleEstimate, ShapeKey
from .explain import side_infeasible_message
from .model import SideLabels, solve_once
from .objectives import Objective
from .prediction import Prediction
from .space import (
    PlanSpace,
    _budgets,
    _ep_choices,
    _powers_of_two,
    dp_need,
    dp_values,
    group_cluster,
    kv_dtypes,
    tp_placed,
    weight_dtypes,
)
from .table import REPLICA_FIELDS, DeploymentVars, Table, add_constraints, lower, replica_fields, upper

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
    gpu: str  # the GPU kind this role runs on
    partner: str  # the GPU kind of the other role, whose link the KV transfer was priced over

    @cached_property
    def fields(self) -> dict[str, int]:
        """The row's decisions in the plan tables' vocabulary (:func:`~apex_opt.planner.table.replica_fields`)."""
        return replica_fields(self.key, pp=self.pp, dp=self.dp, max_num_seqs=self.menu.max_num_seqs,
                              budget=self.menu.budget)

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
    kinds: dict[str, int]  # GPUs of each kind the roles may use


@dataclass(frozen=True)
class _Kind:
    """The GPUs of one kind, as the role tables see them."""

    gpu: str
    base: int  # index of its first GPU in the cluster topology (where the simulator places its replicas)
    gpus: int
    domain_gpus: int
    estimator: Estimator
    weight_dtypes: tuple[str, ...]


def _kinds(space: PlanSpace) -> list[_Kind]:
    """The planned node group; on a mixed cluster, also every other GPU kind, priced on its own GPU."""
    specs, opts = space.specs, space.options
    first = _Kind(space.gpu_name, 0, space.total_gpus, space.domain_gpus, space.estimator,
                  weight_dtypes(opts, space.estimator.gpu, specs.model))
    kinds = [first]
    if not specs.cluster.is_heterogeneous:
        return kinds
    slots = space.topology.slots
    for gi, group in enumerate(specs.cluster.nodes):
        if any(k.gpu == group.gpu for k in kinds):
            continue
        gpu = specs.gpus[group.gpu]
        est = Estimator(specs.model, gpu, specs.engine, Topology.build(group_cluster(specs.cluster, gi), specs.gpus), space.stats, specs.slo,
                        slo_slack=opts.slo_slack, headroom=opts.headroom, max_pp=MAX_ROLE_PP)
        try:
            wds = weight_dtypes(opts, gpu, specs.model)
        except SpecError:  # a quantization this kind has no tensor cores for: it runs bf16 only (as in hetero.py)
            wds = ("bf16",)
        base = next(i for i, slot in enumerate(slots) if slot.kind == group.gpu)
        count = sum(g.count * g.gpus_per_node for g in specs.cluster.nodes if g.gpu == group.gpu)
        kinds.append(_Kind(gpu.name, base, count, specs.cluster.domain_gpus(group), est, wds))
    return kinds


def _menus(space: PlanSpace, role: str, kind: _Kind) -> list[Menu]:
    opts = space.options
    if role == "prefill":  # the chunk budget shapes a prefill; a prefill-only batch never nears max_num_seqs
        seqs = space.specs.engine.scheduler.max_num_seqs
        return [Menu(seqs, b) for b in _budgets(space.specs, kind.estimator.gpu, opts.budgets)]
    return [Menu(n, None) for n in sorted(set(opts.max_num_seqs))]


def build_disagg_space(space: PlanSpace) -> DisaggSpace:
    """Estimate every role replica set that could take part in a disaggregated plan of ``space``'s problem."""
    start = time.perf_counter()
    specs, opts = space.specs, space.options
    L = specs.model.num_layers
    rate = space.stats.rate
    kinds = _kinds(space)
    tables: dict[str, list[RoleRow]] = {r: [] for r in ROLES}
    for own in kinds:
        est, total, gpn = own.estimator, own.gpus, own.domain_gpus  # tp groups stay inside one NVLink domain
        for wd in own.weight_dtypes:
            for kd in kv_dtypes(opts):
                # a role alone on its kind may take all of it; beside the other role, at most half
                for tp in _powers_of_two(total if len(kinds) > 1 else total // 2):
                    for ep, moe_tp, _wide in _ep_choices(specs, tp):
                        key = ShapeKey(tp, ep, moe_tp, wd, kd)
                        try:
                            check_divisibility(specs.model, key.plan(est.gpu.name, specs.engine.name))
                        except SpecError:
                            continue
                        for pp in _powers_of_two(min(MAX_ROLE_PP, opts.max_pp, L, total // tp)):
                            if not tp_placed(tp, pp, 1, gpn, opts):
                                continue
                            size = tp * pp
                            for partner in kinds:
                                if partner is own and 2 * size > total:
                                    continue
                                for role in ROLES:
                                    src, dst = (own, partner) if role == "prefill" else (partner, own)
                                    transfer = _transfer_s(space, key, pp, src, dst)
                                    # the other role needs GPUs too when it runs on the same kind
                                    most = (total - size) // size if partner is own else total // size
                                    for menu in _menus(space, role, own):
                                        top = est.estimate_role(role, key, menu, pp, most, transfer)
                                        if not top.fits:
                                            continue
                                        for dp in dp_values(most, dp_need(top, most, rate, opts.headroom), opts):
                                            if not tp_placed(tp, pp, dp, gpn, opts):
                                                continue
                                            e = top if dp == most else est.estimate_role(role, key, menu, pp, dp,
                                                                                         transfer)
                                            tables[role].append(RoleRow(role, key, menu, pp, dp, e, own.gpu,
                                                                        partner.gpu))
    return DisaggSpace(tables["prefill"], tables["decode"], time.perf_counter() - start,
                       {k.gpu: k.gpus for k in kinds})


def _transfer_s(space: PlanSpace, key: ShapeKey, pp: int, src: _Kind, dst: _Kind) -> float:
    """Seconds to move a mean prompt's KV cache from a prefill replica of this shape on ``src`` to a decode
    replica on ``dst``: on different nodes of one kind if it has them, else over the link between the kinds."""
    specs = space.specs
    size = key.tp * pp
    if src is dst:
        if 2 * size > src.gpus:
            return 0.0
        gpn = next(g.gpus_per_node for g in specs.cluster.nodes if g.gpu == src.gpu)
        offset = src.base + (max(gpn, size) if src.gpus >= gpn + size else size)
    else:
        offset = dst.base
    prefill = key.plan(src.gpu, specs.engine.name, pp=pp, role="prefill")
    decode = key.plan(dst.gpu, specs.engine.name, pp=pp, role="decode")
    cost = kv_transfer_cost(specs.model, src.estimator.gpu, prefill, src.base, decode, offset, space.topology)
    return cost.time(max(round(space.stats.mean_prompt), 1))


class DisaggModel:
    """CP-SAT over (prefill row, decode row) pairs; :meth:`next` yields pairs best first (see the module docstring).

    ``constraints`` are the user's plan constraints: each holds for both roles (:mod:`apex_opt.planner.table`).
    """

    def __init__(self, space: PlanSpace, dspace: DisaggSpace, objective: Objective, *,
                 constraints: Sequence[Constraint] = (), seed: int = 0, time_limit: float | None = None,
                 explain: bool = False) -> None:
        if not dspace.prefill or not dspace.decode:
            raise SolverError("no disaggregated plan: a role has no replica shape that fits")
        self.space, self.dspace, self.objective = space, dspace, objective
        self.constraints = tuple(constraints)
        self.seed, self.time_limit = seed, time_limit
        m = self.model = cp_model.CpModel()
        self.labels = SideLabels(m, explain=explain, seed=seed, time_limit=time_limit)
        add = self.labels.add
        P, D = dspace.prefill, dspace.decode
        fields = _role_fields(space.specs.model.num_layers)
        self.prefill = Table(m, "prefill", P, fields)
        self.decode = Table(m, "decode", D, fields)
        self.ip, self.id = self.prefill.index, self.decode.index
        opts, slo, rate = space.options, space.specs.slo, space.stats.rate

        def col(name: str, rows: list[RoleRow], index: cp_model.IntVar,
                fn: Callable[..., float]) -> cp_model.IntVar:  # fn(row); some bind a loop variable by default
            table = self.prefill if index is self.ip else self.decode
            return table.column_of(name, [int(fn(r)) for r in rows])

        gp = self.prefill.column("gpus")
        gd = self.decode.column("gpus")
        self.all_gpus = sum(dspace.kinds.values())
        self.gpus = m.new_int_var(2, 2 * self.all_gpus, "gpus")
        m.add(self.gpus == gp + gd)
        if opts.use_all_gpus:
            add("gpus", self.gpus == self.all_gpus, f"both roles together use every GPU of the cluster "
                f"({self.all_gpus}: every GPU was asked for)")
        else:
            add("gpus", self.gpus <= self.all_gpus, f"both roles together within the cluster's {self.all_gpus} GPUs")
        self.price: cp_model.LinearExpr | None = None
        if len(dspace.kinds) > 1:
            # pairing: each row's transfer was priced towards one kind, and the other role must run there
            names = list(dspace.kinds)
            pairing = ("each role runs on the GPU kind the other's row was priced for (its KV transfer's link, and "
                       "the GPUs a row on a shared kind leaves to the other): " + " / ".join(names))
            add("pairing", col("partner_p", P, self.ip, lambda r: names.index(r.partner))
                == col("kind_d", D, self.id, lambda r: names.index(r.gpu)), pairing)
            add("pairing", col("partner_d", D, self.id, lambda r: names.index(r.partner))
                == col("kind_p", P, self.ip, lambda r: names.index(r.gpu)), pairing)
            for k, count in dspace.kinds.items():  # gpus.<kind>: both roles' GPUs of this kind within its count
                a = col(f"gpus_p_{k}", P, self.ip, lambda r, k=k: r.est.gpus if r.gpu == k else 0)
                b_ = col(f"gpus_d_{k}", D, self.id, lambda r, k=k: r.est.gpus if r.gpu == k else 0)
                add(f"gpus.{k}", a + b_ <= count, f"prefill + decode GPUs on {k} within its {count}")
            cents = {k: round(space.specs.gpus[k].price_per_hour * 100) for k in names}
            self.price = (col("price_p", P, self.ip, lambda r: cents[r.gpu] * r.est.gpus)
                          + col("price_d", D, self.id, lambda r: cents[r.gpu] * r.est.gpus))
        for name in ("weight_bits", "kv_bits"):
            add("formats", self.prefill.column(name) == self.decode.column(name),
                "one weight format and one KV format on both roles (the KV cache moves as is)")
        ns = 1e9
        self.ttft = col("ttft_ns", P, self.ip, lambda r: _int(r.est.ttft_s * ns))
        tail = col("ttft_tail_ns", P, self.ip, lambda r: _int(r.est.ttft_tail_s * ns))
        self.tpot = col("tpot_ns", D, self.id, lambda r: _int(r.est.tpot_s * ns))
        if slo.ttft is not None:
            add("slo.ttft", tail <= int(slo.ttft * opts.slo_slack * ns),
                f"prefill TTFT of the long prompt <= {format_time(slo.ttft * opts.slo_slack)}")
        if slo.tpot is not None:
            add("slo.tpot", self.tpot <= int(slo.tpot * opts.slo_slack * ns),
                f"decode TPOT (with the KV transfer) <= {format_time(slo.tpot * opts.slo_slack)}")
        need = math.ceil(rate * (1 + opts.headroom) * 1e6)
        self.cap_p = col("capacity_p", P, self.ip, lambda r: _int(r.est.capacity_rps * 1e6))
        self.cap_d = col("capacity_d", D, self.id, lambda r: _int(r.est.capacity_rps * 1e6))
        carry = f"carry {rate:.3g} req/s with {opts.headroom:.0%} headroom"
        add("capacity.prefill", self.cap_p >= need, f"the prefill replicas {carry}")
        add("capacity.decode", self.cap_d >= need, f"the decode replicas {carry}")
        att_p = col("attainment_p", P, self.ip, lambda r: round(r.est.attainment * 1000))
        att_d = col("attainment_d", D, self.id, lambda r: round(r.est.attainment * 1000))
        self.att = m.new_int_var(0, 10**6, "attainment_ppm")
        m.add_multiplication_equality(self.att, [att_p, att_d])
        e_p = col("energy_p", P, self.ip, lambda r: _int(r.est.energy_per_token_j * 1e6))
        e_d = col("energy_d", D, self.id, lambda r: _int(r.est.energy_per_token_j * 1e6))
        self.energy = e_p + e_d
        self.cuts = 0
        self._add_user_constraints(tail, e_p, e_d)
        self._objective()

    def _add_user_constraints(self, tail: cp_model.IntVar, e_p: cp_model.IntVar, e_d: cp_model.IntVar) -> None:
        """The user's plan constraints, on each role with the pair's predictions (:mod:`apex_opt.planner.table`)."""
        if not self.constraints:
            return
        m, space = self.model, self.space
        st = space.stats
        tok_rate = st.rate * st.mean_output

        def total(name: str, parts: list[Any]) -> cp_model.IntVar:
            out = m.new_int_var(sum(lower(p) for p in parts), sum(upper(p) for p in parts), name)
            m.add(out == sum(parts))
            return out

        def least(name: str, parts: list[Any]) -> cp_model.IntVar:
            out = m.new_int_var(min(lower(p) for p in parts), min(upper(p) for p in parts), name)
            m.add_min_equality(out, parts)
            return out

        def usd(r: RoleRow) -> int:  # milli-USD per million output tokens this role's GPUs cost
            return _int(r.est.gpus * space.specs.gpus[r.gpu].price_per_hour / 3600.0 / tok_rate * 1e9)

        def tokens(r: RoleRow) -> int:  # milli-tokens/s this role sustains
            return _int(r.est.capacity_rps * st.mean_output * 1e3)

        def goodput_per_gpu() -> cp_model.IntVar:  # micro-requests/s per GPU: min(rate, capacity) x attainment
            served = least("served", [self.cap_p, self.cap_d, m.new_constant(math.ceil(st.rate * 1e6))])
            num = m.new_int_var(0, upper(served) * 10**6, "goodput_x_ppm")
            m.add_multiplication_equality(num, [served, self.att])
            den = m.new_int_var(2 * 10**6, 2 * self.all_gpus * 10**6, "gpus_x_ppm")
            m.add(den == 10**6 * self.gpus)
            out = m.new_int_var(0, upper(served), "goodput_per_gpu")
            m.add_division_equality(out, num, den)
            return out

        deployment: dict[str, Any] = {
            "gpus": self.gpus, "ttft_ns": self.ttft, "ttft_tail_ns": tail, "tpot_ns": self.tpot,
            "capacity": lambda: least("capacity", [self.cap_p, self.cap_d]),
            "throughput": lambda: least("throughput", [self.prefill.column_of("tokens_p", [tokens(r) for r in
                                                                                            self.dspace.prefill]),
                                                       self.decode.column_of("tokens_d", [tokens(r) for r in
                                                                                          self.dspace.decode])]),
            "energy_per_token": lambda: total("energy_per_token", [e_p, e_d]),
            "cost_per_mtok": lambda: total("cost_per_mtok", [
                self.prefill.column_of("cost_p", [usd(r) for r in self.dspace.prefill]),
                self.decode.column_of("cost_d", [usd(r) for r in self.dspace.decode])]),
            "goodput_per_gpu": goodput_per_gpu,
        }
        roles: dict[str, DeploymentVars] = {}
        for role, table in (("prefill", self.prefill), ("decode", self.decode)):
            roles[role] = DeploymentVars(table, deployment, space=space, what="disaggregated", max_pp=MAX_ROLE_PP,
                                         roles=roles)
        add_constraints(self.labels, self.constraints, list(roles.values()), space)

    def _objective(self) -> None:
        m = self.model
        metric = self.objective.levels[0][0]
        assert metric is not None  # a function objective is refused before this search (_single_plan_rules)
        width = 2 * self.all_gpus + 1
        if metric == "cost_per_mtok_usd" and self.price is not None:  # GPU kinds differ in price
            m.minimize(self.price * width + self.gpus)
            return
        if metric in ("gpus", "cost_per_mtok_usd"):
            m.minimize(self.gpus)
            return
        if metric == "goodput_per_gpu_req_s":
            q = m.new_int_var(0, 10**9, "goodput_per_gpu")
            num = m.new_int_var(0, 10**9, "attainment_x1000")
            m.add(num == 1000 * self.att)
            m.add_division_equality(q, num, self.gpus)
            m.minimize(-q * width + self.gpus)
            return
        if metric == "throughput_output_tok_s":
            low = m.new_int_var(0, 2**50, "capacity")
            m.add_min_equality(low, [self.cap_p, self.cap_d])
            m.minimize(-low * width + self.gpus)
            return
        term = {"energy_per_output_token_j": self.energy, "tpot_mean_s": self.tpot, "ttft_mean_s": self.ttft}[metric]
        m.minimize(term * width + self.gpus)

    def limit_gpus(self, most: int) -> None:
        """Propose no plan with more than ``most`` GPUs from now on (one that could not place among the best)."""
        self.model.add(self.gpus <= most)

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

    def explain(self) -> tuple[str, tuple[str, ...]]:
        """Why no pair exists: a minimal set of labelled constraints in conflict (``pairing`` and ``gpus.<kind>``
        among them on a mixed cluster) and, for each, the pair the search would choose without it.
        ``("", ())`` when some pair meets every label. A model built with ``explain=True`` is explained as it
        stands (with any constraint added to it since); otherwise a fresh one is built."""
        probe = self if self.labels.explain else DisaggModel(self.space, self.dspace, self.objective,
                                                             constraints=self.constraints, seed=self.seed,
                                                             time_limit=self.time_limit, explain=True)
        what = "disaggregated plan"
        labels = probe.labels.conflict(what, drop_first=("capacity", "slo"), keep_last=("gpus", "pairing"))
        if not labels:
            return "", ()
        fits = probe.labels.relaxations(labels, what, probe._describe)
        return side_infeasible_message("pair", [(n, probe.labels.text[n]) for n in labels], fits), tuple(labels)

    def _describe(self, solver: cp_model.CpSolver) -> str:
        p = self.dspace.prefill[int(solver.value(self.ip))]
        d = self.dspace.decode[int(solver.value(self.id))]
        kinds = f"{p.est.gpus} {p.gpu} + {d.est.gpus} {d.gpu}" if p.gpu != d.gpu else f"on {p.gpu}"
        return (f"{deployment(self.space, p, d).label}: {p.est.gpus + d.est.gpus} GPUs ({kinds}), TTFT "
                f"{format_time(p.est.ttft_tail_s)}, TPOT {format_time(d.est.tpot_s)}, "
                f"{min(p.est.capacity_rps, d.est.capacity_rps):.3g} req/s")


def _role_fields(num_layers: int) -> dict[str, Callable[[RoleRow], int]]:
    """The columns a role table reads from its rows: the replica's decisions, its GPUs and its layer split."""
    def field(name: str) -> Callable[[RoleRow], int]:
        return lambda r: r.fields[name]

    def layers(i: int) -> Callable[[RoleRow], int]:
        def on(r: RoleRow) -> int:
            split = list(r.est.split) if r.pp > 1 else [num_layers]
            return split[i] if i < len(split) else 0
        return on

    fields = {name: field(name) for name in REPLICA_FIELDS}
    fields["gpus"] = lambda r: r.est.gpus
    fields.update({f"layers{i}": layers(i) for i in range(MAX_ROLE_PP)})
    return fields


def _layout(r: RoleRow) -> tuple:
    return (r.gpu, r.key, r.pp, r.dp)


def _int(x: float) -> int:
    return int(min(round(x), 2**50)) if math.isfinite(x) else 2**50


def deployment(space: PlanSpace, p: RoleRow, d: RoleRow) -> Deployment:
    engine = space.specs.engine.name
    return Deployment(plans=(p.plan(p.gpu, engine), d.plan(d.gpu, engine)))


def predicted(space: PlanSpace, p: RoleRow, d: RoleRow) -> Prediction:
    """The pair's predictions (as an aggregated plan's, with the prefill role's utilisation)."""
    st = space.stats
    gpus = p.est.gpus + d.est.gpus
    capacity = min(p.est.capacity_rps, d.est.capacity_rps)
    attainment = p.est.attainment * d.est.attainment
    goodput = min(st.rate, capacity) * attainment
    tok_rate = st.rate * st.mean_output
    price = sum(r.est.gpus * space.specs.gpus[r.gpu].price_per_hour for r in (p, d))
    return Prediction(
        fits=True,
        gpus=gpus,
        ttft_mean_s=p.est.ttft_s,
        ttft_tail_s=p.est.ttft_tail_s,
        tpot_mean_s=d.est.tpot_s,
        slo_attainment=attainment,
        goodput_req_s=goodput,
        goodput_per_gpu_req_s=goodput / gpus,
        capacity_req_s=capacity,
        throughput_output_tok_s=capacity * st.mean_output,
        energy_per_output_token_j=p.est.energy_per_token_j + d.est.energy_per_token_j,
        cost_per_mtok_usd=price / 3600.0 / tok_rate * 1e6,
        batch=d.est.batch,
        kv_tokens=d.est.kv_tokens,
        kv_needed=d.est.kv_needed,
        prefill_utilisation=p.est.batch,
    )


__all__ = ["DISAGGREGATION", "DisaggModel", "DisaggSpace", "RoleRow", "build_disagg_space", "deployment",
           "predicted"]
