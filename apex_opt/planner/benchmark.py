"""The benchmark that closes the loop: for a plan, the client command that sends the solve's workload to the
deployment, saves a result file ``apex-opt validate --measurements`` reads, and the ``apex-opt validate`` command
that compares it with the simulator.

Clients and their flags (names checked against the clients' sources):

* vLLM V1: ``vllm bench serve`` (``vllm/benchmarks/serve.py``, ``datasets.py``): ``--dataset-name random
  --random-input-len --random-output-len --random-range-ratio`` (lengths uniform on ``[N(1-r), N(1+r)]``),
  ``--request-rate`` (Poisson), ``--burstiness`` (gamma gaps of shape ``burstiness``: coefficient of variation
  ``1/sqrt(burstiness)``), ``--ignore-eos`` (outputs reach the requested length), ``--percentile-metrics
  ttft,tpot,itl,e2el --metric-percentiles 50,90,95,99``, ``--save-result --result-dir --result-filename``; a trace
  goes through ``--dataset-name custom`` (JSONL of ``prompt`` and ``output_tokens`` with ``--custom-output-len
  -1``), which has no arrival times.
* vLLM 0.6: the same flags on ``python benchmarks/benchmark_serving.py`` of a vLLM checkout, whose
  ``--random-range-ratio`` draws on ``[rN, N]`` (1.0: fixed lengths).
* SGLang: ``python -m sglang.bench_serving`` (``sglang/bench_serving.py``): ``--dataset-name random
  --random-input-len --random-output-len --random-range-ratio`` (lengths on ``[rN, N]``), ``--num-prompts
  --request-rate --seed``, ``--output-details`` (per-request lists, for the percentiles its summary lacks),
  ``--output-file`` (JSONL, appended); it ignores EOS unless ``--disable-ignore-eos``. A trace goes through
  ``--dataset-name mooncake --dataset-path F --use-trace-timestamps`` (``sglang/benchmark/datasets/mooncake.py``),
  which replays the arrival times but builds each prompt from its ``hash_ids``, about 128 tokens per id.

>>> from apex_opt.schema.plan import Plan
>>> from apex_opt.workload.synthetic import synthetic_workload
>>> w = synthetic_workload("synthetic:rate=2rps,requests=50,prompt=256,output=64,lengths=fixed,seed=0")
>>> b = benchmark_command(Plan(gpu="h100-sxm-80gb", tp=1, engine="vllm-v1"), "llama-3.1-8b", w, engine="vllm-v1")
>>> print(b.command)  # doctest: +NORMALIZE_WHITESPACE
vllm bench serve --backend vllm --model meta-llama/Llama-3.1-8B-Instruct --port 8000 --dataset-name random
--random-input-len 256 --random-output-len 64 --random-range-ratio 0 --num-prompts 50 --request-rate 2 --seed 0
--ignore-eos --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,90,95,99 --save-result
--result-filename apex-bench-dp1-tp1-pp1.json
>>> b.validate.split(" --workload ")[1]
'synthetic:rate=2rps,requests=50,prompt=256,output=64,arrival=poisson,lengths=fixed,seed=0 --measured-at client'
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SpecError, shorten
from ..schema.plan import Deployment, Plan
from ..workload.model import Workload
from ..workload.synthetic import SyntheticSpec, is_synthetic, parse_synthetic
from .launch import hf_repo

VLLM_PORT = 8000
SGLANG_PORT = 30000
#: where the printed command expects a load balancer in front of separate servers
BALANCER_PORT = 9000
#: tokens per ``hash_ids`` entry when SGLang's mooncake dataset builds a prompt (``"hi"`` repeated 128 times)
MOONCAKE_BLOCK = 128
#: words that most LLM tokenizers (Llama, Qwen, Mistral) count as one token each after a space
_WORDS = ("the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not",
          "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "had", "they", "you")


@dataclass(frozen=True)
class Benchmark:
    """One benchmark run: the client command, the result file it saves, the replay files it needs (path and
    content, written by :func:`write_files`), the ``apex-opt validate`` command that reads the result back (None
    for a deployment validate cannot match) and what differs from apex-opt's workload."""

    client: str
    command: str
    result_file: str
    validate: str | None
    files: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()

    def to_dict(self, written: Sequence[str] = ()) -> dict[str, Any]:
        return {"client": self.client, "command": self.command, "result_file": self.result_file,
                "validate": self.validate, "files": [p for p, _ in self.files], "files_written": list(written),
                "notes": list(self.notes)}


def benchmark_command(plan: Plan | Deployment, model: str, workload: Workload, *, engine: str,
                      directory: str | Path | None = None, seed: int = 0, gpus_per_node: int = 8,
                      validate_options: Sequence[str] = (), gpu_ref: str | None = None) -> Benchmark:
    """The benchmark of ``plan`` (served by ``engine``) on ``workload`` and the validate command for its result.

    Parameters
    ----------
    model: the catalog name or config.json path given to ``apex-opt solve`` (served as :func:`hf_repo` of it).
    workload: what the solve planned for; a synthetic expression becomes the client's random data set, anything
        else (a trace, a catalog trace, shared-prefix traffic) a replay file.
    directory: where the result and replay files go (``--benchmark-dir``); None: the current directory.
    validate_options: extra ``apex-opt validate`` options the solve was priced with (e.g. ``--no-cuda-graphs``,
        ``--calibration FILE``).
    gpu_ref: how validate should name the GPU when the plan's name is not a catalog GPU (the GPU file's path).

    Returns
    -------
    A :class:`Benchmark`; nothing is written (see :func:`write_files`).

    Raises
    ------
    SpecError: an engine no client is known for.
    """
    client = "sglang" if engine.startswith("sglang") else "vllm" if engine.startswith("vllm") else None
    if client is None:
        raise SpecError(f"engine {shorten(engine)}: no benchmark client known for it; apex-opt prints benchmarks "
                        "for vllm-0.6, vllm-v1 and sglang-0.4")
    folder = Path(directory) if directory is not None else None
    slug = plan.label.replace(" + ", "+").replace(" ", "-").replace("[", "").replace("]", "")
    result = f"apex-bench-{slug}.{'jsonl' if client == 'sglang' else 'json'}"
    result_path = str(folder / result) if folder is not None else result
    notes: list[str] = []
    port, endpoint_notes = _endpoint(plan, client, engine, gpus_per_node)
    notes += endpoint_notes
    spec = _synthetic(workload)
    files: list[tuple[str, str]] = []
    old_client = engine == "vllm-0.6" and spec is not None
    if spec is not None:
        dataset, replayed, more = _random_dataset(spec, workload, client, old_client)
        notes += more
    else:
        stem = _stem(workload)
        replay = str((folder or Path()) / f"{stem}.{client}-replay.jsonl")
        apex_trace = str((folder or Path()) / f"{stem}.apex-replay.csv")
        if client == "vllm":
            dataset, text, csv_text, more = _vllm_trace(workload, replay, seed)
        else:
            dataset, text, csv_text, more = _sglang_trace(workload, replay)
        files = [(replay, text), (apex_trace, csv_text)]
        replayed = apex_trace
        notes += more
        if folder is None:
            notes.append(f"the command reads {replay} and validate reads {apex_trace}: pass --benchmark-dir DIR to "
                         "apex-opt solve to write them")
        if engine == "vllm-0.6":
            notes.append("vLLM 0.6's benchmarks/benchmark_serving.py has no custom data set: run this with a newer "
                         "vLLM's vllm bench serve (the client only talks HTTP to the 0.6 server)")
    repo = hf_repo(model)
    if repo.endswith(".json"):
        notes.append(f"--model {repo} is the model's config.json: give the client the model name the server "
                     "serves instead")
    if client == "vllm":
        head = "python benchmarks/benchmark_serving.py" if old_client else "vllm bench serve"
        out = ["--save-result"] + ([f"--result-dir {_q(str(folder))}"] if folder is not None else []) + \
            [f"--result-filename {_q(result)}"]
        command = " ".join([f"{head} --backend vllm --model {_q(repo)} --port {port}", *dataset, f"--seed {seed}",
                            "--ignore-eos", "--percentile-metrics ttft,tpot,itl,e2el",
                            "--metric-percentiles 50,90,95,99", *out])
        if old_client:
            notes.append("vLLM 0.6's client is benchmarks/benchmark_serving.py of a vLLM 0.6 checkout, with the "
                         "flags of vllm bench serve; if the script lacks one, run a newer vLLM's vllm bench serve "
                         "against the 0.6 server (set --random-range-ratio to 0 there: the newer client draws on "
                         "[N(1-r), N(1+r)])")
    else:
        command = " ".join([f"python -m sglang.bench_serving --backend sglang --model {_q(repo)} --port {port}",
                            *dataset, f"--seed {seed}", "--output-details", f"--output-file {_q(result_path)}"])
        notes.append(f"sglang.bench_serving appends one line per run to {result_path}: delete it before a re-run, "
                     "or validate reads every run in it")
    notes += _speculation_notes(plan, spec is not None)
    check = None if isinstance(plan, Deployment) else _validate(plan, model, result_path, replayed, validate_options,
                                                                      gpu_ref)
    if check is None:
        notes.append("apex-opt validate matches one aggregated plan; compare this deployment's result with "
                     "apex-opt simulate's prediction by hand")
    return Benchmark(client, command, result_path, check, tuple(files), tuple(notes))


def write_files(benchmark: Benchmark) -> list[str]:
    """Write the replay files of ``benchmark`` (making their folder); returns their paths."""
    written = []
    for path, text in benchmark.files:
        target = Path(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise SpecError(f"--benchmark-dir: cannot write {shorten(path)} ({exc.strerror}); give a folder you can "
                            "write to") from None
        written.append(path)
    return written


def _q(value: str) -> str:
    return shlex.quote(value)


def _synthetic(workload: Workload) -> SyntheticSpec | None:
    """The synthetic spec of ``workload`` when a client's random data set can send it (no shared prefixes)."""
    if not is_synthetic(workload.source):
        return None
    spec = parse_synthetic(workload.source)
    return spec if spec.shared_prefix is None else None


def _stem(workload: Workload) -> str:
    name = Path(workload.name).stem if not is_synthetic(workload.name) else "synthetic"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:60] or "workload"


def _endpoint(plan: Plan | Deployment, client: str, engine: str, gpus_per_node: int) -> tuple[int, list[str]]:
    """The port the benchmark targets and what the user must know about it."""
    default = SGLANG_PORT if client == "sglang" else VLLM_PORT
    if isinstance(plan, Deployment):
        what = "the PD proxy (vLLM) or PD load balancer (SGLang)" if plan.disaggregated else "the load balancer"
        return BALANCER_PORT, [(f"the benchmark targets {what} in front of the deployment's servers; the command "
                               f"assumes it listens on port {BALANCER_PORT} (change --port)")]
    if plan.dp <= 1:
        return default, []
    if engine == "vllm-0.6" and not plan.dp_attention:
        per = plan.gpus_per_replica
        ports = sorted({VLLM_PORT + r % max(gpus_per_node // per, 1) for r in range(plan.dp)})
        where = f"port {ports[0]}" if len(ports) == 1 else f"ports {ports[0]}-{ports[-1]}"
        return BALANCER_PORT, [(f"vLLM 0.6 runs the {plan.dp} replicas as separate servers ({where} on each node): "
                               f"put a load balancer in front of them and point the benchmark at it; the command "
                               f"assumes it listens on port {BALANCER_PORT} (change --port)")]
    flag = "--dp" if client == "sglang" else "--data-parallel-size"
    return default, [(f"one endpoint: the server ({flag} {plan.dp}) spreads the requests over its {plan.dp} "
                     "data-parallel replicas")]


def _random_dataset(spec: SyntheticSpec, workload: Workload, client: str,
                    old_client: bool) -> tuple[list[str], str, list[str]]:
    """(client flags, the synthetic expression the client really sends, notes) for a synthetic workload."""
    notes: list[str] = []
    lengths = spec.lengths or "lognormal"
    low_high = client == "sglang" or old_client  # the client draws on [rN, N]; vllm bench serve on [N(1-r), N(1+r)]
    if lengths == "fixed" and spec.prompt_max is None and spec.output_max is None:
        p, o = int(spec.prompt or 1), int(spec.output or 1)
        ratio = 1.0 if low_high else 0.0
        kind = "fixed"
    elif lengths == "uniform" and spec.prompt_max is None and spec.output_max is None:
        p, o = int(spec.prompt or 1), int(spec.output or 1)
        if low_high:  # [rN, N] with N = 2m - 1 and rN >= 1
            p, o = 2 * p - 1, 2 * o - 1
            ratio = math.ceil(1e4 / min(p, o)) / 1e4
            spans = [(int(n * ratio), n) for n in (p, o)]
        else:  # [m(1-r), m(1+r)] reaching down to 1
            ratio = math.floor(1e4 * min((p - 1) / p, (o - 1) / o)) / 1e4
            spans = [(int(n * (1 - ratio)), int(n * (1 + ratio))) for n in (p, o)]
        notes.append(f"the client draws prompts uniformly on [{spans[0][0]}, {spans[0][1]}] and outputs on "
                     f"[{spans[1][0]}, {spans[1][1]}] tokens (one --random-range-ratio for both); apex-opt's uniform "
                     f"lengths are on [1, {2 * int(spec.prompt or 1) - 1}] and [1, {2 * int(spec.output or 1) - 1}]")
        kind = "uniform"
    else:
        p, o = max(1, round(workload.mean_prompt)), max(1, round(workload.mean_output))
        ratio = 1.0 if low_high else 0.0
        kind = "fixed"
        notes.append(f"the client cannot draw {spec.lengths_text} lengths"
                     + (" with caps" if spec.prompt_max or spec.output_max else "")
                     + f": it sends every request with the workload's mean lengths ({p} prompt, {o} output "
                     "tokens), and validate simulates that fixed-length workload; replay a trace for the exact "
                     "lengths")
    dataset = ["--dataset-name random", f"--random-input-len {p}", f"--random-output-len {o}",
               f"--random-range-ratio {ratio:g}", f"--num-prompts {len(workload)}", f"--request-rate {spec.rate:g}"]
    arrival = "poisson"
    if spec.arrival == "gamma" and client == "vllm":
        cv = spec.cv or 1.0
        dataset.append(f"--burstiness {1 / cv ** 2:.6g}")
        arrival = f"gamma,cv={cv:g}"
    elif spec.arrival != "poisson":
        notes.append(f"the client has no {spec.arrival} arrivals"
                     + (f" (cv {spec.cv:g})" if spec.cv else "")
                     + f": it sends a Poisson process at {spec.rate:g} req/s, and validate simulates that")
    notes.append("the client draws its own arrival times" + ("" if kind == "fixed" else " and lengths")
                 + " from --seed: the run matches apex-opt's workload in distribution, not request by request")
    mean_p = (p + 1) // 2 if kind == "uniform" and low_high else p
    mean_o = (o + 1) // 2 if kind == "uniform" and low_high else o
    replayed = (f"synthetic:rate={spec.rate:g}rps,requests={len(workload)},prompt={mean_p},output={mean_o},"
                f"arrival={arrival},lengths={kind},seed={spec.seed}")
    return dataset, parse_synthetic(replayed).expression(), notes


def _content(workload: Workload) -> list[tuple[tuple[int, int], ...]]:
    """Each request's prompt as (content id, tokens) segments: the workload's own, or one unique segment."""
    if workload.segments is not None:
        return list(workload.segments)
    base = 1 << 40
    return [((base + i, int(n)),) for i, n in enumerate(workload.prompt_tokens.tolist())]


def _vllm_trace(workload: Workload, path: str, seed: int) -> tuple[list[str], str, str, list[str]]:
    """vllm bench serve's custom data set for a trace: one ``{"prompt", "output_tokens"}`` line per request, each
    prompt written as one common word per token (segments shared between requests give the same words), and the
    apex trace validate simulates: the trace's lengths at Poisson arrivals of the trace's mean rate."""
    words: dict[int, list[str]] = {}
    lines = []
    for segments, out in zip(_content(workload), workload.output_tokens.tolist(), strict=True):
        text = []
        for cid, n in segments:
            if cid not in words or len(words[cid]) < n:
                picks = np.random.default_rng(cid % (1 << 63)).integers(len(_WORDS), size=n)
                words[cid] = [_WORDS[k] for k in picks]
            text.extend(words[cid][:n])
        lines.append(json.dumps({"prompt": " ".join(text), "output_tokens": int(out)}))
    rate = workload.rate
    if math.isfinite(rate) and rate > 0:
        gaps = np.random.default_rng(seed).exponential(1 / rate, size=len(workload))
        arrivals = np.cumsum(gaps) - gaps[0]
    else:  # one request, or all at the same instant: the client sends them at once (--request-rate inf)
        rate, arrivals = math.inf, np.zeros(len(workload))
    csv_lines = ["arrival_s,prompt_tokens,output_tokens"] + [
        f"{a:.6f},{int(p)},{int(o)}" for a, p, o in zip(arrivals.tolist(), workload.prompt_tokens.tolist(),
                                                          workload.output_tokens.tolist(), strict=True)]
    dataset = ["--dataset-name custom", f"--dataset-path {_q(path)}", "--custom-output-len -1",
               f"--num-prompts {len(workload)}", f"--request-rate {rate:.6g}"]
    notes = [(f"vllm bench serve cannot replay arrival times: it sends the trace's {len(workload)} requests (in an "
             f"order shuffled by its data set) as a Poisson process at the trace's mean rate, {rate:.4g} req/s; "
             "validate simulates the trace's lengths at Poisson arrivals of that rate (apex-opt's draw, not the "
             "client's), not the trace's own arrival times"),
             ("each prompt is written as one common word per token: most tokenizers count it within a few tokens, "
             "and the chat template the client applies adds a few more")]
    return dataset, "\n".join(lines) + "\n", "\n".join(csv_lines) + "\n", notes


def _sglang_trace(workload: Workload, path: str) -> tuple[list[str], str, str, list[str]]:
    """SGLang's mooncake data set for a trace: ``timestamp`` (ms), ``input_length``, ``output_length`` and
    ``hash_ids`` (about 128 prompt tokens each; requests sharing leading segments share leading ids), and the apex
    trace validate simulates: the trace's arrivals with prompts of the length bench_serving builds."""
    ids: dict[tuple[int, int], int] = {}
    lines = []
    csv_lines = ["arrival_s,prompt_tokens,output_tokens"]
    start = float(workload.arrival_s[0]) if len(workload) else 0.0
    for t, segments, out in zip(workload.arrival_s.tolist(), _content(workload), workload.output_tokens.tolist(),
                                strict=True):
        hash_ids = []
        for cid, n in segments:
            for k in range(max(1, round(n / MOONCAKE_BLOCK))):
                hash_ids.append(ids.setdefault((cid, k), len(ids)))
        prompt = sum(n for _, n in segments)
        lines.append(json.dumps({"timestamp": round((t - start) * 1e3, 3), "input_length": prompt,
                                 "output_length": int(out), "hash_ids": hash_ids}))
        csv_lines.append(f"{t - start:.6f},{len(hash_ids) * MOONCAKE_BLOCK},{int(out)}")
    dataset = ["--dataset-name mooncake", f"--dataset-path {_q(path)}", "--use-trace-timestamps",
               "--mooncake-slowdown-factor 1", "--mooncake-num-rounds 1", f"--num-prompts {len(workload)}"]
    notes = [("sglang.bench_serving replays the trace's arrival times (needs a version with the mooncake data set "
             "and --use-trace-timestamps) but builds each prompt from its hash_ids, about 128 tokens per id: "
             "prompt lengths are rounded to multiples of 128 (validate simulates those rounded lengths), and the "
             "chat template adds a few tokens")]
    return dataset, "\n".join(lines) + "\n", "\n".join(csv_lines) + "\n", notes


def _speculation_notes(plan: Plan | Deployment, random_data: bool) -> list[str]:
    """What a benchmark of a speculating plan should know: the client sends plain requests (speculation is the
    server's, set on its launch line), and the tokens emitted per step depend on the text, not the plan."""
    specs = {p.speculative for p in (plan.plans if isinstance(plan, Deployment) else (plan,)) if p.speculative}
    if not specs:
        return []
    sp = next(iter(specs))
    rates = sp.option.split("acceptance=")[1].split(",")[0]
    notes = [(f"the server speculates ({sp.label}, from its launch line); the client needs no flag for it, and "
              f"validate simulates it with the planned acceptance {rates} per drafted position: read the acceptance "
              "the engine reports for the run (vLLM's spec_decode counters on /metrics, SGLang's accept length) and "
              "put it in validate's --speculative before judging the TPOT")]
    if random_data:
        notes.append("the random data set's prompts are random tokens, on which drafts are seldom accepted: replay "
                     "a trace of real text to measure the speed-up speculation was planned for")
    return notes


def _validate(plan: Plan, model: str, result: str, workload: str, extra: Sequence[str],
              gpu_ref: str | None = None) -> str:
    """The ``apex-opt validate`` command that matches ``result`` to ``plan`` (the client's file names no plan)."""
    args = ["apex-opt validate", f"--measurements {_q(result)}", f"--model {_q(model)}",
            f"--gpu {_q(gpu_ref or plan.gpu)}",
            f"--tp {plan.tp}"]
    for key in ("pp", "dp", "ep"):
        if getattr(plan, key) > 1:
            args.append(f"--{key} {getattr(plan, key)}")
    if plan.dp_attention:
        args.append("--dp-attention")
    if plan.layers_per_stage:
        args.append(f"--layers-per-stage {','.join(str(n) for n in plan.layers_per_stage)}")
    if plan.weight_dtype != "bf16":
        args.append(f"--weight-dtype {plan.weight_dtype}")
    if plan.kv_dtype != "bf16":
        args.append(f"--kv-dtype {plan.kv_dtype}")
    args.append(f"--engine {plan.engine}")
    for key in ("max_num_seqs", "max_num_batched_tokens", "max_model_len", "gpu_memory_utilization"):
        if getattr(plan, key) is not None:
            args.append(f"--{key.replace('_', '-')} {getattr(plan, key)}")
    if plan.chunked_prefill is not None:
        args.append("--chunked-prefill" if plan.chunked_prefill else "--no-chunked-prefill")
    if plan.speculative is not None:  # the server speculates (its launch line): validate simulates the same drafts
        args.append(f"--speculative {_q(plan.speculative.option)}")
    args.extend(extra)
    args += [f"--workload {_q(workload)}", "--measured-at client"]
    return " ".join(args)


__all__ = ["BALANCER_PORT", "Benchmark", "benchmark_command", "write_files"]
