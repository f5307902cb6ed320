"""``apex-opt solve``: search the plan space with CP-SAT, verify the best plans by simulation, print launch commands."""

from __future__ import annotations

import math
import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..errors import InfeasibleError, SpecError
from ..hub import is_repo_id
from ..planner.benchmark import Benchmark, benchmark_command, write_files
from ..planner.objectives import OBJECTIVE_NAMES
from ..planner.result import PlanSet
from ..planner.sampling import VERIFY_REQUESTS
from ..planner.solve import solve as run_solve
from ..planner.space import KV_DTYPES, QUANTIZATION
from ..planner.verify import usable_workers
from ..specs import (
    DEFAULT_CLUSTER,
    DEFAULT_ENGINE,
    DEFAULT_MODEL,
    DEFAULT_SLO,
    DEFAULT_WORKLOAD,
    Specs,
    load_specs,
    with_engine_settings,
)
from ..units import format_bytes, format_time
from .options import SLOType, calibration_option, engine_options, executor_options, speculative_option
from .render import echo_json, table


class VerifyRequests(click.ParamType):
    """``--verify-requests N|all``: a whole number of at least 1, or ``all`` (None: every replica simulated)."""

    name = "N|all"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | None:
        if value is None or isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text == "all":
            return None
        if text.isdigit() and int(text) >= 1:
            return int(text)
        self.fail(f"{value!r} is neither a whole number of at least 1 nor 'all'; write e.g. --verify-requests "
                  f"{VERIFY_REQUESTS} (simulate replicas until they cover that many requests) or --verify-requests "
                  "all (simulate every replica)", param, ctx)


@click.command()
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help="catalog name, Hugging Face id (org/name) or path to an HF config.json")
@click.option("--cluster", default=None, help=f"catalog name or cluster YAML file [default: {DEFAULT_CLUSTER}]")
@click.option("--gpu", default=None,
              help="quick cluster form: GPU kind, a catalog name or a GPU YAML file (with --nodes, --gpus-per-node)")
@click.option("--nodes", type=click.IntRange(min=1), default=None, help="quick cluster form: number of nodes")
@click.option("--gpus-per-node", type=click.IntRange(min=1), default=None, help="quick cluster form")
@click.option("--workload", default=DEFAULT_WORKLOAD, show_default=True,
              help="catalog name, trace file or synthetic:... expression")
@click.option("--engine", default=DEFAULT_ENGINE, show_default=True, help="vllm-0.6 | vllm-v1 | sglang-0.4, or an engine YAML file")
@click.option("--slo", type=SLOType(), default=DEFAULT_SLO, show_default=True,
              help="e.g. ttft=200ms,tpot=50ms or ttft.p99=1s,tpot.p90=60ms,attainment=95%")
@click.option("--objective", type=click.Choice(list(OBJECTIVE_NAMES)), default="goodput-per-gpu", show_default=True,
              help="what 'best' means; ties broken by min-tpot, min-ttft, min-energy (docs/planner.md)")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True, help="verified plans to return")
@click.option("--solver", default="cpsat", show_default=True,
              help="cpsat | exhaustive | heuristic, or a .py file defining search(problem)")
@click.option("--constraints", "constraint_files", multiple=True, type=click.Path(dir_okay=False),
              help="Python file of @constraint functions (repeatable)")
@click.option("--quantization", type=click.Choice(QUANTIZATION), default="none", show_default=True,
              help="weight formats allowed besides bf16 (int8, fp4: GPUs with such tensor cores; any: fp8 and "
                   "int4); a checkpoint's own quantization_config is served as stored")
@click.option("--kv-dtype", type=click.Choice(KV_DTYPES), default="bf16", show_default=True, help="KV-cache format")
@click.option("--use-all-gpus", is_flag=True, help="use exactly the cluster's GPUs (default: at most)")
@click.option("--disaggregation", type=click.Choice(["off", "auto", "only"]), default="auto", show_default=True,
              help="auto: also search prefill/decode-disaggregated (xPyD) plans and rank them with the aggregated "
                   "ones; off: aggregated only; only: disaggregated only")
@click.option("--tp-across-nodes", is_flag=True, help="allow tensor-parallel groups to span nodes")
@click.option("--max-requests", type=click.IntRange(min=1), default=None,
              help="plan and simulate on the first N requests only (speed)  [default: all]")
@click.option("--verify-requests", type=VerifyRequests(), default=str(VERIFY_REQUESTS), show_default=True,
              metavar="N|all", help="simulate a plan's identical replicas only as far as they cover N requests "
              "(exact for those; totals scaled to the plan); all: every replica")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="simulation and solver seed")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="parallel simulation processes (results do not depend on it)")
@executor_options
@click.option("--time-limit", type=click.FloatRange(min=0.01), default=None, help="seconds for the CP-SAT search")
@click.option("--max-simulations", type=click.IntRange(min=1), default=None,
              help="stop verifying after N simulations [default: 5 x top-k + 5]")
@click.option("--benchmark-dir", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="write the benchmark's replay files (for a trace workload) there; its result file goes there too")
@click.option("--emit-k8s", "emit_k8s", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="write Kubernetes manifests of the best plan there (Deployment/LeaderWorkerSet + Service)")
@engine_options
@speculative_option(search=True)
@calibration_option
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="FILE.png", help="also draw energy and cost versus TTFT and TPOT of the simulated plans there")
def solve(model: str, cluster: str | None, gpu: str | None, nodes: int | None, gpus_per_node: int | None,
          workload: str, engine: str, slo: Any, objective: str, top_k: int, solver: str,
          constraint_files: tuple[str, ...], quantization: str, kv_dtype: str, use_all_gpus: bool, disaggregation: str,
          tp_across_nodes: bool, max_requests: int | None, verify_requests: int | None, seed: int, workers: int,
          time_limit: float | None, max_simulations: int | None, benchmark_dir: Path | None, fmt: str, cuda_graphs: bool | None,
          attention_backend: str | None, emit_k8s: Path | None,
          measured_at: str, calibration: Path | None, plot_file: Path | None = None,
          speculative: tuple[Any, ...] | None = None, executor: str = "local", ray_address: str | None = None,
          **engine_knobs: Any) -> None:
    """Find the best deployments of a model on a cluster for a workload and SLO, verified by simulation.

    With no options: llama-3.1-70b on 8x H100 (h100x8), the lmsys trace, SLO ttft=200ms,tpot=50ms.
    """
    specs = load_specs(model, cluster, gpu=gpu, nodes=nodes, gpus_per_node=gpus_per_node, engine=engine,
                       workload=workload, slo=slo, calibration=calibration)
    specs = with_engine_settings(specs, cuda_graphs=cuda_graphs, attention_backend=attention_backend,
                                 measured_at=measured_at, **engine_knobs)
    if ray_address is None:  # on a Ray cluster its CPUs, not this machine's, decide how many run at once
        note_workers(workers, max_simulations if max_simulations is not None else 5 * top_k + 5)
    _check_plot_path(plot_file)
    result = _run(specs, progress=fmt == "table", objective=objective, constraints=list(constraint_files),
                  top_k=top_k, solver=solver, quantization=quantization, kv_dtype=kv_dtype, use_all_gpus=use_all_gpus,
                  disaggregation=disaggregation, tp_across_nodes=tp_across_nodes, max_requests=max_requests,
                  verify_requests=verify_requests, seed=seed, workers=workers, time_limit=time_limit,
                  max_simulations=max_simulations, executor=executor, ray_address=ray_address,
                  speculative=_speculative_choices(speculative))
    _write_plot(result, plot_file, specs)
    _write_k8s(result, emit_k8s)
    bench: Benchmark | None = None
    written: list[str] = []
    bench_error: str | None = None
    if result.plans:
        options = _validate_options(cuda_graphs, attention_backend, engine_knobs.get("prefix_caching"), calibration)
        bench, written, bench_error = _benchmark(result, specs, model=model, gpu=gpu, max_requests=max_requests,
                                                 benchmark_dir=benchmark_dir, seed=seed, options=options)
    if fmt == "json":
        _render_json(result, bench, written, bench_error)
        if not result.plans:
            sys.exit(1)
        return
    if not result.plans:
        raise InfeasibleError(unverified_message(result), ("simulation",))
    render_table(result)
    render_benchmark(bench, written, bench_error)


def _check_plot_path(plot_file: Path | None) -> None:
    if plot_file is not None:  # a bad --plot path fails now, not after the solve
        from ..plots import check_path

        check_path(plot_file)


def _speculative_choices(speculative: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
    """--speculative as the planner takes it: one setting, or the settings to choose from (None: also without)."""
    if speculative is None:
        return None
    return speculative if len(speculative) == 1 else (None, *speculative)


def _run(specs: Specs, *, progress: bool, **kw: Any) -> PlanSet:
    """:func:`apex_opt.planner.solve.solve`, with the verification bar on stderr when ``progress`` and stderr is a
    terminal."""
    with VerificationBar(enabled=progress and stderr_is_terminal()) as bar:
        return run_solve(specs, **kw, progress=bar.say if bar.enabled else None,
                         simulation_progress=bar.update if bar.enabled else None)


def _write_plot(result: PlanSet, plot_file: Path | None, specs: Specs) -> None:
    if plot_file is not None:
        from ..plots import plot_solve

        plot_solve(result, plot_file, slo=specs.slo)
        click.echo(f"Wrote {plot_file}", err=True)


def _write_k8s(result: PlanSet, directory: Path | None) -> None:
    """--emit-k8s: the best plan's manifests (a note on stderr when they cannot be written)."""
    if directory is None or not result.plans:
        return
    from ..errors import ApexOptError
    from ..planner.k8s import emit_k8s as write_k8s

    try:
        for path in write_k8s(result, directory):
            click.echo(f"Wrote {path}", err=True)
    except ApexOptError as exc:
        click.echo(f"Note: no Kubernetes manifests: {exc.render('cli')}", err=True)


def _validate_options(cuda_graphs: bool | None, attention_backend: str | None, prefix_caching: bool | None,
                      calibration: Path | None) -> list[str]:
    """The engine and calibration flags of this solve, for the benchmark's validate command."""
    return ([] if cuda_graphs is None else ["--cuda-graphs" if cuda_graphs else "--no-cuda-graphs"]) + \
        ([f"--attention-backend {attention_backend}"] if attention_backend else []) + \
        ([] if prefix_caching is None else ["--prefix-caching" if prefix_caching else "--no-prefix-caching"]) + \
        ([f"--calibration {shlex.quote(str(calibration))}"] if calibration is not None else [])


def _benchmark(result: PlanSet, specs: Specs, *, model: str, gpu: str | None, max_requests: int | None,
               benchmark_dir: Path | None, seed: int, options: list[str]) -> tuple[Benchmark | None, list[str], str | None]:
    """The best plan's benchmark, the files written for it (--benchmark-dir) and why there is none (or None)."""
    gpu_file = gpu if gpu is not None and Path(gpu).suffix.lower() in (".yaml", ".yml", ".json") else None
    workload_run = specs.workload.head(max_requests) if max_requests else specs.workload
    try:
        # a Hugging Face id as the catalog spells it: the client must name the model exactly as the server does
        served = specs.model.hf_repo if is_repo_id(model) and specs.model.hf_repo else model
        bench = benchmark_command(result.plans[0].plan, served, workload_run, engine=specs.engine.name,
                                  directory=benchmark_dir, seed=seed,
                                  gpus_per_node=result.problem.get("gpus_per_node", 8), validate_options=options,
                                  gpu_ref=gpu_file)
    except SpecError as exc:  # an engine no benchmark client is known for: the solve stands without it
        return None, [], exc.render("cli")
    return bench, write_files(bench) if benchmark_dir is not None else [], None


def _render_json(result: PlanSet, bench: Benchmark | None, written: list[str], bench_error: str | None) -> None:
    data = result.to_dict()
    data["benchmark"] = bench.to_dict(written) if bench is not None else \
        ({"error": bench_error} if bench_error else None)
    echo_json(data)


def stderr_is_terminal() -> bool:
    """Whether stderr is a terminal (then solve draws its progress bar there)."""
    return sys.stderr.isatty()


class VerificationBar:
    """The progress bar of solve's verification on stderr: simulations finished of started, elapsed time and
    time left, with the planner's stage lines ("simulating 8 plans: ...") printed above it. Disabled, it does
    nothing; it disappears when the solve ends."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        if enabled:
            self._bar = Progress(TextColumn("[dim]verifying plans by simulation"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("[dim]elapsed"), TimeElapsedColumn(),
                                 TextColumn("[dim]left"), TimeRemainingColumn(),
                                 console=Console(file=sys.stderr, force_terminal=True), transient=True)

    def __enter__(self) -> Self:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def say(self, text: str) -> None:
        """A stage line of the planner, above the bar."""
        if self._bar is not None:
            self._bar.console.print(f"... {text}", style="dim", highlight=False, markup=False)

    def update(self, finished: int, started: int) -> None:
        """The planner's simulation counts (``solve(simulation_progress=...)``)."""
        if self._bar is None:
            return
        if self._task is None:
            self._task = self._bar.add_task("verify", total=started)
        self._bar.update(self._task, completed=finished, total=started)


def render_benchmark(bench: Benchmark | None, written: list[str], error: str | None) -> None:
    """The best plan's benchmark after its launch commands: the client command, then the validate command."""
    out = Console(width=max(150, Console().width), soft_wrap=False)
    if bench is None:
        if error:
            out.print(f"Note: no benchmark command: {escape(error)}", highlight=False)
        return
    out.print(f"\n[bold]Benchmark (then: apex-opt validate --measurements {escape(bench.result_file)} ...):[/bold]")
    out.print(bench.command, highlight=False, soft_wrap=True, markup=False)
    if bench.validate:
        out.print(bench.validate, highlight=False, soft_wrap=True, markup=False)
    for path in written:
        out.print(f"Wrote {path}", highlight=False, markup=False)
    for note in bench.notes:
        out.print(f"Note: {note}", highlight=False, soft_wrap=True, markup=False)


def note_workers(workers: int, simulations: int) -> None:
    """Say so on stderr when --workers asks for more processes than can help (the planner caps them)."""
    useful = usable_workers(workers, simulations)
    if workers <= useful:
        return
    cpus = os.cpu_count() or 1
    why = f"this machine has {cpus} CPU{'s' if cpus != 1 else ''}" if cpus <= simulations else \
        f"at most {simulations} plan{'s are' if simulations != 1 else ' is'} simulated"
    click.echo(f"Note: --workers {workers}: {why}, so {useful} simulation process{'es' if useful != 1 else ''} "
               f"will run", err=True)


def _t(x: Any) -> str:
    return format_time(x) if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def _num(x: Any, fmt: str) -> str:
    return format(x, fmt) if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def render_table(result: PlanSet) -> None:
    out = Console(width=max(150, Console().width), soft_wrap=False)
    prob = result.problem
    rows = []
    for p in result.plans:
        s: Mapping[str, Any] = p.simulated or {}
        pred = p.predicted
        rows.append([
            p.rank,
            escape(p.plan.label),
            p.plan.gpus,
            _t(s.get("ttft_mean_s")),
            _t(s.get("ttft_p99_s")),
            _t(s.get("tpot_mean_s")),
            _t(s.get("tpot_p99_s")),
            _num(s.get("slo_attainment", math.nan) * 100 if "slo_attainment" in s else math.nan, ".1f") + "%",
            _num(s.get("goodput_per_gpu_req_s"), ".3g"),
            _num(s.get("throughput_output_tok_s"), ",.0f"),
            _num(s.get("energy_per_output_token_j"), ".3g"),
            "$" + _num(s.get("cost_per_mtok_usd"), ",.2f"),
            format_bytes(pred.memory_headroom_bytes) if pred.memory_headroom_bytes is not None else "-",
        ])
    title = (f"{prob.get('model')} on {prob.get('gpus')} x {prob.get('gpu')}, {prob.get('workload')} "
             f"({prob.get('requests')} requests, {prob.get('rate_req_s', 0):.3g} req/s), SLO {prob.get('slo')}, "
             f"objective {result.objective.name}")
    out.print(table(title, ["#", "plan", "GPUs", "TTFT", "TTFT p99", "TPOT", "TPOT p99", "SLO met",
                            "goodput/GPU", "tok/s", "J/tok", "$/Mtok out", "free after KV"], rows))
    out.print(f"[bold]Why:[/bold] {escape(result.explanation)}", highlight=False)
    st = result.stats
    out.print(f"Searched {st.candidates} candidate plans with the {result.solver} solver: {st.proven_infeasible} "
              f"proven infeasible, {st.estimated_feasible} estimated feasible, {st.plans_simulated} simulated "
              f"({st.plans_verified} verified, {st.plans_cut} cut) in {st.solve_time_s:.1f} s.", highlight=False)
    for p in result.rejected[:5]:
        out.print(f"  cut: {escape(p.plan.label)}: {escape('; '.join(p.notes))}", highlight=False)
    for note in result.notes:
        out.print(f"Note: {escape(note)}", highlight=False)
    cmds = result.launch_commands()
    if cmds:
        out.print(f"\n[bold]Launch {escape(result.plans[0].plan.label)} with vLLM:[/bold]")
        out.print(cmds["vllm"], highlight=False, soft_wrap=True, markup=False)
        out.print("[bold]or with SGLang:[/bold]")
        out.print(cmds["sglang"], highlight=False, soft_wrap=True, markup=False)


def unverified_message(result: PlanSet) -> str:
    prob = result.problem
    first = (f"no plan for {prob.get('model')} on {prob.get('gpus')} x {prob.get('gpu')} met the SLO "
             f"({prob.get('slo')}) in simulation; {result.stats.plans_simulated} plans were simulated.")
    lines = [first]
    if result.rejected:
        lines.append("The closest ones:")
        for p in result.rejected[:3]:
            lines.append(f"  {p.plan.label}: {'; '.join(p.notes)}")
    lines.append("Try a looser --slo, more GPUs, or --solver exhaustive to simulate every plan that fits.")
    return "\n".join(lines)
