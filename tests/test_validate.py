"""`apex-opt validate`: measurement files read in every format, matched to a plan, compared with the simulator."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from apex_opt.cli.main import cli
from apex_opt.errors import SpecError
from apex_opt.measurements import read_measurements
from apex_opt.validate import validate

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "measurements"
VLLM_BENCH = FIXTURES / "vllm_bench_serve.json"
LIFECYCLE = FIXTURES / "stage_0_lifecycle_metrics.json"
RUNS_CSV = FIXTURES / "runs.csv"
PLAN = ["--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb", "--tp", "1", "--engine", "vllm-v1"]


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, ["validate", *args])


def test_the_vllm_bench_serve_result_json_is_read_with_its_percentiles_and_lengths() -> None:
    (m,) = read_measurements(VLLM_BENCH)
    assert m.format == "vllm-bench" and m.measured_at == "client"
    assert m.metrics["ttft_ms_mean"] == 23.9 and m.metrics["ttft_ms_p50"] == 22.6 and m.metrics["ttft_ms_p99"] == 30.1
    assert m.metrics["tpot_ms"] == 6.9 and m.metrics["itl_ms_mean"] == 6.9 and m.metrics["e2e_ms_p99"] == 244.0
    assert m.metrics["throughput_req_s"] == 1.86
    assert m.synthetic == {"prompt": 256.0, "output": 32.0, "rate": 2.0, "requests": 40.0}
    assert m.model == "meta-llama/Llama-3.1-8B-Instruct"


def test_the_inference_perf_lifecycle_report_is_read_in_milliseconds() -> None:
    (m,) = read_measurements(LIFECYCLE)
    assert m.format == "inference-perf" and m.measured_at == "client"
    assert m.metrics["ttft_ms_mean"] == pytest.approx(23.8) and m.metrics["e2e_ms_p90"] == pytest.approx(242.0)
    assert m.metrics["tpot_ms"] == pytest.approx(6.9) and m.metrics["itl_ms_p99"] == pytest.approx(11.2)
    assert m.metrics["throughput_req_s"] == 1.88
    assert m.synthetic["rate"] == 2.0 and m.synthetic["prompt"] == 256


def test_the_readme_csv_is_read_row_by_row_with_plan_workload_and_metrics() -> None:
    first, second = read_measurements(RUNS_CSV)
    assert first.format == "csv" and first.name == "made-up-8b-client" and first.model == "llama-3.1-8b"
    assert first.plan == {"gpu": "h100-sxm-80gb", "engine": "vllm-v1", "tp": 1, "max_num_seqs": 256}
    assert first.prefix_caching is True and second.prefix_caching is False
    assert first.workload.startswith("synthetic:rate=2rps") and first.measured_at == "client"
    assert second.measured_at == "engine" and second.metrics == {"tpot_ms": 6.9}


def test_a_file_that_is_no_measurement_format_is_refused_naming_the_formats(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"hello": 1}')
    with pytest.raises(SpecError, match="not a measurement format") as exc:
        read_measurements(path)
    assert all(name in str(exc.value) for name in ("vllm-bench", "inference-perf", "csv"))


def test_a_measurement_without_a_plan_is_refused_naming_the_missing_fields(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SpecError, match=r"does not say gpu, tp, engine; give --gpu, --tp, --engine"):
        validate([VLLM_BENCH])
    validate([VLLM_BENCH], overrides={"gpu": "h100-sxm-80gb", "tp": 1, "engine": "vllm-v1",  # a catalog model's
                                      "workload": "synthetic"})                               # Hugging Face id
    unknown = tmp_path / "unknown-model.json"
    unknown.write_text(VLLM_BENCH.read_text().replace("meta-llama/Llama-3.1-8B-Instruct", "acme/Not-A-Model"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the Hub is not asked
    with pytest.raises(SpecError, match=r"names the model 'acme/Not-A-Model'.*give --model"):
        validate([unknown], overrides={"gpu": "h100-sxm-80gb", "tp": 1, "engine": "vllm-v1", "workload": "synthetic"})
    with pytest.raises(SpecError, match=r"does not say model, gpu, tp, engine; give --model, --gpu, --tp, --engine"):
        validate([LIFECYCLE])
    result = invoke("--measurements", str(LIFECYCLE), "--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb",
                    "--workload", "synthetic")
    assert result.exit_code == 2 and "does not say tp, engine" in result.output and "--tp, --engine" in result.output


def test_a_csv_row_without_a_gpu_is_refused_naming_the_column(tmp_path: Path) -> None:
    path = tmp_path / "runs.csv"
    path.write_text("model,tp,engine,workload,tpot_ms\nllama-3.1-8b,1,vllm-v1,lmsys,7\n")
    with pytest.raises(SpecError, match="does not say gpu; give --gpu on the command line or fill the column"):
        validate([path])


def test_a_vllm_bench_result_without_a_workload_is_refused_unless_told_to_rebuild_it() -> None:
    overrides = {"model": "llama-3.1-8b", "gpu": "h100-sxm-80gb", "tp": 1, "engine": "vllm-v1"}
    with pytest.raises(SpecError, match="names no workload; give --workload synthetic"):
        validate([VLLM_BENCH], overrides=overrides)
    report = validate([VLLM_BENCH], overrides={**overrides, "workload": "synthetic", "measured_at": "client"})
    assert report.runs[0].workload == "synthetic:rate=2rps,requests=40,prompt=256,output=32,lengths=fixed,seed=0"
    assert report.ok


def test_an_all_at_once_benchmark_cannot_be_rebuilt_as_a_poisson_workload(tmp_path: Path) -> None:
    data = json.loads(VLLM_BENCH.read_text())
    data["request_rate"] = "inf"
    path = tmp_path / "burst.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SpecError, match="cannot be rebuilt as a Poisson workload"):
        validate([path], overrides={"model": "llama-3.1-8b", "gpu": "h100-sxm-80gb", "tp": 1, "engine": "vllm-v1",
                                    "workload": "synthetic"})


def test_within_tolerance_exits_0_and_past_it_exits_1_naming_the_metrics() -> None:
    for fixture in (VLLM_BENCH, LIFECYCLE):
        ok = invoke("--measurements", str(fixture), *PLAN, "--workload", "synthetic", "--tolerance", "10%")
        assert ok.exit_code == 0, ok.output
        assert "within 10%" in ok.output
    off = invoke("--measurements", str(VLLM_BENCH), *PLAN, "--workload", "synthetic", "--tolerance", "1%")
    assert off.exit_code == 1
    assert "off by more than 1%" in off.output and "vllm_bench_serve ttft_ms_mean" in off.output
    bad = invoke("--measurements", str(VLLM_BENCH), *PLAN, "--workload", "synthetic", "--tolerance", "ten")
    assert bad.exit_code == 2 and "not a fraction" in bad.output


def test_the_csv_validates_from_its_own_columns_and_several_files_are_one_report() -> None:
    result = invoke("--measurements", str(RUNS_CSV), "--measurements", str(LIFECYCLE), *PLAN,
                    "--workload", "synthetic", "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report) == {"tolerance", "ok", "runs", "failures"}
    assert report["tolerance"] == 0.1 and report["ok"] is True and report["failures"] == []
    assert [r["name"] for r in report["runs"]] == ["made-up-8b-client", "made-up-8b-engine",
                                                   "stage_0_lifecycle_metrics"]
    run = report["runs"][0]
    assert set(run) == {"name", "source", "format", "model", "plan", "engine", "workload", "measured_at", "ok",
                        "metrics", "notes"}
    assert set(run["metrics"][0]) == {"metric", "measured", "predicted", "error", "within_tolerance"}
    assert [m["metric"] for m in run["metrics"]] == ["ttft_ms_mean", "ttft_ms_p99", "tpot_ms", "e2e_ms_mean",
                                                     "throughput_req_s"]
    assert report["runs"][1]["measured_at"] == "engine"  # the row's own, when --measured-at is not given


def test_a_failing_run_is_listed_in_the_json_failures() -> None:
    result = invoke("--measurements", str(VLLM_BENCH), *PLAN, "--workload", "synthetic", "--tolerance", "1%",
                    "--format", "json")
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["ok"] is False
    assert report["failures"][0]["run"] == "vllm_bench_serve"
    assert all(abs(f["error"]) > 0.01 for f in report["failures"])


def test_the_six_vllm_v1_dev_runs_validate_within_10_percent_from_their_csv(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from fidelity import read_v1_runs, stage_expression
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    rows = [r for stages in read_v1_runs(ROOT / "data" / "vllm_v1" / "dev_runs.csv").values() for r in stages]
    settings = ("max_num_seqs", "max_num_batched_tokens", "max_model_len", "gpu_memory_utilization")
    metrics = ("ttft_ms_mean", "tpot_ms", "e2e_ms_mean", "throughput_req_s")
    path = tmp_path / "v1.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["name", "model", "gpu", "tp", "engine", *settings, "prefix_caching", "workload",
                               "measured_at", *metrics])
        w.writeheader()
        for r in rows:
            w.writerow({"name": r["run"], "model": str(ROOT / "data" / "apex" / r["model_config"]), "gpu": r["gpu"],
                        "tp": r["tp"], "engine": "vllm-v1", **{k: r[k] for k in settings}, "prefix_caching": "on",
                        "workload": stage_expression(r, 0.0), "measured_at": "client", **{k: r[k] for k in metrics}})
    result = invoke("--measurements", str(path), "--tolerance", "10%", "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert len(report["runs"]) == 6 and report["ok"]
    assert all(len(r["metrics"]) == 4 for r in report["runs"])


SGLANG_BENCH = FIXTURES / "sglang_bench_serving.jsonl"
SGLANG_DETAILS = FIXTURES / "sglang_bench_serving_details.jsonl"
SGLANG_PLAN = ["--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb", "--tp", "1"]


def test_every_run_of_an_sglang_bench_serving_jsonl_file_is_a_measurement() -> None:
    first, second = read_measurements(SGLANG_BENCH)
    assert first.format == second.format == "sglang-bench" and first.measured_at == "client"
    assert (first.name, second.name) == ("sglang_bench_serving:1", "sglang_bench_serving:2")
    assert first.plan == {"engine": "sglang-0.4"}  # backend sglang: the client spoke to an SGLang server
    assert first.metrics["ttft_ms_mean"] == 23.4 and first.metrics["ttft_ms_p50"] == 22.3
    assert first.metrics["ttft_ms_p99"] == 29.5 and first.metrics["tpot_ms"] == 6.6
    assert first.metrics["itl_ms_p95"] == 6.6 and first.metrics["e2e_ms_mean"] == 227.0
    assert first.metrics["throughput_req_s"] == 1.86 and first.metrics["throughput_output_tok_s"] == 59.6
    assert "ttft_ms_p90" not in first.metrics  # neither in the summary nor computable without --output-details
    assert first.synthetic == {"prompt": 256.0, "output": 32.0, "rate": 2.0, "requests": 40.0}
    assert second.synthetic["rate"] == 4.0 and second.synthetic["requests"] == 80.0


def test_sglang_percentiles_missing_from_the_summary_come_from_the_per_request_details() -> None:
    import numpy as np

    (m,) = read_measurements(SGLANG_DETAILS)
    d = json.loads(SGLANG_DETAILS.read_text())
    e2e = [t + sum(g) for t, g in zip(d["ttfts"], d["itls"], strict=True)]
    assert m.name == "sglang_bench_serving_details" and m.plan == {"engine": "sglang-0.4"}
    assert m.metrics["ttft_ms_p90"] == pytest.approx(np.percentile(d["ttfts"], 90) * 1e3)
    assert m.metrics["e2e_ms_p95"] == pytest.approx(np.percentile(e2e, 95) * 1e3)
    assert m.metrics["itl_ms_p90"] == pytest.approx(np.percentile([x for g in d["itls"] for x in g], 90) * 1e3)
    assert m.metrics["tpot_ms_p90"] == pytest.approx(np.percentile([sum(g) / 3 for g in d["itls"]], 90) * 1e3)
    assert m.metrics["ttft_ms_p99"] == d["p99_ttft_ms"]  # the summary's own value wins
    assert "capped concurrency at 4" in m.notes[0]


def test_sglang_and_vllm_bench_files_are_told_apart_by_their_e2e_latency_key(tmp_path: Path) -> None:
    one_run = tmp_path / "one.jsonl"
    one_run.write_text(SGLANG_BENCH.read_text().splitlines()[0] + "\n")  # a single line parses as one JSON object
    assert read_measurements(one_run)[0].format == "sglang-bench"
    assert read_measurements(VLLM_BENCH)[0].format == "vllm-bench"
    other = json.loads(SGLANG_BENCH.read_text().splitlines()[0]) | {"backend": "vllm"}
    (tmp_path / "vllm-server.jsonl").write_text(json.dumps(other) + "\n")
    (m,) = read_measurements(tmp_path / "vllm-server.jsonl")
    assert m.format == "sglang-bench" and m.plan == {}  # a vLLM server: the engine comes from --engine


def test_an_sglang_bench_file_validates_through_the_library_and_the_cli() -> None:
    report = validate([SGLANG_BENCH], overrides={"model": "llama-3.1-8b", "gpu": "h100-sxm-80gb", "tp": 1,
                                                  "workload": "synthetic"})
    assert [r.engine for r in report.runs] == ["sglang-0.4", "sglang-0.4"]
    assert report.runs[1].workload == "synthetic:rate=4rps,requests=80,prompt=256,output=32,lengths=fixed,seed=0"
    assert report.ok, report.to_dict()["failures"]
    result = invoke("--measurements", str(SGLANG_BENCH), *SGLANG_PLAN, "--workload", "synthetic", "--format", "json")
    assert result.exit_code == 0, result.output
    runs = json.loads(result.output)["runs"]
    assert [r["measured_at"] for r in runs] == ["client", "client"] and runs[0]["engine"] == "sglang-0.4"
    vllm = invoke("--measurements", str(SGLANG_BENCH), *SGLANG_PLAN, "--engine", "vllm-v1", "--workload", "synthetic",
                  "--format", "json")
    assert json.loads(vllm.output)["runs"][0]["engine"] == "vllm-v1"  # --engine replaces the file's engine


def test_a_broken_sglang_bench_line_exits_2_naming_the_file_and_the_line(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    path.write_text(SGLANG_BENCH.read_text().splitlines()[0] + "\n" + '{"completed": 3, "mean_ttft_ms": \n')
    result = invoke("--measurements", str(path), *SGLANG_PLAN, "--workload", "synthetic")
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit) and "Traceback" not in message
    assert "runs.jsonl', line 2: not valid JSON" in message and "one JSON object per line" in message
    path.write_text(SGLANG_BENCH.read_text().splitlines()[0] + "\n" + '{"completed": 3}\n')
    result = invoke("--measurements", str(path), *SGLANG_PLAN, "--workload", "synthetic")
    assert result.exit_code == 2 and "line 2: not a bench_serving run" in " ".join(result.output.split())
