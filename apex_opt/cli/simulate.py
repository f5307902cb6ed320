"""``apex-opt simulate``: replay a workload through one plan and report what users would see."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import click

from ..errors import SpecError
from ..schema.plan import Plan
from ..schema.slo import SLO
from ..simulate import simulate as run
from ..specs import load_specs
from ..units import format_time
from .options import SLOType, parse_layers, plan_options
from .render import console, echo_json, table

#: summary keys shown in the table, with labels
_ROWS = [
    ("requests", "num_completed", "{:,}", "completed"),
    ("requests", "num_rejected", "{:,}", "rejected"),
    ("requests", "num_preemptions", "{:,}", "preemptions"),
]


def _progress_callback(enabled: bool):  # type: ignore[no-untyped-def]
    if not enabled:
        return None, None
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("simulating"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                        TimeElapsedColumn(), transient=True, console=console())
    task = progress.add_task("sim", total=1.0)

    def update(fraction: float) -> None:
        progress.update(task, completed=fraction)

    return progress, update


def write_requests(result, path: Path) -> int:  # type: ignore[no-untyped-def]
    """One JSON object per request: request_id, replica, arrival_s, first_token_s, finish_s, prompt_tokens,
    output_tokens, and rejected (with the reason) where it was."""
    rec = result.records
    n = 0
    with open(path, "w") as f:
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
            if rec.rejected[i]:
                row["rejected"] = True
                row["reject_reason"] = rec.reject_reason[i]
            if rec.truncated[i]:
                row["truncated"] = True
            f.write(json.dumps(row) + "\n")
            n += 1
    return n


@click.command()
@click.option("--model", default="llama-3.1-70b", show_default=True, help="catalog name or path to an HF config.json")
@click.option("--gpu", default="h100-sxm-80gb", show_default=True, help="GPU kind (or give --cluster)")
@click.option("--cluster", default=None, help="catalog cluster or cluster YAML (default: nodes of 8 --gpu)")
@click.option("--nodes", type=click.IntRange(min=1), default=None, help="nodes in the quick-form cluster")
@click.option("--gpus-per-node", type=click.IntRange(min=1), default=None, help="GPUs per node (quick form)")
@plan_options
@click.option("--workload", default="lmsys", show_default=True,
              help="catalog name, trace .jsonl/.csv, or synthetic:rate=..,requests=..,prompt=..,output=..")
@click.option("--chunked-prefill/--no-chunked-prefill", default=None, help="default: the engine's rule")
@click.option("--max-num-batched-tokens", type=click.IntRange(min=1), default=None)
@click.option("--max-num-seqs", type=click.IntRange(min=1), default=None)
@click.option("--gpu-memory-utilization", type=click.FloatRange(min=0.05, max=1.0), default=None)
@click.option("--max-model-len", type=click.IntRange(min=1), default=None)
@click.option("--router", type=click.Choice(["round-robin", "least-loaded", "random"]), default="round-robin",
              show_default=True)
@click.option("--slo", type=SLOType(), default=None, help="e.g. ttft=200ms,tpot.p90=50ms,attainment=95%")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-requests", type=click.IntRange(min=1), default=None, help="replay only the first N requests")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--requests-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write one JSON object per request to this .jsonl file")
def simulate(model: str, gpu: str, cluster: str | None, nodes: int | None, gpus_per_node: int | None, tp: int,
             pp: int, dp: int, ep: int, dp_attention: bool, layers_per_stage: str | None, weight_dtype: str,
             kv_dtype: str, engine: str, workload: str, chunked_prefill: bool | None,
             max_num_batched_tokens: int | None, max_num_seqs: int | None, gpu_memory_utilization: float | None,
             max_model_len: int | None, router: str, slo: SLO | None, seed: int, max_requests: int | None,
             fmt: str, requests_out: Path | None) -> None:
    """Replay a workload through one plan, iteration by iteration, and report TTFT, TPOT, ITL, e2e latency,
    throughput, goodput and SLO attainment, KV use, preemptions, MFU, energy and cost."""
    plan = Plan.parse(
        dict(gpu=gpu, engine=engine, tp=tp, pp=pp, dp=dp, ep=ep, dp_attention=dp_attention,
             layers_per_stage=parse_layers(layers_per_stage), weight_dtype=weight_dtype, kv_dtype=kv_dtype,
             chunked_prefill=chunked_prefill, max_num_batched_tokens=max_num_batched_tokens,
             max_num_seqs=max_num_seqs, gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len),
        source="command line", kind="plan")
    if cluster is None:
        per_node = gpus_per_node or 8
        nodes = nodes or max(1, -(-plan.gpus // per_node))
        specs = load_specs(model, gpu=gpu, nodes=nodes, gpus_per_node=per_node, engine=engine, workload=workload,
                           slo=slo or SLO())
    else:
        if nodes is not None or gpus_per_node is not None:
            raise SpecError("--nodes/--gpus-per-node describe a quick-form cluster; drop them or --cluster")
        specs = load_specs(model, cluster, engine=engine, workload=workload, slo=slo or SLO())
        if gpu not in specs.gpus:
            plan = plan.model_copy(update={"gpu": specs.cluster.gpu})
    if plan.gpus > specs.cluster.total_gpus:
        raise SpecError(f"plan {plan.label} needs {plan.gpus} GPUs; cluster '{specs.cluster.name}' has "
                        f"{specs.cluster.total_gpus}. Lower --dp/--tp/--pp or add --nodes")
    show_progress = fmt == "table" and sys.stderr.isatty()
    progress, callback = _progress_callback(show_progress)
    if progress is not None:
        with progress:
            result = run(specs, plan, router=router, seed=seed, max_requests=max_requests, progress=callback)
    else:
        result = run(specs, plan, router=router, seed=seed, max_requests=max_requests)
    summary = result.summary()
    if requests_out is not None:
        write_requests(result, requests_out)
    if fmt == "json":
        echo_json({"plan": plan.model_dump(mode="json"), "label": plan.label, "model": specs.model.name,
                   "cluster": specs.cluster.name, "workload": specs.workload.name, "engine": specs.engine.name,
                   "slo": specs.slo.describe() if not specs.slo.is_empty else None, **summary})
        return
    out = console()
    s = summary
    rows = [
        ["TTFT", *(format_time(s[f"ttft_{k}_s"]) for k in ("mean", "p50", "p90", "p99"))],
        ["TPOT", *(format_time(s[f"tpot_{k}_s"]) for k in ("mean", "p50", "p90", "p99"))],
        ["ITL", *(format_time(s[f"itl_{k}_s"]) for k in ("mean", "p50", "p90", "p99"))],
        ["e2e latency", *(format_time(s[f"e2e_{k}_s"]) for k in ("mean", "p50", "p90", "p99"))],
    ]
    out.print(table(f"{specs.model.name} on {plan.label} ({specs.gpu.name}, {specs.engine.name}), "
                    f"workload {specs.workload.name}: {s['num_completed']:,} of {s['num_requests']:,} requests",
                    ["latency", "mean", "p50", "p90", "p99"], rows))
    lines = [
        f"throughput   {s['throughput_output_tok_s']:,.0f} output tok/s, {s['throughput_req_s']:.2f} req/s "
        f"over {format_time(s['makespan_s'])}",
        f"load         batch {s['batch_size_mean']:.1f} mean / {s['batch_size_max']} max, queue "
        f"{s['queue_len_mean']:.1f} mean / {s['queue_len_max']} max, KV use {s['kv_util_mean'] * 100:.1f}% mean / "
        f"{s['kv_util_max'] * 100:.1f}% max",
        f"engine       {s['num_preemptions']} preemptions, {s['num_rejected']} rejected, {s['num_truncated']} "
        f"truncated",
        f"hardware     MFU {s['mfu'] * 100:.1f}%, memory-bandwidth use {s['mbu'] * 100:.1f}%, busy "
        f"{s['busy_fraction'] * 100:.0f}%",
        f"energy       {s['energy_j'] / 3.6e6:.2f} kWh, {s['energy_per_output_token_j']:.2f} J per output token",
        f"cost         {s['gpu_hours']:.2f} GPU-hours, ${s['cost']:.2f}",
    ]
    if "slo_attainment" in s and not specs.slo.is_empty:
        lines.append(f"SLO          {specs.slo.describe()}: attainment {s['slo_attainment'] * 100:.1f}%, goodput "
                     f"{s['goodput_req_s']:.2f} req/s, {'met' if s['slo_met'] else 'MISSED'}")
    if requests_out is not None:
        lines.append(f"requests     written to {requests_out}")
    for line in lines:
        out.print(line, highlight=False)
