"""``apex-opt estimate``: the cost model's view of one prefill and one decode iteration of a plan."""

from __future__ import annotations

from pathlib import Path

import click

from ..calibration.profile import active, resolve_profile
from ..catalog import get_engine, get_gpu, get_model, gpu_name
from ..perf.estimate import estimate_replica
from ..perf.replica import build_replica
from ..schema.plan import Plan
from ..units import format_bytes, format_time
from .options import calibration_option, parse_layers, plan_options
from .render import console, echo_json, table


@click.command()
@click.option("--model", default="llama-3.1-70b", show_default=True,
              help="catalog name, Hugging Face id (org/name) or path to an HF config.json")
@click.option("--gpu", default="h100-sxm-80gb", show_default=True, help="catalog GPU name or a GPU YAML file")
@plan_options
@click.option("--batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="sequences in the iteration (prefill: prompts; decode: running sequences)")
@click.option("--context", type=click.IntRange(min=1), default=1024, show_default=True,
              help="prompt length for the prefill, context length for the decode")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@calibration_option
def estimate(model: str, gpu: str, tp: int, pp: int, dp: int, ep: int, dp_attention: bool,
             layers_per_stage: str | None, weight_dtype: str, kv_dtype: str, engine: str, batch: int, context: int,
             fmt: str, calibration: Path | None) -> None:
    """Per-operator time, FLOPs, bytes and roofline share of one prefill and one decode iteration, with the
    memory fit and KV-cache capacity of the plan."""
    model_spec = get_model(model)
    gpu_spec = get_gpu(gpu)
    engine_spec = get_engine(engine)
    plan = Plan.parse({"gpu": gpu_name(gpu), "engine": engine_spec.name, "tp": tp, "pp": pp, "dp": dp, "ep": ep,
                       "dp_attention": dp_attention, "layers_per_stage": parse_layers(layers_per_stage),
                       "weight_dtype": weight_dtype, "kv_dtype": kv_dtype}, source="command line", kind="plan")
    with active(resolve_profile(calibration)):
        replica = build_replica(model_spec, gpu_spec, plan, engine_spec)
        result = estimate_replica(replica, batch=batch, context=context)
    if fmt == "json":
        echo_json(result)
        return
    out = console()
    for kind in ("prefill", "decode"):
        it = result[kind]
        title = (f"{kind}: {it['batch']} x {context} tokens" if kind == "prefill" else
                 f"decode: batch {it['batch']} at context {context}") + \
            f" on {plan.label} ({model_spec.name}, {gpu_spec.name}) = {format_time(it['time_s'])}"
        rows = []
        for op in sorted(it["ops"], key=lambda o: -o["time_s"]):
            share = op["time_s"] / it["time_s"] if it["time_s"] else 0.0
            rows.append([op["name"], op["repeat"], format_time(op["time_s"]), f"{share * 100:.1f}%",
                         f"{op['flops'] / 1e12:.3f}", format_bytes(op["bytes"]),
                         f"{op['roofline_share'] * 100:.0f}%" if op["roofline_share"] else "-"])
        out.print(table(title, ["operator", "x", "time", "share", "TFLOP", "bytes", "roofline"], rows))
    mem = result["memory"]
    verdict = "fits" if mem["fits"] else f"does NOT fit (short by {format_bytes(mem['shortfall_bytes'])} per GPU)"
    out.print(f"memory: {verdict}; {mem['summary']}; batch of {batch} x {context} tokens "
              f"{'fits' if mem['batch_fits_kv'] else 'does not fit'} in the KV cache")
    out.print(f"decode throughput {result['decode_tokens_per_s']:,.0f} tok/s per replica; "
              f"prefill {result['prefill_tokens_per_s']:,.0f} tok/s")
    for note in result["notes"]:
        out.print(f"note: {note}", highlight=False)
