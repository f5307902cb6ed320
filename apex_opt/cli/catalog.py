"""``apex-opt catalog``: list what is built in."""

from __future__ import annotations

from collections.abc import Callable

import click
from rich import box
from rich.console import Console

from .. import catalog as cat
from .render import console, echo_json, table

KINDS = ("models", "gpus", "clusters", "engines", "workloads")


def _models() -> tuple[list[str], list[dict]]:
    rows = []
    for m in cat.MODELS:
        rows.append(
            {
                "name": m.name,
                "architecture": m.architecture,
                "total_params": m.total_params,
                "active_params": m.active_params,
                "layers": m.num_layers,
                "hidden_size": m.hidden_size,
                "attention": "mla" if m.is_mla else f"gqa {m.num_heads}/{m.num_kv_heads}",
                "experts": f"{m.moe.num_experts} (top {m.moe.top_k}, {m.moe.num_shared_experts} shared)" if m.moe else "",
                "max_context": m.max_position_embeddings,
                "hf_repo": m.hf_repo,
                "hf_aliases": list(m.hf_aliases),
            }
        )
    return ["name", "architecture", "total_params", "active_params", "layers", "attention", "experts"], rows


def _gpus() -> tuple[list[str], list[dict]]:
    from ..perf.provenance import calibration_source

    rows = []
    for g in cat.GPUS:
        rows.append(
            {
                "name": g.name,
                "memory_gib": round(g.memory / 2**30, 1),
                "memory_bandwidth_tbps": round(g.memory_bandwidth / 1e12, 2),
                "bf16_tflops": round(g.peak("bf16") / 1e12, 1),
                "fp8_tflops": round(g.peak_flops["fp8"] / 1e12, 1) if "fp8" in g.peak_flops else None,
                "link": f"{g.intra_node.kind.replace('infinity-fabric', 'xgmi')} {g.intra_node.bandwidth / 1e9:.0f}",
                "power_w": f"{g.power.idle:.0f}-{g.power.max:.0f}",
                "price_per_hour": g.price_per_hour,
                "calibration": calibration_source(g)["source"],
                "calibration_detail": calibration_source(g)["describe"],
            }
        )
    cols = ["name", "memory_gib", "memory_bandwidth_tbps", "bf16_tflops", "fp8_tflops", "link", "price_per_hour",
            "calibration"]
    return cols, rows


#: short table headers of ``catalog gpus`` so the table reads at 80 columns (the JSON keeps the long keys)
_GPU_HEADERS = {"memory_gib": "GiB", "memory_bandwidth_tbps": "TB/s", "bf16_tflops": "bf16 TF", "fp8_tflops": "fp8 TF",
                "link": "link GB/s", "price_per_hour": "$/h", "calibration": "calib."}


def _billions(n: object) -> str:
    """A parameter count in billions, to three significant figures: 8.03B, 70.6B, 671B, 1,026B."""
    if not isinstance(n, (int, float)):
        return ""
    b = n / 1e9
    return f"{b:.2f}B" if b < 10 else f"{b:.1f}B" if b < 100 else f"{b:,.0f}B"


def _experts(row: dict) -> str:
    moe = cat.MODELS.get(row["name"]).moe
    if moe is None:
        return ""
    return f"{moe.num_experts}{f'+{moe.num_shared_experts}' if moe.num_shared_experts else ''} top-{moe.top_k}"


def _num(value: object, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


#: the 80-column tables of ``catalog models|clusters|engines|workloads``: (legend after the title, columns as
#: (header, cell of a row)); ``--format json`` keeps every field, unrounded, under its long key
_TABLES: dict[str, tuple[str, list[tuple[str, Callable[[dict], str]]]]] = {
    "models": (("params = all weights, active = used per token, in billions (B); experts: routed+shared, top-k "
                "routed per token"), [
                   ("name", lambda r: r["name"]), ("arch", lambda r: r["architecture"]),
                   ("params", lambda r: _billions(r["total_params"])),
                   ("active", lambda r: _billions(r["active_params"])),
                   ("layers", lambda r: str(r["layers"])), ("attention", lambda r: r["attention"]),
                   ("experts", _experts),
               ]),
    "clusters": ("network: scale-out bandwidth per GPU", [
        ("name", lambda r: r["name"]), ("GPUs", lambda r: str(r["gpus"])), ("nodes x GPUs", lambda r: r["nodes"]),
        ("network Gb/s", lambda r: r["network"].removesuffix(" per GPU").removesuffix("Gb/s")),
    ]),
    "engines": ("budget: tokens per step (chunked prefill); block: KV-cache block in tokens", [
        ("name", lambda r: r["name"]), ("family", lambda r: r["family"]), ("version", lambda r: r["version"]),
        ("chunked", lambda r: str(r["chunked_prefill"])), ("budget", lambda r: _num(r["token_budget"], ",")),
        ("max seqs", lambda r: _num(r["max_num_seqs"], ",")), ("block", lambda r: _num(r["block_size"], "")),
        ("CUDA graphs", lambda r: r["cuda_graphs"]),
    ]),
    "workloads": ("prompt and output: mean tokens per request; descriptions: --format json", [
        ("name", lambda r: r["name"]), ("requests", lambda r: _num(r["requests"], ",")),
        ("prompt", lambda r: _num(r["mean_prompt"], ",.0f")), ("output", lambda r: _num(r["mean_output"], ",.0f")),
        ("req/s", lambda r: _num(r["rate"], ".2f")), ("tokenizer", lambda r: str(r.get("tokenizer_family") or "")),
    ]),
}
#: columns of words, aligned left (numbers align right)
_TEXT_COLUMNS = {"arch", "attention", "experts", "nodes x GPUs", "network Gb/s", "family", "chunked", "CUDA graphs",
                 "tokenizer"}


def _clusters() -> tuple[list[str], list[dict]]:
    rows = []
    for c in cat.CLUSTERS:
        rows.append(
            {
                "name": c.name,
                "gpus": c.total_gpus,
                "nodes": " + ".join(f"{g.count}x{g.gpus_per_node} {g.gpu}" for g in c.nodes)
                + (f", NVLink {c.nvlink_domain}" if c.nvlink_domain else ""),  # one switch fabric across nodes
                "network": f"{c.network.kind} {c.network.bandwidth_per_gpu * 8 / 1e9:.0f}Gb/s per GPU",
                "description": c.description,
            }
        )
    return ["name", "gpus", "nodes", "network"], rows


def _engines() -> tuple[list[str], list[dict]]:
    rows = []
    for e in cat.ENGINES:
        rows.append(
            {
                "name": e.name,
                "family": e.family,
                "version": e.version,
                "chunked_prefill": e.scheduler.chunked_prefill,
                "token_budget": e.scheduler.chunked_budget,
                "max_num_seqs": e.scheduler.max_num_seqs,
                "block_size": e.scheduler.block_size,
                "cuda_graphs": e.cuda_graphs.mode if e.cuda_graphs.enabled else "off",
                "description": e.description,
            }
        )
    return ["name", "family", "version", "chunked_prefill", "token_budget", "max_num_seqs", "block_size", "cuda_graphs"], rows


def _workloads() -> tuple[list[str], list[dict]]:
    from ..workload import list_workloads

    rows = list_workloads(cat.specs_dir())
    return list(rows[0].keys())[:6] if rows else ["name"], rows


@click.command()
@click.argument("kind", type=click.Choice(KINDS))
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def catalog(kind: str, fmt: str) -> None:
    """List the built-in models, GPUs, clusters, engines or workloads."""
    columns, rows = {"models": _models, "gpus": _gpus, "clusters": _clusters, "engines": _engines,
                     "workloads": _workloads}[kind]()
    if fmt == "json":
        echo_json(rows)
        return

    def show(col: str, value: object) -> str:
        if col.endswith("_params") and isinstance(value, int):
            return f"{value / 1e9:,.1f}B"
        return "" if value is None else str(value)

    if kind == "gpus":
        t = table(f"gpus ({len(rows)}); calib.: measured = own kernel fit, borrowed = a same-architecture fit, "
                  "roofline = a stand-in's efficiencies (docs/calibration.md)",
                  [_GPU_HEADERS.get(c, c) for c in columns],
                  [[show(c, r.get(c)) for c in columns] for r in rows])
        t.box, t.pad_edge, t.show_edge, t.collapse_padding = box.SIMPLE_HEAD, False, False, True
        console().print(t)
        return
    legend, cells = _TABLES[kind]
    t = table(f"{kind} ({len(rows)}): {legend}", [header for header, _ in cells],
              [[cell(r) for _, cell in cells] for r in rows])
    t.box, t.pad_edge, t.show_edge, t.collapse_padding = box.SIMPLE_HEAD, False, False, True
    for column in t.columns:
        if column.header in _TEXT_COLUMNS:
            column.justify = "left"
    Console(soft_wrap=False).print(t)  # the terminal's width (COLUMNS), 80 when not a terminal
