"""What the cost model predicts for each candidate replica shape: memory, step times, batch, capacity, energy.

The planner never prices a plan with formulas of its own: every number comes from ``apex_opt.perf`` (the same
:class:`~apex_opt.perf.step.StageCost` and memory model the simulator runs), evaluated here in Python once per
candidate, then handed to CP-SAT as integer tables (:mod:`apex_opt.planner.model`).

Pipeline stages get real solver variables for their layer counts, so a stage's time and memory must be known
as a function of the number of layers it holds. Both are affine in that number, which two replicas of each
``(tp, ep, dtypes)`` shape expose exactly:

* ``R1`` (``pp=1``): ``F(b) = host(b) + L * u(b) + head(b)`` (the embedding is folded into ``u``);
* ``R2`` (``pp=2``, ``n0 + n1`` layers): ``T0(b) = host(b) + n0 * u(b) + send(b)``, ``T1(b) = n1 * u(b) + head(b)``;

so ``u = (F - host - T1) / n0``, ``head = T1 - n1 * u`` and ``send = T0 + T1 - F``, for any
:class:`~apex_opt.sim.cost.BatchShape` ``b``. Memory splits the same way (per-layer weights and KV bytes, and
what the first and last stages hold besides their layers: embedding, LM head, activation peak).

The workload enters through :class:`WorkloadStats`: arrival rate, mean prompt and output, the output-weighted
mean context a decoding sequence holds, the prompt length at the SLO's attainment quantile, and how long the
arrivals last. The batch a replica runs is the number of its requests in service as a decoding token sees it
(:meth:`WorkloadStats.concurrency`): Little's ``rate x lifetime`` when the trace lasts much longer than a request
lives, fewer when requests outlive the trace, which then never reaches the steady batch (10,000 requests at 200
req/s last 50 s; 1,024 output tokens at 60-90 ms live longer). Capacity is the rate at which the batch a replica
can hold is in service over that span. On 200 requests at 10 req/s of 512 -> 1,024 tokens on one H100 the estimated
TPOT is 14.6 ms against 11.8 ms simulated, where the steady batch says about 30 ms
(``tests/test_finite_trace_estimates.py``).

Pipelined replicas with chunked prefill (:meth:`Estimator._pipe_round`). vLLM 0.6 runs ``pp`` virtual engines,
each with ``batch / pp`` of the sequences and its own arrivals. An engine's next step starts when its last one
left the last stage, so a token's time is the engine's *round*. A share ``q`` of an engine's steps carry prompt
tokens beside the decodes: by Little's law the engine takes in ``batch / mean_output / pp`` prompts per round,
as one full chunk of a backlog per step (``budget - n`` tokens) or as everything that arrived during the last
round when that fits. With ``k`` of the ``m`` busy engines' micro-batches carrying a chunk (binomial in ``q``), a
round lasts the longest of its circuits: a stage serving every busy engine's micro-batch once, or one engine's
own micro-batch through every stage. The TPOT is the mean over ``k``; ``q >= 1`` means the engines cannot take
in the prompts, which is saturation. TTFT is the residual of the round in progress, then the backlog ahead,
then one round per chunk. Every term is a stage time from the cost model; nothing is fitted. The term this
replaced, decode step ``/ (1 - rho)`` with ``rho`` the bottleneck stage's prefill load ``/ pp``, was 21-39% low on
Llama-3.1-70B tp4/tp2 pp2 and 47% high on 8B tp2 pp2. Now every pipelined row the simulator serves is within
5% on TPOT, and within 2% with ``--engine vllm-v1`` (``python benchmarks/pipeline_estimates.py``, table in
``docs/scale.md``). Pipelined plans without chunked prefill and disaggregated decode replicas keep the step
formula of :meth:`Estimator._step`.

Attainment (:meth:`Estimator._tpot_share`, :func:`apex_opt.planner.attainment.tpot_share`). The SLO counts a request
as met when its *own* TPOT is within the bound, and requests do not all decode at the mean: those of a short trace's
plateau see more requests in service than the token-weighted mean, and those whose lives see more prompts arrive (or
that have few tokens to average them over) see more prefill work in their steps. The share is read off the load
profile of the trace, the Poisson count of the prompts arriving during a life and of the requests sharing the steps,
and the output-length deciles; every term is the cost model's step (round) formula or the workload's. It replaced
"every request at the mean TPOT", which estimated 100% for Kimi-K2 ``tp4 pp4`` plans whose simulations kept 51-58%
of the requests within the bound (``tests/test_attainment_estimate.py``, ``docs/planner.md``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..ir.parallel import StageLayout, default_layer_split
from ..perf.engine_rules import resolve_engine
from ..perf.memory import plan_memory, stage_weight_bytes
from ..perf.replica import Replica, build_replica
from ..schema.engine import EngineSpec
from ..schema.gpu import GPUSpec
from ..schema.model import ModelSpec
from ..schema.plan import Plan
from ..schema.slo import SLO
from ..sim.cost import BatchShape
from ..topology.graph import Topology
from .attainment import TpotSpread, tpot_share
from .workload_stats import WorkloadStats

#: shares of a replica's capacity the arrival rate may use before the [capacity] constraint refuses it
DEFAULT_HEADROOM = 0.10


@dataclass(frozen=True)
class Menu:
    """Engine limits of one candidate: ``max_num_seqs`` and the chunked-prefill budget (None: engine default)."""

    max_num_seqs: int
    budget: int | None = None

    def plan_fields(self) -> dict:
        out: dict = {"max_num_seqs": self.max_num_seqs}
        if self.budget is not None:
            out["max_num_batched_tokens"] = self.budget
            out["chunked_prefill"] = True
        return out


@dataclass(frozen=True)
class ShapeKey:
    """The part of a replica shape that changes the per-layer cost: TP, EP, dtypes."""

    tp: int
    ep: int
    moe_tp: int | None
    weight_dtype: str
    kv_dtype: str
    #: the "wide EP" layout: this many attention data-parallel ranks share every MoE layer (1: none)
    wide_dp: int = 1

    def plan(self, gpu: str, engine: str, **extra: Any) -> Plan:
        fields = {"gpu": gpu, "engine": engine, "tp": self.tp, "ep": self.ep, "weight_dtype": self.weight_dtype,
                  "kv_dtype": self.kv_dtype}
        if self.ep > 1:
            fields["moe_tp"] = self.moe_tp
        if self.wide_dp > 1:
            fields.update(dp=self.wide_dp, dp_attention=True)
        fields.update(extra)
        return Plan(**fields)


@dataclass(frozen=True)
class StageRoles:
    """Memory of one stage role in bytes per GPU: what it must hold besides its layers, and its budget."""

    budget: float  # bytes the engine may fill (total * utilization, minus what it reserves)
    fixed: float  # non-torch buffers counted by the profile run
    first: float  # embedding weights + activation peak of a first, non-last stage
    middle: float  # activation peak of a middle stage
    last: float  # LM head (+ tied copy) + activation peak + sampler of a last, non-first stage
    only: float  # embedding + LM head + activation peak of a single stage (pp=1)
    layer_weights: float  # weights of one (average) layer
    kv_per_token_layer: float  # KV bytes of one token in one layer
    block_size: int

    def room(self, role: str) -> float:
        return self.budget - self.fixed - getattr(self, role)


class ShapeCost:
    """Replicas ``R1`` (pp=1) and ``R2`` (pp=2) of one :class:`ShapeKey`, and the affine stage model they imply."""

    def __init__(self, key: ShapeKey, model: ModelSpec, gpu: GPUSpec, engine: EngineSpec, topology: Topology,
                 *, with_pipeline: bool, nvlink_tp: bool = True) -> None:
        self.key = key
        self.model = model
        self.gpu = gpu
        self.engine = engine
        self.topology = topology
        self.L = model.num_layers
        self.r1: Replica = build_replica(model, gpu, key.plan(gpu.name, engine.name), engine, topology=topology)
        self.r2: Replica | None = None
        self.split2: tuple[int, ...] = (self.L, 0)
        if with_pipeline and self.L >= 2:
            self.split2 = default_layer_split(self.L, 2)
            self.r2 = build_replica(model, gpu, key.plan(gpu.name, engine.name, pp=2, layers_per_stage=self.split2),
                                    engine, topology=topology)
        self._parts: dict[BatchShape, tuple[float, float, float, float, float]] = {}
        self._roles: dict[Menu, StageRoles] = {}

    # ------------------------------------------------------------------------------------------- time
    def parts(self, b: BatchShape) -> tuple[float, float, float, float, float]:
        """``(F, u, host, head, send)`` in seconds for batch ``b`` (see the module docstring)."""
        cached = self._parts.get(b)
        if cached is not None:
            return cached
        f = self.r1.cost.stages[0]
        full = f.iteration_time(b)
        host_fn = getattr(f, "host_time", None)
        host = float(host_fn(b)) if host_fn is not None else 0.0
        if self.r2 is None:
            u = (full - host) / self.L
            out = (full, u, host, 0.0, 0.0)
        else:
            s0, s1 = self.r2.cost.stages
            t0 = s0.iteration_time(b)
            t1 = s1.iteration_time(b)
            n0, n1 = self.split2
            u = max((full - host - t1) / n0, 0.0)
            head = max(t1 - n1 * u, 0.0)
            send = max(t0 + t1 - full, 0.0)
            out = (full, u, host, head, send)
        self._parts[b] = out
        return out

    def stage_times(self, b: BatchShape, split: tuple[int, ...]) -> list[float]:
        """Seconds each stage of a replica with ``split`` layers per stage takes on batch ``b``."""
        full, u, host, head, send = self.parts(b)
        if len(split) == 1:
            return [full]
        last = len(split) - 1
        return [n * u + (host if i == 0 else 0.0) + (head if i == last else send) for i, n in enumerate(split)]

    def stage_affine(self, b: BatchShape, pp: int) -> tuple[float, list[float]]:
        """``(u, extras)``: stage ``i`` takes ``n_i * u + extras[i]`` seconds on batch ``b`` (pp >= 2)."""
        _, u, host, head, send = self.parts(b)
        extras = [(host if i == 0 else 0.0) + (head if i == pp - 1 else send) for i in range(pp)]
        return u, extras

    def energy_dynamic(self, b: BatchShape) -> float:
        """Joules of one pass of batch ``b`` through every layer, above the GPUs' idle draw."""
        f = self.r1.cost.stages[0]
        t = f.iteration_time(b)
        return max(f.energy(b, t) - f.idle_power() * t, 0.0)

    # ------------------------------------------------------------------------------------------- memory
    def roles(self, menu: Menu) -> StageRoles:
        cached = self._roles.get(menu)
        if cached is not None:
            return cached
        model, gpu, key = self.model, self.gpu, self.key
        plan1 = key.plan(gpu.name, self.engine.name, **menu.plan_fields())
        link = self.r1.links["tp"]
        settings = resolve_engine(self.engine, plan1, model, gpu, nodes_per_tp_group=link.nodes,
                                  nvlink=link.fabric not in ("pcie", "network"))
        mem1 = plan_memory(model, gpu, plan1, settings, list(self.r1.layouts)).stages[0]
        layers_w = _layer_weights(self.r1.layouts[0], model, plan1)
        only = mem1.weights - self.L * layers_w + mem1.activation
        first = middle = last = only
        if self.r2 is not None:
            plan2 = key.plan(gpu.name, self.engine.name, pp=2, layers_per_stage=self.split2, **menu.plan_fields())
            mem2 = plan_memory(model, gpu, plan2, settings, list(self.r2.layouts)).stages
            n0, n1 = self.split2
            first = mem2[0].weights - n0 * layers_w + mem2[0].activation
            last = mem2[1].weights - n1 * layers_w + mem2[1].activation
            middle = mem2[0].activation
        roles = StageRoles(
            budget=mem1.budget,
            fixed=mem1.fixed,
            first=first,
            middle=middle,
            last=last,
            only=only,
            layer_weights=layers_w,
            kv_per_token_layer=mem1.kv_bytes_per_token / max(self.L, 1),
            block_size=settings.block_size,
        )
        self._roles[menu] = roles
        return roles


def _layer_weights(layout: StageLayout, model: ModelSpec, plan: Plan) -> float:
    """Average weight bytes of one transformer layer on one GPU (dense and MoE layers weighted by count)."""
    total = 0.0
    count = 0
    for block in ("dense", "moe"):
        if block not in layout.blocks:
            continue
        reps = layout.repeat[block]
        one = StageLayout(stage=1, num_stages=3, layers=(0,), blocks={block: layout.blocks[block]},
                          repeat={block: 1})
        total += reps * stage_weight_bytes(one, model, plan)
        count += reps
    return total / max(count, 1)


def _kv_needed(batch: float, st: WorkloadStats) -> int:
    """KV tokens a replica must hold: the concurrency's mean plus three standard deviations (Poisson: sqrt of the
    mean) at the mean context, plus the longest request.

    Sized for the mean alone, a solver balancing pipeline stages leaves the KV cache just above it, and the
    bursts of a Poisson arrival process then preempt requests (measured: dp9 tp8 pp2 for Kimi-K2 at 50 req/s
    sized for 87 sequences preempted 139 times and met the SLO for 29% of requests).
    """
    return math.ceil((batch + 3.0 * math.sqrt(max(batch, 0.0))) * st.ctx_occupancy) + st.max_request_tokens


def _seen(batch: float, pp: int, limit: int) -> float:
    """Batch a decoding token sees: itself plus the others of its virtual engine (Poisson: mean B/pp)."""
    return min(1.0 + batch / pp, float(limit))


def _busy(batch: float, pp: int) -> float:
    """Virtual engines busy each pipeline round, as a decoding token sees it (its own plus the others')."""
    if pp <= 1:
        return 1.0
    return 1.0 + (pp - 1) * (1.0 - math.exp(-batch / pp))


def role_of(i: int, pp: int) -> str:
    if pp == 1:
        return "only"
    if i == 0:
        return "first"
    return "last" if i == pp - 1 else "middle"


def decode_shape(n: int, ctx: float) -> BatchShape:
    n = max(int(n), 1)
    return BatchShape(num_tokens=n, num_seqs=n, num_decodes=n, decode_ctx_sum=round(n * ctx),
                      prefill_pairs=0.0, has_prefill=False, max_ctx=math.ceil(ctx))


def prefill_shape(chunk: int, past: int, decodes: int, ctx: float) -> BatchShape:
    """One iteration with a prefill chunk of ``chunk`` tokens after ``past`` cached ones, plus ``decodes``."""
    pairs = chunk * (past + (chunk + 1) / 2.0)
    return BatchShape(num_tokens=chunk + decodes, num_seqs=1 + decodes, num_decodes=decodes,
                      decode_ctx_sum=round(decodes * ctx), prefill_pairs=pairs, has_prefill=True,
                      max_ctx=int(max(past + chunk, ctx)))


@dataclass(frozen=True)
class PipeRound:
    """The rounds of a virtual engine of a pipelined replica (:meth:`Estimator._pipe_round`), seconds."""

    tpot: float  # mean round: a decoding sequence's time per output token
    q: float  # share of an engine's steps that carry prompt tokens (>= 1: it cannot take in the prompts)
    chunk: float  # prompt tokens such a step carries
    cap: float  # most prompt tokens a step can carry beside its decodes (budget - decodes)
    residual: float  # mean time from an arrival to the end of its engine's round (length-biased)
    chunk_round: float  # mean round in which the engine's own micro-batch carries prompt tokens


@dataclass
class ConfigEstimate:
    """Predictions for one candidate plan (replica shape x dp), in SI units."""

    split: tuple[int, ...]  # canonical layer split (min bottleneck under memory)
    max_layers: tuple[int, ...]  # most layers each stage can hold with the KV the workload needs
    fits: bool  # some split holds weights + reserves + needed KV on every stage
    kv_tokens: int  # engine KV capacity of one replica (canonical split)
    kv_needed: int  # KV tokens the expected concurrency needs
    batch: float  # expected concurrent sequences per replica (Little's law fixed point)
    stable: bool  # the fixed point exists below the replica's batch limits
    tpot_s: float  # predicted mean time per output token at the expected batch
    ttft_s: float  # predicted mean TTFT (averaged over the prompt-length deciles)
    ttft_tail_s: float  # predicted TTFT of the long prompt (the SLO attainment quantile)
    attainment: float  # predicted share of requests within the per-request TTFT and TPOT bounds
    ttft_max_s: float  # predicted TTFT of the workload's longest prompt
    capacity_rps: float  # max arrival rate the whole plan sustains within the TPOT SLO
    energy_per_token_j: float
    cost_per_mtok_usd: float
    goodput_rps: float
    throughput_tok_s: float  # sustainable output tokens/s (capacity x mean output)
    #: per-layer decode seconds (scaled by pp and the prefill interference) and per-stage extras (pp >= 2)
    layer_s: float = 0.0
    stage_extra_s: tuple[float, ...] = ()
    #: a token's time through every stage (pp >= 2, scaled like the stages): TPOT = max(this, bottleneck)
    pipeline_sum_s: float = 0.0
    notes: list[str] = field(default_factory=list)


class Estimator:
    """Evaluates candidates of one problem; caches one :class:`ShapeCost` per shape key."""

    def __init__(self, model: ModelSpec, gpu: GPUSpec, engine: EngineSpec, topology: Topology,
                 stats: WorkloadStats, slo: SLO, *, slo_slack: float = 1.1, headroom: float = DEFAULT_HEADROOM,
                 max_pp: int = 16) -> None:
        self.model = model
        self.gpu = gpu
        self.engine = engine
        self.topology = topology
        self.stats = stats
        self.slo = slo
        self.slo_slack = slo_slack
        self.headroom = headroom
        self.max_pp = max_pp
        # an SLO measured at the client leaves the engine less time: the API server and streaming path take some
        self.client_delay = 0.0
        self.client = None
        if slo.measured_at == "client":
            from ..simulate import client_path
            self.client = client_path(engine)
            self.client_delay = float(self.client.delay(stats.long_prompt))
        self._shapes: dict[ShapeKey, ShapeCost] = {}
        self._prefills: dict[tuple, tuple[float, float]] = {}
        prompts = np.asarray(stats.prompts_sorted, dtype=float)
        #: squared coefficient of variation of the prompt lengths (the spread of one prompt's prefill work)
        self._prompt_cv2 = float(prompts.var() / prompts.mean() ** 2) if len(prompts) and prompts.mean() > 0 else 0.0

    def shape(self, key: ShapeKey) -> ShapeCost:
        sc = self._shapes.get(key)
        if sc is None:
            sc = ShapeCost(key, self.model, self.gpu, self.engine, self.topology,
                           with_pipeline=self.max_pp >= 2 and 2 * key.tp <= self.topology.num_gpus
                           and key.wide_dp == 1)
            self._shapes[key] = sc
        return sc

    # ------------------------------------------------------------------------------------------- pieces
    def _budget(self, sc: ShapeCost, menu: Menu) -> tuple[bool, int]:
        """(chunked, tokens per iteration) the engine runs this candidate with."""
        plan = sc.key.plan(self.gpu.name, self.engine.name, **menu.plan_fields())
        settings = resolve_engine(self.engine, plan, self.model, self.gpu)
        return settings.chunked_prefill, settings.max_num_batched_tokens

    def _step(self, sc: ShapeCost, split: tuple[int, ...], n: float, busy: float = 1.0) -> float:
        """Seconds between two tokens of one sequence when each virtual engine decodes ``n`` sequences.

        With pipeline stages a virtual engine's batch passes every stage in turn (``sum`` of the stage times),
        and the bottleneck stage also serves the other ``busy - 1`` busy virtual engines each round.
        """
        lo = max(math.floor(n), 1)
        hi = max(math.ceil(n), 1)
        ctx = self.stats.ctx_occupancy

        def at(k: int) -> float:
            times = sc.stage_times(decode_shape(k, ctx), split)
            return max(sum(times), busy * max(times)) if len(split) > 1 else times[0]

        if lo == hi:
            return at(lo)
        w = n - lo
        return (1 - w) * at(lo) + w * at(hi)

    def _pipe_times(self, sc: ShapeCost, split: tuple[int, ...], n: float, chunk: float) -> list[float]:
        """Stage times of one micro-batch: ``n`` decodes (interpolated between integers) and ``chunk`` prompt tokens.

        The chunk is prompt tokens at the mean prompt's positions: a chunk of ``c`` tokens cut from prompts of
        ``P`` tokens holds ``c * (P + 1) / 2`` causal pairs on average, whether it is part of one prompt or
        several whole ones.
        """
        lo = max(math.floor(n), 1)
        hi = max(math.ceil(n), 1)
        at_lo = sc.stage_times(self._micro_batch(lo, chunk), split)
        if lo == hi:
            return at_lo
        w = n - lo
        return [(1 - w) * a + w * b for a, b in zip(at_lo, sc.stage_times(self._micro_batch(hi, chunk), split))]

    def _micro_batch(self, k: int, chunk: float) -> BatchShape:
        """``k`` decodes at the mean context and ``chunk`` prompt tokens (see :meth:`_pipe_times`)."""
        ctx = self.stats.ctx_occupancy
        if chunk <= 0:
            return decode_shape(k, ctx)
        prompt = max(self.stats.mean_prompt, 1.0)
        c = max(round(chunk), 1)
        return BatchShape(num_tokens=c + k, num_seqs=k + max(math.ceil(c / prompt), 1), num_decodes=k,
                          decode_ctx_sum=round(k * ctx), prefill_pairs=c * (prompt + 1) / 2.0, has_prefill=True,
                          max_ctx=math.ceil(max(prompt, ctx)))

    def _pipe_round(self, sc: ShapeCost, split: tuple[int, ...], batch: float, limit: int,
                    budget: int, arrivals: float | None = None) -> PipeRound:
        """The rounds of a pipelined replica with chunked prefill decoding ``batch`` sequences (:class:`PipeRound`).

        vLLM 0.6 runs ``pp`` virtual engines, each with ``batch / pp`` of the sequences; a virtual engine's next
        step starts when its previous one left the last stage, so a token's time is the engine's round. The
        prompts of the engine's arrivals ride in its steps beside its ``n`` decodes, up to ``budget - n``
        tokens a step; by Little's law an engine takes in ``a = batch / mean_output / pp`` prompts per round.
        A step carries what arrived during the last round (``a / (1 - exp(-a))`` prompts when any did, Poisson)
        or, when that does not fit, a full chunk of a backlog: ``chunk`` tokens, in a share
        ``q = a * mean_prompt / chunk`` of the steps; the other steps decode only. With ``m`` engines
        busy and ``k`` of their micro-batches carrying a chunk (binomial in ``q``), the round lasts the
        longest of its circuits: every stage serves each busy engine's micro-batch once (the sum over the
        micro-batches of that stage's time), and an engine's own micro-batch passes every stage in turn (the
        sum of its stage times). The mean over ``k`` is the TPOT; the max of the means would miss the rounds
        in which the chunks pile onto the bottleneck. ``q >= 1``: the engines cannot take in the prompts.
        ``arrivals`` overrides Little's prompts per engine and round (a batch away from the steady state:
        :meth:`_spread`).
        """
        pp = len(split)
        n = _seen(batch, pp, limit)
        cap = max(budget - n, 1.0)
        if arrivals is None:
            arrivals = batch / max(self.stats.mean_output, 1.0) / pp  # prompts reaching an engine per round
        # a step takes in what arrived in the last round (Poisson: a step with any prompt holds
        # arrivals / (1 - exp(-arrivals)) of them), at most `cap` tokens; a backlog is cut into full chunks
        held = self.stats.mean_prompt * arrivals / max(-math.expm1(-arrivals), 1e-12)
        chunk = min(cap, held) if arrivals > 0 else cap
        q = arrivals * self.stats.mean_prompt / chunk
        dec = self._pipe_times(sc, split, n, 0.0)
        chk = self._pipe_times(sc, split, n, chunk)
        qq = min(q, 1.0)
        m = _busy(batch, pp)

        def rounds(engines: int) -> tuple[float, float, float]:
            """Mean round, mean squared round, mean round in which the engine's own micro-batch has a chunk."""
            mean = square = mine = 0.0
            for k in range(engines + 1):
                share = math.comb(engines, k) * qq**k * (1 - qq) ** (engines - k)
                stages = max((engines - k) * d + k * c for d, c in zip(dec, chk))
                length = max(stages, sum(chk) if k else sum(dec))
                mean += share * length
                square += share * length**2
                if k:  # the others carry k - 1 chunks
                    mine += math.comb(engines - 1, k - 1) * qq ** (k - 1) * (1 - qq) ** (engines - k) * length
            return mean, square, mine

        lo, hi = math.floor(m), math.ceil(m)
        w = m - lo
        mixed = [(1 - w) * a + w * b for a, b in zip(rounds(lo), rounds(hi))] if hi > lo else list(rounds(lo))
        tpot, square, mine = mixed
        return PipeRound(tpot=tpot, q=q, chunk=chunk, cap=cap, residual=square / (2 * tpot), chunk_round=mine)

    def _prefill(self, sc: ShapeCost, split: tuple[int, ...], prompt: int, decodes: int, chunked: bool,
                 budget: int) -> tuple[float, float]:
        """(latency, extra busy time) of prefilling ``prompt`` tokens while ``decodes`` sequences decode.

        The extra busy time is what the prompt adds to the iterations it rides in (chunked prefill) or the time
        of its own prefill iterations (prefill-first schedulers, and SGLang, whose chunks of ``budget`` tokens run
        as extend batches of their own: the decodes wait for each whole chunk step), on the bottleneck stage.
        """
        key = (sc.key, split, prompt, decodes, chunked, budget)
        cached = self._prefills.get(key)
        if cached is not None:
            return cached
        ctx = self.stats.ctx_occupancy
        mixed = chunked and self.engine.prefill_chunks_with_decodes  # the chunks ride in the decodes' steps
        chunk = max(min(budget - (decodes if mixed else 0), prompt), 1) if chunked else max(prompt, 1)
        latency = 0.0
        busy = 0.0
        done = 0
        base = sc.stage_times(decode_shape(decodes, ctx), split) if (mixed and decodes) else [0.0] * len(split)
        while done < prompt:
            c = min(chunk, prompt - done)
            b = prefill_shape(c, done, decodes if mixed else 0, ctx)
            times = sc.stage_times(b, split)
            latency += sum(times)
            busy += max(t - t0 for t, t0 in zip(times, base))
            done += c
        self._prefills[key] = (latency, busy)
        return latency, busy

    def canonical_split(self, sc: ShapeCost, pp: int, max_layers: tuple[int, ...], n: float) -> tuple[int, ...]:
        """The split minimising the bottleneck stage's decode time within each stage's layer limit."""
        if pp == 1:
            return (self.model.num_layers,)
        u, extras = sc.stage_affine(decode_shape(max(round(n), 1), self.stats.ctx_occupancy), pp)
        split = [1] * pp
        for _ in range(self.model.num_layers - pp):
            best = None
            for i in range(pp):
                if split[i] >= max_layers[i]:
                    continue
                t = (split[i] + 1) * u + extras[i]
                if best is None or t < best[0] - 1e-15:
                    best = (t, i)
            if best is None:  # memory cannot hold the layers: keep the even split (memory will refuse it)
                return default_layer_split(self.model.num_layers, pp)
            split[best[1]] += 1
        return tuple(split)

    def max_layers(self, sc: ShapeCost, menu: Menu, pp: int, kv_tokens: int) -> tuple[int, ...]:
        roles = sc.roles(menu)
        per_layer = roles.layer_weights + roles.kv_per_token_layer * kv_tokens
        out = []
        for i in range(pp):
            room = roles.room(role_of(i, pp))
            out.append(max(math.floor(room / per_layer), 0) if per_layer > 0 else self.model.num_layers)
        return tuple(min(x, self.model.num_layers) for x in out)

    def kv_capacity(self, sc: ShapeCost, menu: Menu, split: tuple[int, ...]) -> int:
        """KV tokens the engine would allocate for one replica with ``split`` (the memory model's arithmetic)."""
        roles = sc.roles(menu)
        blocks = math.inf
        pp = len(split)
        for i, n in enumerate(split):
            free = roles.room(role_of(i, pp)) - n * roles.layer_weights
            block_bytes = n * roles.kv_per_token_layer * roles.block_size
            blocks = min(blocks, math.floor(free / block_bytes) if free > 0 and block_bytes > 0 else 0)
        return int(max(blocks, 0)) * roles.block_size

    # ------------------------------------------------------------------------------------------- one config
    def estimate(self, key: ShapeKey, menu: Menu, pp: int, dp: int,
                 split: tuple[int, ...] | None = None, lam: float | None = None) -> ConfigEstimate:
        """Predict one candidate; ``split`` fixes the layers per stage (default: the canonical split).

        Each replica receives ``lam`` requests/s (default: the workload's rate over ``dp``; a heterogeneous
        deployment's router gives replicas of different shapes different shares).
        """
        sc = self.shape(key)
        st = self.stats
        lam = st.rate / dp if lam is None else lam
        chunked, budget = self._budget(sc, menu)
        slo_tpot = self.slo.tpot * self.slo_slack if self.slo.tpot else math.inf

        # first pass: even split, then the memory-aware balanced split at the resulting batch
        cur = split or default_layer_split(self.model.num_layers, pp)
        batch, stable, rho, tp_busy = self._fixed_point(sc, cur, menu, lam, chunked, budget)
        kv_needed = _kv_needed(batch, st)
        max_layers = self.max_layers(sc, menu, pp, kv_needed)
        if split is None and pp > 1:
            cur = self.canonical_split(sc, pp, max_layers, _seen(batch, pp, menu.max_num_seqs))
            batch, stable, rho, tp_busy = self._fixed_point(sc, cur, menu, lam, chunked, budget)
            kv_needed = _kv_needed(batch, st)
            max_layers = self.max_layers(sc, menu, pp, kv_needed)
        fits = sum(max_layers) >= self.model.num_layers and all(m >= 1 for m in max_layers) and all(
            n <= m for n, m in zip(cur, max_layers))
        kv_tokens = self.kv_capacity(sc, menu, cur)

        busy_ves = _busy(batch, pp)
        step = self._step(sc, cur, _seen(batch, pp, menu.max_num_seqs), busy_ves)
        tpot = step / max(1.0 - rho, 1e-3)
        pipelined = pp > 1 and chunked  # the prompts ride in the virtual engines' rounds (:meth:`_pipe_round`)
        pr = self._pipe_round(sc, cur, batch, menu.max_num_seqs, budget) if pipelined else None
        if pr is not None:
            tpot = pr.tpot
        # TTFT: wait for a (virtual) engine, prefill the prompt through every stage; with async output processing
        # (pp = 1) the first token is stamped in the next iteration, after its host work
        decodes = round(batch / pp) if pp > 1 else round(batch)
        decodes = min(decodes, menu.max_num_seqs - 1)
        queue = rho / (2 * max(1.0 - rho, 1e-3)) * tp_busy
        host = sc.parts(decode_shape(max(decodes, 1), st.ctx_occupancy))[2]
        settings = resolve_engine(self.engine, key.plan(self.gpu.name, self.engine.name, pp=pp,
                                                        **menu.plan_fields()), self.model, self.gpu)
        stamp = host if settings.async_output and self.engine.metrics_stamp == "next-iteration" else 0.0
        wait = 0.5 * step / pp + queue + stamp
        if pr is not None:
            # the engine's round in progress, then the prompts ahead in its backlog (none when each step takes
            # in what arrived during the last round); each of its chunks then takes one round
            queue = queue if pr.chunk >= pr.cap else 0.0
            wait = pr.residual + queue
        if self.client is not None:  # the frontend's output lag and per-stream work (apex_opt.sim.client)
            wait += self.client.output_lag_steps * tpot + self.client.per_stream_s * batch
        longest = st.prompts_sorted[-1] if st.prompts_sorted else st.long_prompt
        prefill = {p: self._latency(sc, cur, p, max(decodes, 0), chunked, budget, pr)
                   for p in {st.long_prompt, longest, *st.prompt_deciles}}
        ttft_tail = wait + prefill[st.long_prompt]
        ttft_max = wait + prefill[longest]
        ttft = wait + sum(prefill[p] for p in st.prompt_deciles) / len(st.prompt_deciles)

        capacity = dp * self._capacity(sc, cur, menu, kv_tokens, chunked, budget, slo_tpot)
        spread = (self._spread(sc, cur, menu, lam, chunked, budget, max(decodes, 0), step, tpot, rho, pr, kv_tokens)
                  if self.slo.tpot is not None else None)
        attainment = self._attainment(sc, cur, wait, max(decodes, 0), chunked, budget, tpot, pr, spread)
        goodput = min(st.rate, capacity) * attainment
        # energy: idle draw of every GPU of the plan + dynamic energy of the work the workload brings
        gpus = dp * pp * key.tp
        n_dec = _seen(batch, pp, menu.max_num_seqs)
        dec_b = decode_shape(max(round(n_dec), 1), st.ctx_occupancy)
        e_tok = sc.energy_dynamic(dec_b) / dec_b.num_decodes
        e_pre = sc.energy_dynamic(prefill_shape(max(round(st.mean_prompt), 1), 0, 0, 0.0))
        idle_w = gpus * self.gpu.power.idle
        tok_rate = st.rate * st.mean_output
        energy = idle_w / tok_rate + e_tok + e_pre / max(st.mean_output, 1e-9)
        cost = gpus * self.gpu.price_per_hour / 3600.0 / tok_rate * 1e6

        layer_s = 0.0
        pipeline_sum = 0.0
        extras: tuple[float, ...] = ()
        if pr is not None:
            # the round as CP-SAT sees it: a token passes every stage once (its engine's mean micro-batch, a
            # share `rho` carrying a chunk, whatever the split), and each stage serves `busy_ves` micro-batches,
            # weighed as decode micro-batches (the balance the canonical split strikes) and scaled so that the
            # longest stage is the mean round at the canonical split: the rounds in which the chunks pile onto
            # one stage are what makes the mean round longer than a token's own pass
            n_ve = max(round(_seen(batch, pp, menu.max_num_seqs)), 1)
            u_d, ex_d = sc.stage_affine(self._micro_batch(n_ve, 0.0), pp)
            u_c, ex_c = sc.stage_affine(self._micro_batch(n_ve, pr.chunk), pp)
            share = min(rho, 1.0)
            own = self.model.num_layers * ((1 - share) * u_d + share * u_c) + sum(
                (1 - share) * a + share * b for a, b in zip(ex_d, ex_c))
            ratio = tpot / max(max(busy_ves * (n * u_d + e) for n, e in zip(cur, ex_d)), 1e-12)
            layer_s = ratio * busy_ves * u_d
            extras = tuple(ratio * busy_ves * e for e in ex_d)
            pipeline_sum = min(own, tpot)
            tpot = max(pipeline_sum, *(n * layer_s + e for n, e in zip(cur, extras)))
        elif pp > 1:
            u, ex = sc.stage_affine(dec_b, pp)
            scale = busy_ves / max(1.0 - rho, 1e-3)
            layer_s = u * scale
            extras = tuple(e * scale for e in ex)
            pipeline_sum = (self.model.num_layers * u + sum(ex)) / max(1.0 - rho, 1e-3)
            tpot = max(pipeline_sum, *(n * layer_s + e for n, e in zip(cur, extras)))
        return ConfigEstimate(
            split=tuple(cur), max_layers=max_layers, fits=fits, kv_tokens=kv_tokens, kv_needed=kv_needed,
            batch=batch, stable=stable, tpot_s=tpot, ttft_s=ttft, ttft_tail_s=ttft_tail, attainment=attainment,
            ttft_max_s=ttft_max,
            capacity_rps=capacity,
            energy_per_token_j=energy, cost_per_mtok_usd=cost, goodput_rps=goodput,
            throughput_tok_s=capacity * st.mean_output, layer_s=layer_s, stage_extra_s=extras,
            pipeline_sum_s=pipeline_sum,
        )

    def _attainment(self, sc: ShapeCost, split: tuple[int, ...], wait: float, decodes: int, chunked: bool,
                    budget: int, tpot: float, rounds: PipeRound | None = None,
                    spread: TpotSpread | None = None) -> float:
        """Predicted share of requests meeting the per-request TTFT and TPOT bounds of the SLO.

        TTFT: every prompt up to the longest one whose prefill (after the mean wait) ends within the bound
        (binary search; prefill time grows with the prompt). TPOT: the share of requests whose own TPOT is
        within the bound, from the spread of per-request TPOT (:meth:`_tpot_share`).
        """
        return self._ttft_share(sc, split, wait, decodes, chunked, budget, rounds) * self._tpot_share(tpot, spread)

    def _spread(self, sc: ShapeCost, split: tuple[int, ...], menu: Menu, lam: float, chunked: bool, budget: int,
                decodes: int, step: float, tpot: float, rho: float, rounds: PipeRound | None,
                kv_tokens: int = 0) -> TpotSpread:
        """The spread of per-request TPOT of a candidate (:class:`TpotSpread`, :meth:`_tpot_share`).

        The mean TPOT at a batch away from the estimate's is the same formula at that batch with the prompts
        still arriving at the arrival rate (the rate, not the batch, sets the prefill load): pipelined with
        chunked prefill, the round ``T`` of :meth:`_pipe_round` taking in ``rate x T / pp`` prompts per engine
        (one step of that fixed point from Little's); otherwise the decode step stretched by the same
        ``1 / (1 - rho)``. After the last arrival the steps decode only. The prompts' delay per token is
        ``tpot`` less the TPOT without prompts (a chunk in the steps or rounds, or a whole prefill stalling the
        decodes); its variance over ``n`` tokens is ``prefill_var / n`` (:meth:`_tpot_share`). No more requests
        decode at once than the batch limits and the KV cache (``kv_tokens`` at the mean context) hold: the
        others wait for a place (TTFT).
        """
        pp = len(split)
        limit = menu.max_num_seqs
        if rounds is not None:
            bare = self._pipe_round(sc, split, self._batch_of(lam, tpot), limit, budget, 0.0).tpot

            def curve(batch: float, arriving: bool) -> float:
                # the prompts reach an engine at the arrival rate, whatever the batch: a round of length T takes
                # in rate x T / pp of them (one step of the fixed point from Little's, exact at the steady batch)
                if not arriving:
                    return self._pipe_round(sc, split, batch, limit, budget, 0.0).tpot
                guess = self._pipe_round(sc, split, batch, limit, budget).tpot
                return self._pipe_round(sc, split, batch, limit, budget, lam * guess / pp).tpot
        else:
            bare = step
            stretch = 1.0 / max(1.0 - rho, 1e-3)

            def curve(batch: float, arriving: bool) -> float:
                decode = self._step(sc, split, _seen(batch, pp, limit), _busy(batch, pp))
                return decode * stretch if arriving else decode
        delay = max(tpot - bare, 0.0)  # the prompts' delay per token
        per_token = lam * tpot  # prompts arriving per token
        var = delay**2 * (1.0 + self._prompt_cv2) / per_token if per_token > 0 else 0.0
        held = kv_tokens / max(self.stats.ctx_occupancy, 1.0) if kv_tokens > 0 else math.inf
        return TpotSpread(rate=lam, limit=max(min(float(limit * pp), held), 1.0), prefill_var=var, curve=curve)

    def _batch_of(self, lam: float, tpot: float) -> float:
        """Requests in service at ``lam`` requests/s decoding at ``tpot`` (:meth:`WorkloadStats.concurrency`)."""
        return max(self.stats.concurrency(lam, self.stats.mean_output * tpot), 1.0)

    def _latency(self, sc: ShapeCost, split: tuple[int, ...], prompt: int, decodes: int, chunked: bool,
                 budget: int, rounds: PipeRound | None = None) -> float:
        """Seconds from a prompt's first step to its first token: its prefill through every stage, or with
        ``rounds`` (a pipelined replica with chunked prefill) one round of its engine per chunk."""
        if rounds is None:
            return self._prefill(sc, split, prompt, decodes, chunked, budget)[0]
        return math.ceil(max(prompt, 1) / rounds.cap) * rounds.chunk_round

    def _ttft_share(self, sc: ShapeCost, split: tuple[int, ...], wait: float, decodes: int, chunked: bool,
                    budget: int, rounds: PipeRound | None = None) -> float:
        st = self.stats
        if self.slo.ttft is None:
            return 1.0
        bound = self.slo.ttft - wait - self.client_delay
        longest = st.prompts_sorted[-1] if st.prompts_sorted else st.long_prompt
        if bound <= 0:
            return 0.0
        if self._latency(sc, split, longest, decodes, chunked, budget, rounds) <= bound:
            return 1.0
        lo, hi = 0, longest  # prefill(lo) fits (or lo == 0), prefill(hi) does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._latency(sc, split, mid, decodes, chunked, budget, rounds) <= bound:
                lo = mid
            else:
                hi = mid
        return st.share_at_most(lo)

    def _tpot_share(self, tpot: float, spread: TpotSpread | None = None) -> float:
        """Predicted share of requests whose own TPOT is within the SLO's bound (:func:`~apex_opt.planner.attainment.tpot_share`)."""
        return tpot_share(tpot, spread, self.stats, self.slo.tpot, self.slo_slack)

    # ------------------------------------------------------------------------------------------- disaggregated roles
    def estimate_role(self, role: str, key: ShapeKey, menu: Menu, pp: int, dp: int,
                      transfer_s: float = 0.0) -> RoleEstimate:
        """Predict ``dp`` replicas serving one role of a disaggregated deployment (the whole arrival rate).

        ``prefill``: each request is a prefill alone (``max_tokens=1``; no decodes share its iterations): TTFT is
        the queueing wait of an M/D/1 server plus the prompt's prefill through every stage, capacity the rate at
        which the bottleneck stage is always busy. ``decode``: requests arrive with their KV cache and only
        decode: the batch is Little's law's fixed point with no prefill interference; TPOT is the decode step at
        that batch plus the KV transfer (``transfer_s``) spread over the output's gaps.
        """
        sc = self.shape(key)
        st = self.stats
        lam = st.rate / dp
        chunked, budget = self._budget(sc, menu)
        split = default_layer_split(self.model.num_layers, pp)
        gpus = dp * pp * key.tp
        tok_rate = st.rate * st.mean_output
        idle = gpus * self.gpu.power.idle / tok_rate
        nan = math.nan
        if role == "prefill":
            mean_p = max(round(st.mean_prompt), 1)
            # `busy`: the bottleneck stage's seconds per prompt; stages work on different prompts at once, but
            # every prompt passes the bottleneck stage, so it alone bounds the rate (1 / busy per replica)
            busy = self._prefill(sc, split, mean_p, 0, chunked, budget)[1]
            rho = min(lam * busy, 0.999)
            wait = rho / (2 * (1.0 - rho)) * busy
            lat = {p: self._prefill(sc, split, p, 0, chunked, budget)[0] for p in {st.long_prompt, *st.prompt_deciles}}
            ttft = wait + sum(lat[p] for p in st.prompt_deciles) / len(st.prompt_deciles)
            kv_needed = 2 * st.max_request_tokens
            max_layers = self.max_layers(sc, menu, pp, kv_needed)
            e_pre = sc.energy_dynamic(prefill_shape(mean_p, 0, 0, 0.0))
            return RoleEstimate(
                role, split, _fits(split, max_layers), self.kv_capacity(sc, menu, split), kv_needed,
                capacity_rps=dp / max(busy, 1e-12), ttft_s=ttft, ttft_tail_s=wait + lat[st.long_prompt],
                tpot_s=nan, attainment=self._ttft_share(sc, split, wait, 0, chunked, budget), batch=rho,
                energy_per_token_j=idle + e_pre / max(st.mean_output, 1e-9), gpus=gpus)
        if role != "decode":
            raise ValueError(role)
        gap = transfer_s / max(st.mean_output - 1.0, 1.0)
        batch, stable, _, _ = self._fixed_point(sc, split, menu, lam, chunked, budget, prefill=False, gap=gap)
        tpot = self._step(sc, split, _seen(batch, pp, menu.max_num_seqs), _busy(batch, pp)) + gap
        kv_needed = _kv_needed(batch, st)
        max_layers = self.max_layers(sc, menu, pp, kv_needed)
        kv_tokens = self.kv_capacity(sc, menu, split)
        slo_tpot = self.slo.tpot * self.slo_slack if self.slo.tpot else math.inf
        best = self._capacity(sc, split, menu, kv_tokens, chunked, budget, slo_tpot, prefill=False, gap=gap)
        dec_b = decode_shape(max(round(_seen(batch, pp, menu.max_num_seqs)), 1), st.ctx_occupancy)
        e_tok = sc.energy_dynamic(dec_b) / dec_b.num_decodes
        return RoleEstimate(
            role, split, _fits(split, max_layers), kv_tokens, kv_needed, capacity_rps=dp * best, ttft_s=nan,
            ttft_tail_s=nan, tpot_s=tpot if stable else max(tpot, slo_tpot * 2), attainment=self._tpot_share(tpot)
            if stable else 0.0, batch=batch, energy_per_token_j=idle + e_tok, gpus=gpus)

    def _fixed_point(self, sc: ShapeCost, split: tuple[int, ...], menu: Menu, lam: float, chunked: bool,
                     budget: int, *, prefill: bool = True, gap: float = 0.0) -> tuple[float, bool, float, float]:
        """Expected concurrent sequences per replica: ``B = lam * mean_output * TPOT(B)`` (Little's law).

        Returns ``(B, stable, rho, prefill_busy)``: ``rho`` is the share of time prefill work adds to decode
        iterations (TPOT = step / (1 - rho)); ``stable`` is False when no fixed point exists below the batch
        limit (the replica cannot keep up). ``prefill=False``: a decode-only replica (disaggregated), whose
        steps carry no prompt work but ``gap`` more seconds each (the KV transfer spread over the output).
        """
        st = self.stats
        pp = len(split)
        limit = float(menu.max_num_seqs)
        batch = 1.0
        rho = 0.0
        busy = 0.0
        if prefill and chunked and pp > 1:
            # the prompts ride in the virtual engines' steps (:meth:`_pipe_round`): the round is the TPOT;
            # `rho` is the share of an engine's steps that carry a chunk, `busy` one prompt's rounds of chunks
            prompt_rounds = 0.0
            for _ in range(60):
                pr = self._pipe_round(sc, split, batch, menu.max_num_seqs, budget)
                prompt_rounds = st.mean_prompt / pr.chunk * pr.chunk_round
                new = st.concurrency(lam, st.mean_output * (pr.tpot + gap))
                if pr.q >= 1.0 or new > limit:
                    return limit, False, min(pr.q, 0.95), prompt_rounds
                if abs(new - batch) < 1e-3 * max(batch, 1.0):
                    return new, True, pr.q, prompt_rounds
                batch = new
            return batch, True, min(pr.q, 0.95), prompt_rounds
        for _ in range(30):
            n = _seen(batch, pp, menu.max_num_seqs)
            if prefill:
                _, busy = self._prefill(sc, split, max(round(st.mean_prompt), 1), round(n) if chunked else 0,
                                        chunked, budget)
                rho = lam * busy / pp if pp > 1 else lam * busy
            if rho >= 0.95:
                return limit, False, 0.95, busy
            step = self._step(sc, split, n, _busy(batch, pp)) + gap
            new = st.concurrency(lam, st.mean_output * step / (1.0 - rho))
            if new > limit:  # no fixed point below the batch limit: the replica runs full, price it there
                if prefill:
                    n = _seen(limit, pp, menu.max_num_seqs)
                    _, busy = self._prefill(sc, split, max(round(st.mean_prompt), 1), round(n) if chunked else 0,
                                            chunked, budget)
                    rho = min(lam * busy / pp if pp > 1 else lam * busy, 0.95)
                return limit, False, rho, busy
            if abs(new - batch) < 1e-3 * max(batch, 1.0):
                batch = new
                break
            batch = new
        return batch, True, rho, busy

    def _rate_in_service(self, batch: float, decode_s: float, busy_share: float) -> float:
        """The arrival rate at which ``batch`` requests are in service (:meth:`WorkloadStats.concurrency`), each
        decoding for ``decode_s`` seconds stretched by the prefill work ``rate x busy_share`` takes from its steps.

        Little's law solves ``batch = rate x decode_s / (1 - rate x busy_share)`` in closed form; when requests
        outlive the trace fewer are in service at a rate, so the rate is higher, found by bisection up to the rate
        the prefill work saturates the steps (``rate x busy_share = 0.95``)."""
        st = self.stats
        rate = batch / (decode_s + batch * busy_share)  # the steady state
        lifetime = decode_s / max(1.0 - rate * busy_share, 0.05)
        if st.concurrency(1.0, lifetime) >= 0.999 * lifetime:
            return rate  # a trace much longer than a request: Little's law within 0.1%
        if busy_share <= 0:
            return st.rate_for(batch, decode_s)
        lo, hi = rate, 0.95 / busy_share
        if st.concurrency(hi, decode_s / 0.05) < batch:
            return hi  # the prompts' work saturates the steps before that many are in service
        for _ in range(24):
            mid = 0.5 * (lo + hi)
            if st.concurrency(mid, decode_s / (1.0 - mid * busy_share)) < batch:
                lo = mid
            else:
                hi = mid
        return lo

    def _capacity(self, sc: ShapeCost, split: tuple[int, ...], menu: Menu, kv_tokens: int, chunked: bool,
                  budget: int, slo_tpot: float, *, prefill: bool = True, gap: float = 0.0) -> float:
        """Highest arrival rate one replica sustains with TPOT within the SLO (requests/s); ``prefill`` and
        ``gap`` as for :meth:`_fixed_point`."""
        st = self.stats
        pp = len(split)
        # a plan that does not fit has no KV cache to speak of: its capacity is priced on compute alone, so
        # that `capacity` and `memory` stay separate reasons
        kv_batch = kv_tokens / max(st.ctx_occupancy, 1.0) if kv_tokens > 0 else math.inf
        limit = max(min(float(menu.max_num_seqs), kv_batch), 1.0)
        grid = sorted({1.0, limit, *[float(2**k) for k in range(14) if 2**k < limit]})
        if prefill and chunked and pp > 1:
            # the batch at which the virtual engines' steps can just take in the prompts (q = 1 in
            # :meth:`_pipe_round`): B * P / (out * pp) = budget - 1 - B / pp; the last rate the rounds sustain
            intake = pp * (budget - 1) * st.mean_output / (st.mean_prompt + st.mean_output) * (1 - 1e-9)
            grid = sorted({*grid, *([intake] if 1.0 < intake < limit else [])})
        best = 0.0
        for batch in grid:
            if prefill and chunked and pp > 1:  # the prompts ride in the rounds (:meth:`_pipe_round`)
                pr = self._pipe_round(sc, split, batch, menu.max_num_seqs, budget)
                if pr.q >= 1.0 or pr.tpot + gap > slo_tpot:
                    break
                best = max(best, st.rate_for(batch, st.mean_output * (pr.tpot + gap)))
                continue
            n = max(batch / pp, 1.0) if pp > 1 else batch
            step = self._step(sc, split, n, _busy(batch, pp)) + gap
            busy = self._prefill(sc, split, max(round(st.mean_prompt), 1), round(n) if chunked else 0,
                                 chunked, budget)[1] if prefill else 0.0
            busy_share = busy / pp if pp > 1 else busy
            rate = self._rate_in_service(batch, st.mean_output * step, busy_share)
            rho = rate * busy_share
            if step / max(1.0 - rho, 1e-3) > slo_tpot:
                break
            best = max(best, rate)
        return best


@dataclass(frozen=True)
class RoleEstimate:
    """Predictions for the replicas of one role (prefill or decode) of a disaggregated deployment, SI units."""

    role: str
    split: tuple[int, ...]
    fits: bool
    kv_tokens: int
    kv_needed: int
    capacity_rps: float  # highest arrival rate the role's replicas sustain (decode: within the TPOT SLO)
    ttft_s: float  # prefill: mean TTFT; decode: NaN
    ttft_tail_s: float  # prefill: TTFT of the long prompt (the SLO attainment quantile)
    tpot_s: float  # decode: mean TPOT (KV transfer included); prefill: NaN
    attainment: float  # share of requests within this role's SLO bound
    batch: float  # prefill: utilisation; decode: expected concurrent sequences per replica
    energy_per_token_j: float  # this role's GPUs' energy per output token of the workload (idle draw included)
    gpus: int


def _fits(split: tuple[int, ...], max_layers: tuple[int, ...]) -> bool:
    return all(m >= n >= 1 for n, m in zip(split, max_layers))


def with_split(plan: Plan, split: tuple[int, ...]) -> Plan:
    return plan if plan.pp == 1 else replace_plan(plan, layers_per_stage=tuple(split))


def replace_plan(plan: Plan, **fields: Any) -> Plan:
    data = plan.model_dump()
    data.update(fields)
    return Plan(**data)


__all__ = [
    "ConfigEstimate",
    "Estimator",
    "Menu",
    "PipeRound",
    "RoleEstimate",
    "ShapeCost",
    "ShapeKey",
    "StageRoles",
    "WorkloadStats",
    "replace",
]
