"""The benchmark beside the launch commands: the client command that replays the solve's workload against the
recommended plan, and the ``apex-opt validate`` command that reads its result back."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from apex_opt.cli.main import cli
from apex_opt.measurements import read_measurements
from apex_opt.planner.benchmark import BALANCER_PORT, benchmark_command, write_files
from apex_opt.schema.plan import Deployment, Plan, with_speculative
from apex_opt.workload.synthetic import synthetic_workload
from apex_opt.workload.traces import read_trace as load_trace

H100 = "h100-sxm-80gb"
SYNTHETIC = "synthetic:rate=2rps,requests=50,prompt=256,output=64,lengths=fixed,seed=0"
SOLVE = ["solve", "--model", "llama-3.1-8b", "--cluster", "h100x8", "--workload", SYNTHETIC, "--top-k", "1",
         "--disaggregation", "off"]


def flags(command: str) -> dict[str, str | None]:
    """``--flag value`` pairs of a command line (None for a bare flag)."""
    words = shlex.split(command)
    out: dict[str, str | None] = {}
    for i, word in enumerate(words):
        if word.startswith("--"):
            nxt = words[i + 1] if i + 1 < len(words) else None
            out[word] = None if nxt is None or nxt.startswith("--") and not nxt.lstrip("-").isdigit() else nxt
    return out


def synthetic(expr: str = SYNTHETIC):  # type: ignore[no-untyped-def]
    return synthetic_workload(expr)


@pytest.fixture
def small_trace(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "tiny.csv"
    path.write_text("arrival_s,prompt_tokens,output_tokens\n0.5,300,20\n1.0,600,40\n2.5,130,10\n4.5,64,8\n")
    return load_trace(path)


def test_a_synthetic_workload_becomes_a_random_dataset_at_its_rate() -> None:
    b = benchmark_command(Plan(gpu=H100, tp=1, engine="vllm-v1"), "llama-3.1-8b", synthetic(), engine="vllm-v1")
    f = flags(b.command)
    assert b.command.startswith("vllm bench serve --backend vllm --model meta-llama/Llama-3.1-8B-Instruct")
    assert f["--dataset-name"] == "random" and f["--random-input-len"] == "256" and f["--random-output-len"] == "64"
    assert f["--random-range-ratio"] == "0" and f["--num-prompts"] == "50" and f["--request-rate"] == "2"
    assert f["--port"] == "8000" and f["--seed"] == "0" and "--ignore-eos" in f
    assert f["--percentile-metrics"] == "ttft,tpot,itl,e2el" and f["--metric-percentiles"] == "50,90,95,99"
    assert "--save-result" in f and f["--result-filename"] == b.result_file == "apex-bench-dp1-tp1-pp1.json"
    assert b.files == () and b.client == "vllm"


def test_vllm_0_6_runs_benchmark_serving_py_whose_range_ratio_means_fixed_at_1() -> None:
    b = benchmark_command(Plan(gpu=H100, tp=1), "llama-3.1-8b", synthetic(), engine="vllm-0.6")
    assert b.command.startswith("python benchmarks/benchmark_serving.py --backend vllm")
    assert flags(b.command)["--random-range-ratio"] == "1"
    assert any("vLLM 0.6's client is benchmarks/benchmark_serving.py" in n for n in b.notes)


def test_sglang_gets_bench_serving_with_per_request_details_and_a_jsonl_result() -> None:
    b = benchmark_command(Plan(gpu=H100, tp=1, engine="sglang-0.4"), "llama-3.1-8b", synthetic(), engine="sglang-0.4")
    f = flags(b.command)
    assert b.command.startswith("python -m sglang.bench_serving --backend sglang")
    assert f["--port"] == "30000" and f["--random-range-ratio"] == "1" and f["--request-rate"] == "2"
    assert "--output-details" in f and f["--output-file"] == b.result_file == "apex-bench-dp1-tp1-pp1.jsonl"
    assert "--ignore-eos" not in f  # bench_serving ignores EOS unless --disable-ignore-eos
    assert any("appends one line per run" in n for n in b.notes)


def test_uniform_lengths_become_the_clients_range_and_the_note_gives_both_ranges() -> None:
    w = synthetic("synthetic:rate=2rps,requests=20,prompt=100,output=20,lengths=uniform,seed=0")
    v1 = benchmark_command(Plan(gpu=H100, tp=1, engine="vllm-v1"), "llama-3.1-8b", w, engine="vllm-v1")
    assert flags(v1.command)["--random-input-len"] == "100" and flags(v1.command)["--random-range-ratio"] == "0.95"
    assert any("outputs on [1, 39]" in n and "apex-opt's uniform lengths are on [1, 199] and [1, 39]" in n
               for n in v1.notes)
    sg = benchmark_command(Plan(gpu=H100, tp=1, engine="sglang-0.4"), "llama-3.1-8b", w, engine="sglang-0.4")
    assert flags(sg.command)["--random-input-len"] == "199" and flags(sg.command)["--random-output-len"] == "39"
    assert "lengths=uniform" in v1.validate and "prompt=100,output=20" in sg.validate


def test_lengths_the_client_cannot_draw_are_sent_at_their_means_and_validated_as_such() -> None:
    w = synthetic("synthetic:rate=3rps,requests=40,prompt=500,output=100,seed=1")  # lognormal by default
    b = benchmark_command(Plan(gpu=H100, tp=1, engine="vllm-v1"), "llama-3.1-8b", w, engine="vllm-v1")
    p, o = round(w.mean_prompt), round(w.mean_output)
    assert flags(b.command)["--random-input-len"] == str(p) and flags(b.command)["--random-range-ratio"] == "0"
    assert any("cannot draw lognormal lengths" in n and "replay a trace for the exact lengths" in n for n in b.notes)
    assert f"prompt={p},output={o}" in b.validate and "lengths=fixed" in b.validate


def test_gamma_arrivals_become_vllm_burstiness_and_poisson_for_sglang_with_a_note() -> None:
    w = synthetic("synthetic:rate=4rps,requests=30,prompt=128,output=16,arrival=gamma,cv=2,lengths=fixed,seed=0")
    v1 = benchmark_command(Plan(gpu=H100, tp=1, engine="vllm-v1"), "llama-3.1-8b", w, engine="vllm-v1")
    assert flags(v1.command)["--burstiness"] == "0.25" and "arrival=gamma,cv=2" in v1.validate
    sg = benchmark_command(Plan(gpu=H100, tp=1, engine="sglang-0.4"), "llama-3.1-8b", w, engine="sglang-0.4")
    assert "--burstiness" not in sg.command and "arrival=poisson" in sg.validate
    assert any("no gamma arrivals (cv 2)" in n and "Poisson process at 4 req/s" in n for n in sg.notes)


def test_a_trace_becomes_a_custom_dataset_for_vllm_sent_at_its_mean_rate(small_trace, tmp_path: Path) -> None:
    b = benchmark_command(Plan(gpu=H100, tp=1, engine="vllm-v1"), "llama-3.1-8b", small_trace, engine="vllm-v1",
                          directory=tmp_path / "bench")
    f = flags(b.command)
    replay, apex = (Path(p) for p, _ in b.files)
    assert f["--dataset-name"] == "custom" and f["--dataset-path"] == str(replay) and f["--custom-output-len"] == "-1"
    assert f["--request-rate"] == "0.75" and f["--num-prompts"] == "4"  # 3 gaps over 4 s
    assert f["--result-dir"] == str(tmp_path / "bench")
    assert any("cannot replay arrival times" in n and "Poisson process" in n for n in b.notes)
    assert write_files(b) == [str(replay), str(apex)]
    lines = [json.loads(x) for x in replay.read_text().splitlines()]
    assert [x["output_tokens"] for x in lines] == [20, 40, 10, 8]
    assert [len(x["prompt"].split()) for x in lines] == [300, 600, 130, 64]  # one common word per token
    assert load_trace(apex).prompt_tokens.tolist() == [300, 600, 130, 64]
    assert f"--workload {apex}" in b.validate


def test_a_trace_becomes_a_mooncake_file_for_sglang_with_its_arrival_times(tmp_path: Path) -> None:
    from apex_opt.specs import load_specs

    w = load_specs("llama-3.1-8b", "h100x8", workload="mooncake-sample").workload
    b = benchmark_command(Plan(gpu=H100, tp=1, engine="sglang-0.4"), "llama-3.1-8b", w, engine="sglang-0.4",
                          directory=tmp_path)
    f = flags(b.command)
    assert f["--dataset-name"] == "mooncake" and "--use-trace-timestamps" in f and f["--num-prompts"] == "40"
    write_files(b)
    rows = [json.loads(x) for x in Path(b.files[0][0]).read_text().splitlines()]
    assert rows[0]["timestamp"] == 0.0
    assert rows[1]["timestamp"] == pytest.approx((w.arrival_s[1] - w.arrival_s[0]) * 1e3)
    assert [r["output_length"] for r in rows] == w.output_tokens.tolist()
    assert all(abs(len(r["hash_ids"]) * 128 - r["input_length"]) <= 64 + 128 for r in rows)
    firsts = [r["hash_ids"][0] for r in rows]
    assert len(set(firsts)) < len(firsts)  # requests that share a prefix share their leading ids
    assert any("rounded to multiples of 128" in n for n in b.notes)


def test_without_a_benchmark_dir_a_trace_command_names_the_files_and_says_how_to_write_them(small_trace) -> None:
    b = benchmark_command(Plan(gpu=H100, tp=1, engine="vllm-v1"), "llama-3.1-8b", small_trace, engine="vllm-v1")
    assert flags(b.command)["--dataset-path"] == "tiny.vllm-replay.jsonl"
    assert any("pass --benchmark-dir DIR" in n for n in b.notes)


def test_data_parallel_targets_one_endpoint_except_vllm_0_6s_separate_servers() -> None:
    w = synthetic()
    v1 = benchmark_command(Plan(gpu=H100, tp=2, dp=2, engine="vllm-v1"), "llama-3.1-8b", w, engine="vllm-v1")
    assert flags(v1.command)["--port"] == "8000" and "--data-parallel-size 2" in v1.notes[0]
    sg = benchmark_command(Plan(gpu=H100, tp=2, dp=2, engine="sglang-0.4"), "llama-3.1-8b", w, engine="sglang-0.4")
    assert flags(sg.command)["--port"] == "30000" and "--dp 2" in sg.notes[0]
    old = benchmark_command(Plan(gpu=H100, tp=2, dp=4), "llama-3.1-8b", w, engine="vllm-0.6")
    assert flags(old.command)["--port"] == str(BALANCER_PORT)
    assert "separate servers (ports 8000-8003 on each node): put a load balancer in front" in old.notes[0]
    assert "--dp 4" in old.validate


def test_a_disaggregated_deployment_targets_its_proxy_and_has_no_validate_command() -> None:
    dep = Deployment(plans=(Plan(gpu=H100, tp=2, role="prefill", engine="vllm-v1"),
                            Plan(gpu=H100, tp=2, role="decode", engine="vllm-v1")))
    b = benchmark_command(dep, "llama-3.1-8b", synthetic(), engine="vllm-v1")
    assert flags(b.command)["--port"] == str(BALANCER_PORT) and b.validate is None
    assert any("PD proxy" in n for n in b.notes) and any("matches one aggregated plan" in n for n in b.notes)


def test_the_validate_command_carries_every_plan_field_the_result_file_cannot() -> None:
    plan = Plan(gpu=H100, tp=2, pp=2, dp=2, ep=1, weight_dtype="fp8", kv_dtype="fp8", layers_per_stage=(17, 15),
                max_num_seqs=128, chunked_prefill=False, engine="vllm-v1")
    b = benchmark_command(plan, "llama-3.1-8b", synthetic(), engine="vllm-v1", validate_options=["--no-cuda-graphs"])
    f = flags(b.validate)
    assert b.validate.startswith("apex-opt validate --measurements apex-bench-")
    assert (f["--model"], f["--gpu"], f["--tp"], f["--pp"], f["--dp"]) == ("llama-3.1-8b", H100, "2", "2", "2")
    assert (f["--weight-dtype"], f["--kv-dtype"], f["--layers-per-stage"]) == ("fp8", "fp8", "17,15")
    assert f["--engine"] == "vllm-v1" and f["--max-num-seqs"] == "128" and "--no-chunked-prefill" in f
    assert "--no-cuda-graphs" in f and f["--measured-at"] == "client" and f["--workload"].startswith("synthetic:")


def test_an_engine_without_a_known_client_is_refused_naming_it() -> None:
    from apex_opt.errors import SpecError

    with pytest.raises(SpecError, match="engine 'trt-llm': no benchmark client"):
        benchmark_command(Plan(gpu=H100, tp=1), "llama-3.1-8b", synthetic(), engine="trt-llm")


@pytest.fixture(scope="module")
def solved_v1(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    folder = tmp_path_factory.mktemp("bench")
    result = CliRunner().invoke(cli, [*SOLVE, "--engine", "vllm-v1", "--benchmark-dir", str(folder),
                                      "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output), folder


def test_solve_prints_the_benchmark_after_the_launch_commands() -> None:
    result = CliRunner().invoke(cli, [*SOLVE, "--engine", "sglang-0.4"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.index("or with SGLang:") < out.index("Benchmark (then: apex-opt validate --measurements "
                                                    "apex-bench-dp1-tp1-pp1.jsonl ...):")
    assert "python -m sglang.bench_serving --backend sglang" in out
    assert "apex-opt validate --measurements apex-bench-dp1-tp1-pp1.jsonl --model llama-3.1-8b" in out


def test_solve_json_has_the_benchmark_with_its_result_file_files_and_notes(solved_v1) -> None:
    data, folder = solved_v1
    bench = data["benchmark"]
    assert set(bench) == {"client", "command", "result_file", "validate", "files", "files_written", "notes"}
    assert bench["client"] == "vllm" and bench["command"].startswith("vllm bench serve")
    assert bench["result_file"] == str(folder / "apex-bench-dp1-tp1-pp1.json")
    assert bench["files"] == bench["files_written"] == []  # a synthetic workload needs no replay file


def test_solve_writes_a_traces_replay_files_into_the_benchmark_dir(tmp_path: Path) -> None:
    trace = tmp_path / "tiny.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0.5,300,20\n1.0,600,40\n2.5,130,10\n4.5,64,8\n")
    args = ["solve", "--model", "llama-3.1-8b", "--cluster", "h100x8", "--workload", str(trace), "--top-k", "1",
            "--disaggregation", "off", "--engine", "sglang-0.4", "--format", "json"]
    plain = json.loads(CliRunner().invoke(cli, args).output)["benchmark"]
    assert plain["files_written"] == [] and any("--benchmark-dir" in n for n in plain["notes"])
    folder = tmp_path / "out"
    written = json.loads(CliRunner().invoke(cli, [*args, "--benchmark-dir", str(folder)]).output)["benchmark"]
    assert written["files_written"] == written["files"] and all(Path(p).is_file() for p in written["files"])
    assert Path(written["files"][0]).parent == folder


def _args(validate_command: str) -> list[str]:
    words = shlex.split(validate_command)
    assert words[:2] == ["apex-opt", "validate"]
    return words[1:]


def test_the_printed_validate_command_matches_a_vllm_result_file_to_the_plan(solved_v1) -> None:
    data, _ = solved_v1
    bench = data["benchmark"]
    # a made-up result in vllm bench serve --save-result's layout, with plausible numbers for this plan
    result = {"backend": "vllm", "model_id": "meta-llama/Llama-3.1-8B-Instruct", "num_prompts": 50,
              "request_rate": 2.0, "burstiness": 1.0, "completed": 50, "total_input_tokens": 12800,
              "total_output_tokens": 3200, "request_throughput": 1.8, "output_throughput": 115.0,
              "mean_ttft_ms": 26.0, "median_ttft_ms": 25.0, "p50_ttft_ms": 25.0, "p90_ttft_ms": 31.0,
              "p99_ttft_ms": 35.0, "mean_tpot_ms": 11.5, "median_tpot_ms": 11.5, "p99_tpot_ms": 11.9,
              "mean_itl_ms": 11.5, "median_itl_ms": 11.4, "p99_itl_ms": 14.0, "mean_e2el_ms": 750.0,
              "median_e2el_ms": 748.0, "p99_e2el_ms": 780.0}
    Path(bench["result_file"]).write_text(json.dumps(result))
    assert read_measurements(bench["result_file"])[0].format == "vllm-bench"
    check = CliRunner().invoke(cli, _args(bench["validate"]))
    assert check.exit_code in (0, 1), check.output  # matched to the plan; 1 only past the tolerance
    assert "dp1 tp1 pp1 (vllm-v1)" in check.output and "measured at the client" in check.output


def test_the_printed_validate_command_matches_an_sglang_result_file_to_the_plan(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, [*SOLVE, "--engine", "sglang-0.4", "--benchmark-dir", str(tmp_path),
                                      "--format", "json"])
    bench = json.loads(result.output)["benchmark"]
    line = {"backend": "sglang", "dataset_name": "random", "request_rate": 2.0, "max_concurrency": None,
            "completed": 50, "total_input_tokens": 12800, "total_output_tokens": 3200, "request_throughput": 1.8,
            "output_throughput": 115.0, "mean_e2e_latency_ms": 700.0, "median_e2e_latency_ms": 698.0,
            "p99_e2e_latency_ms": 730.0, "mean_ttft_ms": 24.0, "median_ttft_ms": 23.0, "p99_ttft_ms": 33.0,
            "mean_tpot_ms": 10.8, "median_tpot_ms": 10.8, "p99_tpot_ms": 11.2, "mean_itl_ms": 10.8,
            "median_itl_ms": 10.7, "p95_itl_ms": 11.0, "p99_itl_ms": 13.0}
    Path(bench["result_file"]).write_text(json.dumps(line) + "\n")
    check = CliRunner().invoke(cli, [*_args(bench["validate"]), "--format", "json"])
    assert check.exit_code in (0, 1), check.output
    run = json.loads(check.output)["runs"][0]
    assert run["format"] == "sglang-bench" and run["engine"] == "sglang-0.4" and run["plan"] == "dp1 tp1 pp1"


def test_a_speculating_plans_validate_command_simulates_the_same_speculation(tmp_path: Path) -> None:
    plan = with_speculative(Plan(gpu=H100, tp=1, engine="vllm-v1"), "eagle:k=3,acceptance=0.8/0.6/0.4")
    b = benchmark_command(plan, "llama-3.1-8b", synthetic(), engine="vllm-v1", directory=tmp_path)
    assert flags(b.validate)["--speculative"] == "eagle:k=3,acceptance=0.8/0.6/0.4"
    assert "--speculative" not in b.command  # speculation is the server's; the client sends plain requests
    assert any("the client needs no flag" in n for n in b.notes)
    assert any("random tokens, on which drafts are seldom accepted" in n for n in b.notes)
    result = {"backend": "vllm", "model_id": "meta-llama/Llama-3.1-8B-Instruct", "num_prompts": 50,
              "request_rate": 2.0, "completed": 50, "total_input_tokens": 12800, "total_output_tokens": 3200,
              "request_throughput": 1.8, "output_throughput": 115.0, "mean_ttft_ms": 26.0, "mean_tpot_ms": 6.0}
    Path(b.result_file).write_text(json.dumps(result))
    args = _args(b.validate)
    at = args.index("--speculative")
    runs = {}
    for given in (args, args[:at] + args[at + 2:]):  # as printed, and without the speculation
        out = CliRunner().invoke(cli, [*given, "--format", "json"])
        assert out.exit_code in (0, 1), out.output
        run = json.loads(out.output)["runs"][0]
        runs[run["plan"]] = {c["metric"]: c["predicted"] for c in run["metrics"]}
    assert set(runs) == {"dp1 tp1 pp1 eagle-k3", "dp1 tp1 pp1"}
    assert runs["dp1 tp1 pp1 eagle-k3"]["tpot_ms"] < runs["dp1 tp1 pp1"]["tpot_ms"]  # 2.0 tokens per verify step


def test_validate_refuses_k_auto_which_only_solve_searches() -> None:
    out = CliRunner().invoke(cli, ["validate", "--measurements", "x.json", "--speculative",
                                   "eagle:k=auto,acceptance=0.7"])
    assert out.exit_code == 2 and "k=auto is for solve" in out.output
