"""``apex-opt simulate``: replay a workload through one plan (or prefill and decode plans) and report what users
would see."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..calibration.profile import resolve_profile
from ..catalog import engine_name, gpu_name
from ..errors import SpecError, shorten
from ..perf.provenance import calibration_notes, calibration_sources
from ..schema.plan import Deployment, Plan, with_speculative
from ..schema.slo import SLO
from ..sim.router import ROUTERS
from ..simulate import simulate as run
from ..specs import Specs, load_specs
from ..units import format_time
from .options import (
    SLOType,
    atomic_output,
    calibration_option,
    check_output_file,
    engine_options,
    limit_options,
    parse_layers,
    plan_options,
    speculative_option,
)
from .render import console, echo_json, table

if TYPE_CHECKING:
    from rich.progress import Progress

    from ..sim import SimResult

#: summary keys shown in the table, with labels
_ROWS = [
    ("requests", "num_completed", "{:,}", "completed"),
    ("requests", "num_rejected", "{:,}", "rejected"),
    ("requests", "num_preemptions", "{:,}", "preemptions"),
]


def _progress_callback(enabled: bool) -> tuple[Progress, Callable[[float], None]] | tuple[None, None]:
    if not enabled:
        return None, None
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("simulating"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                        TimeElapsedColumn(), transient=True, console=console())
    task = progress.add_task("sim", total=1.0)

    def update(fraction: float) -> None:
        progress.update(task, completed=fraction)

    return progress, update


#: what a --prefill / --decode SPEC may set, and a valid form for messages
ROLE_KEYS = ("tp", "dp", "pp", "ep", "gpu")
ROLE_FORM = "tp=4,dp=2[,pp=1,ep=1,gpu=NAME]"
#: what a whole plan spec (``compare PLAN``, ``sweep --plan``) may set besides the shape: text and on/off settings
PLAN_KEYS = (*ROLE_KEYS, "weight_dtype", "kv_dtype", "engine", "max_num_seqs", "max_num_batched_tokens",
             "max_model_len", "chunked_prefill", "cuda_graphs", "attention_backend", "dp_attention")
PLAN_FORM = "tp=4,dp=2[,pp=1,ep=1,gpu=NAME,weight_dtype=fp8,kv_dtype=fp8,engine=vllm-v1,max_num_seqs=N,...]"
_TEXT_KEYS = ("gpu", "weight_dtype", "kv_dtype", "engine", "attention_backend")
_FLAG_KEYS = ("chunked_prefill", "cuda_graphs", "dp_attention")
#: the aggregated plan's shape options, exclusive with --prefill/--decode
SHAPE_OPTIONS = (("tp", "--tp"), ("dp", "--dp"), ("pp", "--pp"), ("ep", "--ep"), ("dp_attention", "--dp-attention"),
                 ("layers_per_stage", "--layers-per-stage"))


def parse_role_spec(option: str, value: str, *, keys: tuple[str, ...] = ROLE_KEYS,
                    form: str = ROLE_FORM) -> dict[str, int | str | bool]:
    """``tp=4,dp=2,gpu=h100-sxm-80gb`` -> ``{"tp": 4, "dp": 2, "gpu": "h100-sxm-80gb"}`` (SpecError when malformed).

    ``keys``: the keys allowed (default: a --prefill/--decode role's; :data:`PLAN_KEYS` for a whole plan, whose
    on/off settings take true/false), ``form``: the valid form shown in messages.

    >>> parse_role_spec("--prefill", "tp=4, dp=2")
    {'tp': 4, 'dp': 2}
    >>> parse_role_spec("--decode", "tp=eight")
    Traceback (most recent call last):
    ...
    apex_opt.errors.SpecError: --decode 'tp=eight': tp must be a positive integer, got 'eight'; use the form ...
    """

    def bad(why: str) -> SpecError:
        return SpecError(f"{option} '{value}': {why}; use the form {form}, e.g. {option} tp=4,dp=2")

    out: dict[str, int | str | bool] = {}
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, val = item.partition("=")
        key, val = key.strip().lower().replace("-", "_"), val.strip()
        if not sep or not val:
            raise bad(f"'{item}' is not key=value")
        if key not in keys:
            raise bad(f"unknown key '{key}' (keys: {', '.join(keys)})")
        if key in out:
            raise bad(f"'{key}' is given twice")
        if key in _TEXT_KEYS:
            out[key] = val
            continue
        if key in _FLAG_KEYS:
            flag = {"true": True, "on": True, "yes": True, "1": True, "false": False, "off": False, "no": False,
                    "0": False}.get(val.lower())
            if flag is None:
                raise bad(f"{key} must be true or false, got '{val}'")
            out[key] = flag
            continue
        try:
            number = int(val)
        except ValueError:
            number = 0
        if number < 1:
            raise bad(f"{key} must be a positive integer, got '{val}'")
        out[key] = number
    if not out:
        raise bad("it is empty")
    return out


def write_requests(result: SimResult, path: Path) -> int:
    """One JSON object per request: request_id, replica, arrival_s, first_token_s, finish_s, prompt_tokens,
    output_tokens, and rejected (with the reason) where it was; disaggregated runs add decode_replica,
    kv_transfer_start_s and kv_transfer_end_s (``replica`` is the prefill replica); with prefix caching,
    cached_tokens (prompt tokens found in the prefix cache)."""
    rec = result.records
    disagg = bool((rec.decode_replica >= 0).any()) or "num_kv_transfers" in result.summary_values
    caching = "prefix_cache_hit_rate" in result.summary_values
    n = 0
    with atomic_output(path) as f:  # a temporary name, renamed at the end: never a partial file
        for i in range(len(rec)):
            row = {
                "request_id": rec.request_ids[i],
                "replica": int(rec.replica[i]),
                "arrival_s": float(rec.arrival_s[i]),
                "first_token_s": None if math.isnan(rec.first_token_s[i]) else float(rec.first_token_s[i]),
                "finish_s": None if math.isnan(rec.finish_s[i]) else float(rec.finish_s[i]),
                "prompt_tokens": int(rec.prompt_tokens[i]),
                "output_tokens": int(rec.generated[i]),
            }
            if caching:
                row["cached_tokens"] = int(rec.cached_tokens[i])
            if disagg:
                row["decode_replica"] = None if rec.decode_replica[i] < 0 else int(rec.decode_replica[i])
                for key in ("kv_transfer_start_s", "kv_transfer_end_s"):
                    v = float(getattr(rec, key)[i])
                    row[key] = None if math.isnan(v) else v
            if rec.rejected[i]:
                row["rejected"] = True
                row["reject_reason"] = rec.reject_reason[i]
            if rec.truncated[i]:
                row["truncated"] = True
            f.write(json.dumps(row) + "\n")
            n += 1
    return n


def deployment_options(func: Callable) -> Callable:
    """The options that name a model, a cluster and a plan (or --prefill/--decode instances) on it, the workload
    and the engine settings: shared by ``simulate`` and ``capacity`` and turned into specs and a plan by
    :func:`build_deployment`."""
    options: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.option("--model", default="llama-3.1-70b", show_default=True,
                     help="catalog name, Hugging Face id (org/name) or path to an HF config.json"),
        click.option("--gpu", default="h100-sxm-80gb", show_default=True,
                     help="GPU kind: a catalog name or a GPU YAML file (or give --cluster)"),
        click.option("--cluster", default=None, help="catalog cluster or cluster YAML (default: nodes of 8 --gpu)"),
        click.option("--nodes", type=click.IntRange(min=1), default=None, help="nodes in the quick-form cluster"),
        click.option("--gpus-per-node", type=click.IntRange(min=1), default=None, help="GPUs per node (quick form)"),
        plan_options,
        click.option("--workload", default="lmsys", show_default=True,
                     help="catalog name, trace .jsonl/.csv, or synthetic:rate=..,requests=..,prompt=..,output=.."),
        limit_options,
        engine_options,
        click.option("--prefill", "prefill_spec", default=None, metavar="SPEC",
                     help=f"disaggregated: the prefill instances, {ROLE_FORM} (with --decode; not with --tp/--dp)"),
        click.option("--decode", "decode_spec", default=None, metavar="SPEC",
                     help=f"disaggregated: the decode instances, {ROLE_FORM} (with --prefill)"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def build_deployment(ctx: click.Context, *, model: str, gpu: str, cluster: str | None, nodes: int | None,
                     gpus_per_node: int | None, tp: int, pp: int, dp: int, ep: int, dp_attention: bool,
                     layers_per_stage: str | None, weight_dtype: str, kv_dtype: str, engine: str, workload: str,
                     chunked_prefill: bool | None, max_num_batched_tokens: int | None, max_num_seqs: int | None,
                     gpu_memory_utilization: float | None, max_model_len: int | None, cuda_graphs: bool | None,
                     attention_backend: str | None, prefill_spec: str | None, decode_spec: str | None,
                     slo: SLO | None) -> tuple[Specs, Plan | Deployment]:
    """The specs and the plan (or disaggregated Deployment) that the :func:`deployment_options` name; the quick-form
    cluster is sized to the plan. SpecError on contradictory options."""
    gpu_file, gpu = gpu, gpu_name(gpu)  # --gpu FILE.yaml: plans name the GPU by the file's name
    engine_file, engine = engine, engine_name(engine)  # --engine FILE.yaml: likewise
    common: dict[str, Any] = {
        "gpu": gpu, "engine": engine, "weight_dtype": weight_dtype, "kv_dtype": kv_dtype,
        "chunked_prefill": chunked_prefill, "max_num_batched_tokens": max_num_batched_tokens,
        "max_num_seqs": max_num_seqs, "gpu_memory_utilization": gpu_memory_utilization,
        "max_model_len": max_model_len, "cuda_graphs": cuda_graphs, "attention_backend": attention_backend}
    plan: Plan | Deployment
    if prefill_spec is not None or decode_spec is not None:
        if prefill_spec is None or decode_spec is None:
            given_opt, missing = ("--prefill", "--decode") if decode_spec is None else ("--decode", "--prefill")
            raise SpecError(f"{given_opt} needs {missing} too: a disaggregated deployment has prefill and decode "
                            f"instances, e.g. --prefill tp=4,dp=2 --decode tp=8,dp=1")
        source = click.core.ParameterSource
        shape = [flag for name, flag in SHAPE_OPTIONS
                 if ctx.get_parameter_source(name) not in (source.DEFAULT, source.DEFAULT_MAP, None)]
        if shape:
            raise SpecError(f"{'/'.join(shape)} set the shape of an aggregated plan and cannot be combined with "
                            "--prefill/--decode; give tp, dp, pp and ep inside the specs, e.g. --prefill tp=4,dp=2 "
                            "--decode tp=8,dp=1")
        plans = []
        for role, option, value in (("prefill", "--prefill", prefill_spec), ("decode", "--decode", decode_spec)):
            fields = {**common, **parse_role_spec(option, value), "role": role}
            plans.append(Plan.parse(fields, source=f"{option} {value}", kind="plan"))
        plan = Deployment(plans=tuple(plans))
    else:
        plan = Plan.parse({**common, "tp": tp, "pp": pp, "dp": dp, "ep": ep, "dp_attention": dp_attention,
                           "layers_per_stage": parse_layers(layers_per_stage)}, source="command line", kind="plan")
    if cluster is None:
        per_node = gpus_per_node or 8
        nodes = nodes or max(1, -(-plan.gpus // per_node))
        specs = load_specs(model, gpu=gpu_file, nodes=nodes, gpus_per_node=per_node, engine=engine_file, workload=workload,
                           slo=slo or SLO())
    else:
        if nodes is not None or gpus_per_node is not None:
            raise SpecError("--nodes/--gpus-per-node describe a quick-form cluster; drop them or --cluster")
        specs = load_specs(model, cluster, engine=engine_file, workload=workload, slo=slo or SLO())
        gpu_given = ctx.get_parameter_source("gpu") not in (click.core.ParameterSource.DEFAULT,
                                                            click.core.ParameterSource.DEFAULT_MAP, None)
        if gpu_given and gpu not in specs.gpus:
            raise SpecError(f"--gpu {shorten(gpu_file)} is not a GPU of --cluster {shorten(cluster)} (its GPUs: "
                            f"{', '.join(specs.gpus)}); give one or the other, or --gpu {specs.cluster.gpu}")
        if isinstance(plan, Deployment):
            for p in plan.plans:
                if p.gpu != gpu and p.gpu not in specs.gpus:
                    raise SpecError(f"--{p.role} gpu={shorten(p.gpu)} is not a GPU of --cluster {shorten(cluster)} "
                                    f"(its GPUs: {', '.join(specs.gpus)}); drop gpu= or use one of them")
            plan = Deployment(plans=tuple(p if p.gpu in specs.gpus else p.model_copy(update={"gpu": specs.cluster.gpu})
                                          for p in plan.plans))
        elif gpu not in specs.gpus:
            plan = plan.model_copy(update={"gpu": specs.cluster.gpu})
    if plan.gpus > specs.cluster.total_gpus:
        fix = "lower tp/dp/pp in --prefill/--decode" if isinstance(plan, Deployment) else "Lower --dp/--tp/--pp"
        raise SpecError(f"plan {plan.label} needs {plan.gpus} GPUs; cluster '{specs.cluster.name}' has "
                        f"{specs.cluster.total_gpus}. {fix} or add --nodes")
    return specs, plan


@click.command()
@deployment_options
@click.option("--router", type=click.Choice(list(ROUTERS)), default="round-robin",
              show_default=True, help="spreads arrivals over the replicas (disaggregated: the prefill instances)")
@click.option("--decode-router", type=click.Choice(["round-robin", "least-loaded", "random"]),
              default="least-loaded", show_default=True,
              help="disaggregated: picks the decode instance of each prefilled request")
@click.option("--slo", type=SLOType(), default=None, help="e.g. ttft=200ms,tpot.p90=50ms,attainment=95%")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--max-requests", type=click.IntRange(min=1), default=None, help="replay only the first N requests")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--requests-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write one JSON object per request to this .jsonl file")
@speculative_option(search=False)
@calibration_option
@click.pass_context
def simulate(ctx: click.Context, model: str, gpu: str, cluster: str | None, nodes: int | None,
             gpus_per_node: int | None, tp: int, pp: int, dp: int, ep: int, dp_attention: bool,
             layers_per_stage: str | None, weight_dtype: str, kv_dtype: str, engine: str, workload: str,
             chunked_prefill: bool | None, max_num_batched_tokens: int | None, max_num_seqs: int | None,
             gpu_memory_utilization: float | None, max_model_len: int | None, prefill_spec: str | None,
             decode_spec: str | None, router: str, decode_router: str, slo: SLO | None, seed: int,
             max_requests: int | None, fmt: str, requests_out: Path | None, cuda_graphs: bool | None,
             attention_backend: str | None, measured_at: str, calibration: Path | None,
             speculative: tuple[Any, ...] | None = None, **engine_knobs: Any) -> None:
    """Replay a workload through one plan, iteration by iteration, and report TTFT, TPOT, ITL, e2e latency,
    throughput, goodput and SLO attainment, KV use, preemptions, MFU, energy and cost.

    With --prefill and --decode the cluster is split into prefill and decode instances (disaggregated serving,
    each with its own tp/pp/ep/dp): prompts are prefilled on the prefill instances, their KV caches are sent over
    the cluster's links to the decode instances, which generate the rest, e.g.
    --prefill tp=4,dp=2 --decode tp=8,dp=1.
    """
    _check_inputs(requests_out, speculative)
    specs, plan = build_deployment(
        ctx, model=model, gpu=gpu, cluster=cluster, nodes=nodes, gpus_per_node=gpus_per_node, tp=tp, pp=pp, dp=dp,
        ep=ep, dp_attention=dp_attention, layers_per_stage=layers_per_stage, weight_dtype=weight_dtype,
        kv_dtype=kv_dtype, engine=engine, workload=workload, chunked_prefill=chunked_prefill,
        max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs,
        gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len, cuda_graphs=cuda_graphs,
        attention_backend=attention_backend, prefill_spec=prefill_spec, decode_spec=decode_spec, slo=slo)
    specs = dataclasses.replace(specs, calibration=resolve_profile(calibration))
    if speculative:
        plan = with_speculative(plan, speculative[0])
    result = _run(specs, plan, fmt == "table" and sys.stderr.isatty(), router=router, decode_router=decode_router,
                  seed=seed, max_requests=max_requests, measured_at=measured_at, **engine_knobs)
    summary = result.summary()
    if requests_out is not None:
        write_requests(result, requests_out)
    failed = no_completion(result, summary)
    if fmt == "json":
        _render_json(specs, plan, summary, failed)
    elif failed:
        click.echo(f"Error: {failed}", err=True)
    else:
        _render_table(result, specs, plan, summary, requests_out)
    if failed:
        ctx.exit(1)


def _check_inputs(requests_out: Path | None, speculative: tuple[Any, ...] | None) -> None:
    """Fail before the simulation on a --requests-out path that cannot be written or a --speculative search."""
    if requests_out is not None:
        check_output_file("--requests-out", requests_out)  # before the simulation, not after it
    if speculative is not None and len(speculative) > 1:
        raise click.BadParameter("k=auto is for solve; simulate one setting, e.g. eagle:k=3,acceptance=0.7",
                                 param_hint="'--speculative'")


def _run(specs: Specs, plan: Plan | Deployment, show_progress: bool, **kw: Any) -> SimResult:
    """:func:`apex_opt.simulate.simulate`, with a progress bar when ``show_progress``."""
    progress, callback = _progress_callback(show_progress)
    if progress is None:
        return run(specs, plan, **kw)
    with progress:
        return run(specs, plan, progress=callback, **kw)


def _render_json(specs: Specs, plan: Plan | Deployment, summary: Mapping[str, Any], failed: str | None) -> None:
    echo_json({"plan": plan.model_dump(mode="json"), "label": plan.label, "model": specs.model.name,
               "cluster": specs.cluster.name, "workload": specs.workload.name, "engine": specs.engine.name,
               "slo": specs.slo.describe() if not specs.slo.is_empty else None, **summary,
               "calibration": calibration_sources(specs.gpus.values(), specs.calibration),
               "notes": calibration_notes(specs.gpus.values(), specs.calibration),
               **({"error": failed} if failed else {})})


def _render_table(result: SimResult, specs: Specs, plan: Plan | Deployment, s: Mapping[str, Any],
                  requests_out: Path | None) -> None:
    """The latency table, then a line per aspect of the run (throughput, rate, load, ..., notes)."""
    out = console()
    rows = [[name, *(format_time(s[f"{key}_{k}_s"]) for k in ("mean", "p50", "p90", "p99"))]
            for name, key in (("TTFT", "ttft"), ("TPOT", "tpot"), ("ITL", "itl"), ("e2e latency", "e2e"))]
    label, gpu_name = _plan_label(specs, plan)
    out.print(table(f"{specs.model.name} on {label} ({gpu_name}, {specs.engine.name}), "
                    f"workload {specs.workload.name}: {s['num_completed']:,} of {s['num_requests']:,} requests",
                    ["latency", "mean", "p50", "p90", "p99"], rows))
    lines = [*_summary_lines(s), *_feature_lines(result, specs, s)]
    if "slo_attainment" in s and not specs.slo.is_empty:
        lines.append(f"SLO          {specs.slo.describe()}: attainment {s['slo_attainment'] * 100:.1f}%, goodput "
                     f"{s['goodput_req_s']:.2f} req/s, {'met' if s['slo_met'] else 'MISSED'}")
    if requests_out is not None:
        lines.append(f"requests     written to {requests_out}")
    lines += [f"note         {note}" for note in calibration_notes(specs.gpus.values(), specs.calibration)]
    for line in lines:
        out.print(line, highlight=False)


def _plan_label(specs: Specs, plan: Plan | Deployment) -> tuple[str, str]:
    """The plan's label for the table title (each instance's, with its GPU when they differ) and its GPU kinds."""
    if isinstance(plan, Deployment):
        kinds = {p.gpu for p in plan.plans}
        label = " + ".join(p.label if len(kinds) == 1 else f"{p.label} on {p.gpu}" for p in plan.plans)
        return label, ", ".join(sorted(kinds))
    return plan.label, specs.gpu.name


def _summary_lines(s: Mapping[str, Any]) -> list[str]:
    """The lines every run has: throughput, rate, load, engine, hardware, energy and cost."""
    return [
        (f"throughput   {s['throughput_output_tok_s']:,.0f} output tok/s, {s['throughput_req_s']:.2f} req/s "
         f"over {format_time(s['makespan_s'])}"),
        rate_line(s),
        (f"load         batch {s['batch_size_mean']:.1f} mean / {s['batch_size_max']} max, queue "
         f"{s['queue_len_mean']:.1f} mean / {s['queue_len_max']} max, KV use {s['kv_util_mean'] * 100:.1f}% mean / "
         f"{s['kv_util_max'] * 100:.1f}% max"),
        (f"engine       {s['num_preemptions']} preemptions, {s['num_rejected']} rejected, {s['num_truncated']} "
         f"truncated"),
        (f"hardware     MFU {s['mfu'] * 100:.1f}%, memory-bandwidth use {s['mbu'] * 100:.1f}%, busy "
         f"{s['busy_fraction'] * 100:.0f}%"),
        f"energy       {s['energy_j'] / 3.6e6:.2f} kWh, {s['energy_per_output_token_j']:.2f} J per output token",
        (f"cost         {s['gpu_hours']:.2f} GPU-hours, ${s['cost_usd']:.2f}, ${s['cost_per_mtok_usd']:.2f} per "
         "million output tokens"),
    ]


def _feature_lines(result: SimResult, specs: Specs, s: Mapping[str, Any]) -> list[str]:
    """The lines of the features this run used: prefix caching, speculative decoding, disaggregation."""
    lines = []
    if "prefix_cache_hit_rate" in s:
        note = "" if getattr(specs.workload, "segments", None) is not None else \
            " (the workload describes no shared prefixes)"
        lines.append(f"prefix cache {s['prefix_cache_hit_rate'] * 100:.1f}% of prompt tokens hit{note}")
    if "spec_tokens_per_step" in s:
        lines.append(f"speculative  {s['spec_tokens_per_step']:.2f} tokens per verify step (bonus token included)")
    if "num_kv_transfers" in s:
        lines += _kv_transfer_lines(result, s)
    return lines


def _kv_transfer_lines(result: SimResult, s: Mapping[str, Any]) -> list[str]:
    """Disaggregated runs: the KV transfers, then a line per role (instances and how busy they were)."""
    lines = [
        (f"KV transfer  {s['num_kv_transfers']:,} transfers, {s['kv_transfer_bytes'] / 2**30:,.1f} GiB, "
         f"{format_time(s['kv_transfer_mean_s'])} mean / {format_time(s['kv_transfer_p99_s'])} p99, "
         f"{format_time(s['kv_transfer_wait_mean_s'])} mean wait for decode memory and links")]
    for role in ("prefill", "decode"):
        reps = [r for r in result.per_replica if r.get("role") == role]
        busy = sum(r["busy_fraction"] for r in reps) / len(reps)
        lines.append(f"{role:<12} {len(reps)} instance{'s' if len(reps) != 1 else ''}, busy {busy * 100:.0f}%")
    return lines


#: why the engine turned a request away (``RequestRecords.reject_reason``), and what would let it in
_REJECTED = {
    "prompt_limit": ("the prompt is longer than the engine's limit (max_model_len or the token budget)",
                     "raise --max-model-len or --max-num-batched-tokens, or use shorter prompts"),
    "length": ("prompt plus output exceed max_model_len", "raise --max-model-len or ask for fewer output tokens"),
    "kv": ("the prompt does not fit in the KV cache",
           "use more GPUs per replica (--tp/--pp), fp8 weights or --kv-dtype fp8"),
}


def no_completion(result: SimResult, summary: Mapping[str, Any]) -> str | None:
    """None when some request completed; otherwise the reason, e.g. every request was rejected, and a fix."""
    if summary.get("num_completed"):
        return None
    total = int(summary.get("num_requests") or 0)
    rec = result.records
    reasons: dict[str, int] = {}
    for i in range(len(rec)):
        if rec.rejected[i]:
            reasons[rec.reject_reason[i] or "other"] = reasons.get(rec.reject_reason[i] or "other", 0) + 1
    if not reasons:
        return (f"no request completed: none of the {total:,} requests finished within the simulation, so there is "
                "no throughput or energy per token to report; replay more of the workload (drop --max-requests) "
                "or give the plan more GPUs")
    top = max(reasons, key=lambda k: reasons[k])
    why, fix = _REJECTED.get(top, ("the engine could not admit it", "check the plan's limits"))
    return (f"no request completed: the engine rejected {sum(reasons.values()):,} of {total:,} requests "
            f"({reasons[top]:,} because {why}), so there is no throughput or energy per token to report; {fix}")


def rate_line(s: Mapping[str, Any]) -> str:
    """Offered vs served request rate, and a plain warning when the plan cannot keep up."""
    if math.isnan(s.get("offered_rate_req_s", math.nan)):
        return "rate         too few arrivals to compare offered and served load"
    line = f"rate         offered {s['offered_rate_req_s']:.2f} req/s, served {s['served_rate_req_s']:.2f} req/s"
    if s.get("saturated"):
        line += (f": SATURATED, the queue of requests waiting for admission grows by {s['queue_growth_req_s']:.2f} "
                 "req/s while requests arrive "
                 "(queueing delays grow with the length of the run; latencies are not steady-state)")
    return line
