"""`apex-opt calibrate` and calibration profiles: fit what the runs determine, say what was left and why, and
apply the profile with --calibration on every command that predicts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import apex_opt as ax
from apex_opt.calibrate import calibrate, candidate_keys
from apex_opt.calibration import CalibrationProfile, active, load_profile, serving_constants
from apex_opt.calibration.fit import Unknown, fit_constants
from apex_opt.cli.main import cli
from apex_opt.errors import SpecError
from apex_opt.measurements import Measurement
from apex_opt.validate import measured_run, predicted_metrics, validate

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "measurements"
PLAN = ["--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb", "--tp", "1", "--engine", "vllm-v1"]
SMALL = "synthetic:rate=2rps,requests=40,prompt=256,output=32,lengths=fixed,seed=0"


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, list(args))


def write_profile(path: Path, constants: dict[str, float]) -> Path:
    CalibrationProfile(name=path.stem, constants=constants).write(path)
    return path


# ------------------------------------------------------------------------------------------------ profiles
def test_a_profile_replaces_builtin_constants_only_while_it_is_applied() -> None:
    builtin = serving_constants()["engines"]["vllm-v1"]["step_s"]
    with active(CalibrationProfile(constants={"engines.vllm-v1.step_s": 0.002})):
        assert serving_constants()["engines"]["vllm-v1"]["step_s"] == 0.002
        assert serving_constants()["engines"]["vllm-0.6"]["step_s"] != 0.002  # other engines untouched
    assert serving_constants()["engines"]["vllm-v1"]["step_s"] == builtin


def test_an_engine_without_an_entry_of_its_own_starts_from_the_default_entry() -> None:
    with active(CalibrationProfile(constants={"engines.sglang-0.4.client.request_s": 0.01})):
        client = serving_constants()["engines"]["sglang-0.4"]["client"]
    default = serving_constants()["engines"]["default"]["client"]
    assert client["request_s"] == 0.01
    assert client["output_lag_steps"] == default["output_lag_steps"]  # the rest of the path as the model used it


def test_a_profile_round_trips_through_its_file(tmp_path: Path) -> None:
    path = write_profile(tmp_path / "site.yaml", {"engines.vllm-v1.step_s": 0.0007,
                                                  "hardware.h100-sxm-80gb.compute_scale": 0.9})
    profile = load_profile(path)
    assert profile.name == "site"
    assert dict(profile.constants) == {"engines.vllm-v1.step_s": 0.0007, "hardware.h100-sxm-80gb.compute_scale": 0.9}


@pytest.mark.parametrize(("content", "expected"), [
    ("constants: {engines.vllm-v1.stepp_s: 0.001}\n", "is not a constant apex-opt knows"),
    ("constants: {engines.vllm-v1.step_s: 5}\n", "outside the physical range"),
    ("constants: {hardware.h100-sxm-80gb.compute_scale: yes}\n", "must be a finite number"),
    ("name: x\n", "not a calibration profile"),
    ("apex_opt_calibration: 7\nconstants: {}\n", "not a format this apex-opt reads"),
    ("constants: {}\nextra: 1\n", "unknown entry extra"),
])
def test_a_malformed_profile_exits_2_naming_the_entry(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    result = invoke("simulate", "--model", "llama-3.1-8b", "--workload", SMALL, "--calibration", str(path))
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())  # the message is wrapped to the terminal
    assert expected in text and "bad.yaml" in text and "Traceback" not in text


def test_a_missing_profile_file_exits_2() -> None:
    result = invoke("estimate", "--model", "llama-3.1-8b", "--calibration", "/nonexistent/site.yaml")
    assert result.exit_code == 2 and "no such file" in result.output


# ----------------------------------------------------------------------------------- applied on every command
def test_a_slower_gpu_in_the_profile_slows_the_compute_bound_prefill_in_estimate(tmp_path: Path) -> None:
    path = write_profile(tmp_path / "capped.yaml", {"hardware.h100-sxm-80gb.compute_scale": 0.5})
    base = json.loads(invoke("estimate", "--model", "llama-3.1-8b", "--batch", "8", "--context", "2048",
                             "--format", "json").output)
    capped = json.loads(invoke("estimate", "--model", "llama-3.1-8b", "--batch", "8", "--context", "2048",
                               "--format", "json", "--calibration", str(path)).output)
    assert capped["prefill"]["time_s"] > 1.6 * base["prefill"]["time_s"]
    assert capped["decode"]["time_s"] < 1.2 * base["decode"]["time_s"]  # decode reads weights: bandwidth-bound


def test_simulate_capacity_solve_and_validate_apply_the_profile(tmp_path: Path) -> None:
    slow = write_profile(tmp_path / "slow.yaml", {"engines.vllm-v1.step_s": 0.02})
    sim = ["simulate", *PLAN, "--workload", SMALL, "--format", "json"]
    base, slowed = (json.loads(invoke(*sim, *extra).output) for extra in ((), ("--calibration", str(slow))))
    assert slowed["tpot_mean_s"] > base["tpot_mean_s"] + 0.015
    solve = ["solve", "--model", "llama-3.1-8b", "--engine", "vllm-v1", "--workload", SMALL, "--slo",
             "ttft=1s,tpot=15ms", "--top-k", "1", "--format", "json", "--disaggregation", "off"]
    assert invoke(*solve).exit_code == 0
    refused = invoke(*solve, "--calibration", str(slow))  # 20 ms per step cannot meet a 15 ms TPOT
    assert refused.exit_code != 0 and "tpot" in refused.output.lower()
    report = validate([FIXTURES / "vllm_bench_serve.json"], overrides={"model": "llama-3.1-8b", "gpu": "h100-sxm-80gb",
                                                                       "tp": 1, "engine": "vllm-v1",
                                                                       "workload": "synthetic"}, calibration=slow)
    tpot = next(c for c in report.runs[0].comparisons if c.metric == "tpot_ms")
    assert tpot.predicted > 20.0
    capacity = ["capacity", *PLAN, "--workload", SMALL, "--slo", "tpot=15ms", "--format", "json"]
    assert invoke(*capacity).exit_code == 0
    cap = invoke(*capacity, "--calibration", str(slow))
    assert cap.exit_code == 2 and "cannot meet the SLO" in cap.output, cap.output


# ------------------------------------------------------------------------------------------------- the fit
def test_constants_the_residuals_do_not_depend_on_are_left_as_not_determined() -> None:
    out = fit_constants([Unknown("a", 1.0, 0.1, 10.0, 1.0), Unknown("b", 1.0, 0.1, 10.0, 1.0)],
                        lambda x: np.array([math.log(x["a"] / 3.0), math.log(x["a"] / 3.0) * 0.5]))
    assert out.values["a"] == pytest.approx(3.0, rel=1e-3)
    assert out.left["b"].startswith("not determined")


def test_two_constants_that_move_the_predictions_alike_are_not_both_fitted() -> None:
    # only the product a*b is measured: one is fitted, the other is named as not separable from it
    out = fit_constants([Unknown("a", 1.0, 0.1, 10.0, 1.0), Unknown("b", 1.0, 0.1, 10.0, 1.0)],
                        lambda x: np.array([math.log(x["a"] * x["b"] / 2.0)] * 3))
    assert len(out.values) == 1 and len(out.left) == 1
    (kept,), (left,) = out.values, out.left
    assert "not separable from " + kept in out.left[left]
    assert out.values[kept] == pytest.approx(2.0, rel=1e-3)


def test_two_constants_with_distinct_effects_are_both_fitted_within_their_bounds() -> None:
    def residuals(x: dict[str, float]) -> np.ndarray:
        return np.array([math.log((x["a"] + 2 * x["b"]) / 5.0), math.log((3 * x["a"] + x["b"]) / 5.0),
                         math.log((x["a"] + x["b"]) / 3.0)])
    out = fit_constants([Unknown("a", 1.0, 0.1, 10.0, 1.0), Unknown("b", 1.0, 0.1, 1.5, 1.0)], residuals)
    assert out.values["a"] == pytest.approx(1.336, abs=0.01)  # the exact b=2 lies past its bound of 1.5
    assert out.values["b"] == pytest.approx(1.5)
    assert float(out.residuals_after @ out.residuals_after) < float(out.residuals_before @ out.residuals_before)


def test_calibrate_recovers_a_host_step_time_from_runs_simulated_with_it() -> None:
    truth = CalibrationProfile(constants={"engines.vllm-v1.step_s": 0.003})
    measured = []
    for rate in (2, 8):
        workload = f"synthetic:rate={rate}rps,requests=120,prompt=512,output=32,lengths=fixed,seed=1"
        m = Measurement(f"{rate}rps", "<simulated>", "csv", {}, model="llama-3.1-8b",
                        plan={"gpu": "h100-sxm-80gb", "tp": 1, "engine": "vllm-v1"}, measured_at="engine",
                        workload=workload)
        predicted, _ = measured_run(m, calibration=truth).predict()
        m.metrics = {k: predicted[k] for k in ("ttft_ms_mean", "tpot_ms", "e2e_ms_mean")}
        measured.append(m)
    report = calibrate(measured, constants=["step_s", "per_seq_s"])
    fitted = {f.key: f.after for f in report.fitted}
    assert fitted["engines.vllm-v1.step_s"] == pytest.approx(0.003, rel=0.1)
    assert report.error_after["max_abs"] < 0.03
    assert report.error_before["max_abs"] > 0.2


def test_client_and_eager_constants_are_candidates_only_for_runs_that_exercise_them() -> None:
    def run(measured_at: str, engine: str = "vllm-v1", **plan):  # type: ignore[no-untyped-def]
        m = Measurement("x", "<made up>", "csv", {"tpot_ms": 7.0}, model="llama-3.1-8b",
                        plan={"gpu": "h100-sxm-80gb", "tp": 1, "engine": engine, **plan}, measured_at=measured_at,
                        workload=SMALL)
        return measured_run(m)
    engine_side = candidate_keys([run("engine")])
    assert "engines.vllm-v1.step_s" in engine_side and "hardware.h100-sxm-80gb.compute_scale" in engine_side
    assert not any(".client." in k for k in engine_side) and "engines.vllm-v1.eager_launch_s" not in engine_side
    assert "engines.vllm-v1.client.request_s" in candidate_keys([run("client")])
    assert "engines.vllm-v1.eager_launch_s" in candidate_keys([run("engine", cuda_graphs=False)])


# ------------------------------------------------------------------------------------- every format, the CLI
@pytest.mark.parametrize("fixture", ["vllm_bench_serve.json", "stage_0_lifecycle_metrics.json", "runs.csv",
                                     "sglang_bench_serving.jsonl"])
def test_every_measurement_format_calibrates_and_the_profile_validates(tmp_path: Path, fixture: str) -> None:
    path = FIXTURES / fixture
    if not path.exists():
        pytest.skip(f"{fixture} is not in this checkout")
    engine = "sglang-0.4" if fixture.startswith("sglang") else "vllm-v1"
    plan = ["--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb", "--tp", "1", "--engine", engine]
    plan = [] if fixture == "runs.csv" else [*plan, "--workload", "synthetic"]
    out = tmp_path / "site.yaml"
    result = invoke("calibrate", "--measurements", str(path), *plan, "--fit", "step_s", "--out", str(out),
                    "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report) >= {"constants", "fitted", "left_at_default", "error_before", "error_after", "runs"}
    assert report["error_after"]["mean_abs"] <= report["error_before"]["mean_abs"] + 1e-9
    written = yaml.safe_load(out.read_text())
    assert written["apex_opt_calibration"] == 1 and written["name"] == "site"
    assert set(written["constants"]) == set(report["constants"])
    checked = invoke("validate", "--measurements", str(path), *plan, "--calibration", str(out), "--tolerance",
                     "100%")
    assert checked.exit_code == 0, checked.output


def test_the_table_names_what_was_fitted_what_was_left_and_the_errors(tmp_path: Path) -> None:
    result = invoke("calibrate", "--measurements", str(FIXTURES / "vllm_bench_serve.json"), *PLAN,
                    "--workload", "synthetic", "--fit", "step_s,client.request_s")
    assert result.exit_code == 0, result.output
    assert "fitted" in result.output and "Fitted metrics: mean |error|" in result.output
    assert "Nothing written: give --out FILE" in result.output


def test_asking_to_fit_a_constant_the_runs_cannot_touch_exits_2_naming_those_they_can() -> None:
    result = invoke("calibrate", "--measurements", str(FIXTURES / "runs.csv"), "--fit", "eager_launch_s")
    text = " ".join(result.output.split())
    assert result.exit_code == 2
    assert "--fit 'eager_launch_s'" in text and "they can fit step_s" in text


def test_a_profile_given_to_the_library_travels_with_the_specs() -> None:
    profile = CalibrationProfile(constants={"engines.vllm-v1.step_s": 0.02})
    specs = ax.load_specs("llama-3.1-8b", gpu="h100-sxm-80gb", engine="vllm-v1", workload=SMALL,
                          calibration=profile)
    plan = ax.Plan(gpu="h100-sxm-80gb", tp=1, engine="vllm-v1")
    slow = predicted_metrics(ax.simulate(specs, plan).summary())["tpot_ms"]
    base = predicted_metrics(ax.simulate(ax.load_specs("llama-3.1-8b", gpu="h100-sxm-80gb", engine="vllm-v1",
                                                       workload=SMALL), plan).summary())["tpot_ms"]
    assert slow > base + 15.0
    with pytest.raises(SpecError, match="calibration"):
        ax.load_specs("llama-3.1-8b", calibration=3)  # type: ignore[arg-type]


def test_the_benchmark_follow_up_of_solve_carries_the_profile_and_the_gpu_file(tmp_path: Path) -> None:
    profile = write_profile(tmp_path / "site.yaml", {"engines.vllm-v1.step_s": 0.0007})
    gpu_file = Path(__file__).resolve().parent.parent / "docs" / "examples" / "gpu-custom.yaml"
    result = invoke("solve", "--model", "llama-3.1-8b", "--gpu", str(gpu_file), "--nodes", "1", "--engine",
                    "vllm-v1", "--workload", SMALL, "--top-k", "1", "--disaggregation", "off", "--format", "json",
                    "--calibration", str(profile))
    assert result.exit_code == 0, result.output
    follow_up = json.loads(result.output)["benchmark"]["validate"]
    assert f"--calibration {profile}" in follow_up and f"--gpu {gpu_file}" in follow_up


def test_results_say_that_a_profile_was_applied_and_which_constants_it_set(tmp_path: Path) -> None:
    profile = write_profile(tmp_path / "site.yaml", {"hardware.h100-sxm-80gb.memory_scale": 0.95,
                                                     "engines.vllm-v1.step_s": 0.0007})
    sim = json.loads(invoke("simulate", *PLAN, "--workload", SMALL, "--format", "json", "--calibration",
                            str(profile)).output)
    assert sim["calibration"]["h100-sxm-80gb"]["profile"] == {"name": "site", "constants": {"memory_scale": 0.95}}
    assert any("calibration profile 'site'" in n and "engines.vllm-v1.step_s = 0.0007" in n for n in sim["notes"])
    est = json.loads(invoke("estimate", "--model", "llama-3.1-8b", "--format", "json", "--calibration",
                            str(profile)).output)
    assert any("calibration profile 'site'" in n for n in est["notes"])
    plain = json.loads(invoke("simulate", *PLAN, "--workload", SMALL, "--format", "json").output)
    assert "profile" not in plain["calibration"]["h100-sxm-80gb"]


def test_runs_all_at_one_load_get_a_note_to_add_another_rate() -> None:
    def run(rate: int) -> Measurement:
        return Measurement(f"{rate}rps", "<made up>", "csv", {"tpot_ms": 7.0, "ttft_ms_mean": 30.0},
                           model="llama-3.1-8b", plan={"gpu": "h100-sxm-80gb", "tp": 1, "engine": "vllm-v1"},
                           measured_at="engine",
                           workload=f"synthetic:rate={rate}rps,requests=30,prompt=256,output=16,seed=0")
    one_load = calibrate([run(2)], constants=["step_s"])
    assert any("add a run at half or twice the rate" in n for n in one_load.notes)
    two_loads = calibrate([run(2), run(8)], constants=["step_s"])
    assert not any("add a run" in n for n in two_loads.notes)
