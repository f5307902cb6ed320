"""``apex-opt sweep`` and ``ax.sweep``: a grid of problems, one row per point, the registry's names as columns."""

from __future__ import annotations

import csv
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import apex_opt as ax
from apex_opt.calibration import CalibrationProfile
from apex_opt.cli.main import cli
from apex_opt.errors import SpecError
from apex_opt.metrics import FORMERLY, METRICS

SMALL = "synthetic:rate=1rps,requests=20,prompt=256,output=32,seed=0"
BASE = ["--model", "llama-3.1-8b", "--workload", SMALL, "--workers", "1"]
H100, A100 = "h100-sxm-80gb", "a100-sxm-80gb"
SETTINGS: dict[str, Any] = {"model": "llama-3.1-8b", "workload": SMALL, "workers": 1}


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, ["sweep", *args])


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------------- command
def test_a_sweep_over_two_rates_and_two_gpus_writes_four_rows(tmp_path: Path):
    out = tmp_path / "sweep.csv"
    result = invoke("--plan", "tp=1", "--rate", "2rps,4rps", "--gpu", f"{H100},{A100}", *BASE, "--out", str(out))
    assert result.exit_code == 0, result.output
    rows = read_csv(out)
    assert [(r["rate_req_s"], r["gpu"]) for r in rows] == [("2.0", H100), ("2.0", A100), ("4.0", H100),
                                                          ("4.0", A100)]
    assert all(r["plan"] == "dp1 tp1 pp1" and r["error"] == "" and r["num_completed"] == "20" for r in rows)
    header = list(rows[0])
    assert {"ttft_p99_s", "throughput_output_tok_s", "energy_per_output_token_j", "cost_per_mtok_usd"} <= set(header)
    assert not set(header) & set(FORMERLY)
    assert set(header) - {"rate_req_s", "gpu", "model", "workload", "plan", "error"} <= set(METRICS)


def test_the_table_shows_the_axes_that_vary_and_the_json_every_row():
    result = invoke("--plan", "tp=1", "--rate", "2rps,4rps", *BASE)
    assert result.exit_code == 0, result.output
    assert "sweep: 2 points; model llama-3.1-8b" in result.output
    d = json.loads(invoke("--plan", "tp=1", "--rate", "2rps,4rps", *BASE, "--format", "json").stdout)
    assert d["points"] == 2 and d["failed"] == 0 and [r["rate_req_s"] for r in d["rows"]] == [2.0, 4.0]


def test_a_grid_file_gives_the_axes_and_the_plan_and_flags_replace_its_axes(tmp_path: Path):
    grid = tmp_path / "sweep.yaml"
    grid.write_text(f"plan: tp=1\nrate: [1rps, 2rps, 3rps]\ngpu: {H100}\nslo:\n  - ttft=200ms,tpot=40ms\n"
                    "  - ttft=1s,tpot=100ms\n", encoding="utf-8")
    out = tmp_path / "rows.csv"
    assert invoke("--grid", str(grid), *BASE, "--out", str(out)).exit_code == 0
    rows = read_csv(out)
    assert len(rows) == 3 * 2 and rows[1]["slo"] == "ttft=1s,tpot=100ms" and "slo_attainment" in rows[0]
    assert invoke("--grid", str(grid), *BASE, "--rate", "5rps", "--out", str(out)).exit_code == 0
    assert [r["rate_req_s"] for r in read_csv(out)] == ["5.0", "5.0"]  # --rate replaced the file's rates


def test_a_grid_file_with_an_unknown_key_names_the_valid_keys(tmp_path: Path):
    grid = tmp_path / "sweep.yaml"
    grid.write_text("rates: [1rps]\n", encoding="utf-8")
    result = invoke("--grid", str(grid), *BASE)
    assert result.exit_code == 2
    assert "unknown key rates" in result.output.replace("'", "") and "rate, slo, gpu" in result.output


def test_vary_sweeps_an_engine_setting_of_the_plan(tmp_path: Path):
    out = tmp_path / "rows.csv"
    result = invoke("--plan", "tp=1", "--vary", "max_num_seqs=1,64", *BASE, "--out", str(out))
    assert result.exit_code == 0, result.output
    one, many = read_csv(out)
    assert (one["max_num_seqs"], many["max_num_seqs"]) == ("1", "64")
    assert float(one["ttft_mean_s"]) > float(many["ttft_mean_s"])  # one sequence at a time: requests queue


def test_a_plan_setting_without_a_plan_is_refused():
    result = invoke("--vary", "tp=1,2", *BASE)
    assert result.exit_code == 2 and "change a plan, and there is none" in result.output


def test_sweep_applies_the_calibration_profile(tmp_path: Path):
    slow = tmp_path / "slow.yaml"
    CalibrationProfile(name="slow", constants={"engines.vllm-v1.step_s": 0.02}).write(slow)
    args = ["--plan", "tp=1", "--engine", "vllm-v1", "--rate", "2rps", *BASE, "--format", "json"]
    base = json.loads(invoke(*args).stdout)["rows"][0]
    slowed = json.loads(invoke(*args, "--calibration", str(slow)).stdout)["rows"][0]
    assert slowed["tpot_mean_s"] > base["tpot_mean_s"] + 0.015


# ---------------------------------------------------------------------------------------------- output files
def test_parquet_without_pyarrow_is_a_clear_error_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed
    result = invoke("--plan", "tp=1", "--rate", "2rps", *BASE, "--out", str(tmp_path / "rows.parquet"))
    assert result.exit_code == 2
    assert "writing Parquet needs pyarrow, which is not installed; pip install pyarrow, or write a .csv" in \
        result.output.replace("\n  ", " ")


def test_parquet_is_written_through_pyarrow_when_it_is_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    written: dict[str, Any] = {}
    pa = types.ModuleType("pyarrow")
    pa.Table = types.SimpleNamespace(from_pylist=lambda rows: rows)  # type: ignore[attr-defined]
    pq = types.ModuleType("pyarrow.parquet")

    def write_table(rows: list[dict[str, Any]], where: str) -> None:
        written["rows"] = rows
        Path(where).write_bytes(b"PAR1")

    pq.write_table = write_table  # type: ignore[attr-defined]
    pa.parquet = pq  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pyarrow", pa)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", pq)
    out = tmp_path / "rows.parquet"
    assert invoke("--plan", "tp=1", "--rate", "2rps,4rps", *BASE, "--out", str(out)).exit_code == 0
    assert out.read_bytes() == b"PAR1" and not list(tmp_path.glob(".*.tmp"))
    assert [r["rate_req_s"] for r in written["rows"]] == [2.0, 4.0] and "ttft_p99_s" in written["rows"][0]


def test_an_output_file_of_another_kind_is_refused(tmp_path: Path):
    result = invoke("--plan", "tp=1", "--rate", "2rps", *BASE, "--out", str(tmp_path / "rows.xlsx"))
    assert result.exit_code == 2 and "give a .csv or .parquet file name" in result.output.replace("\n  ", " ")


def test_plot_draws_the_metrics_against_the_rate_one_line_per_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    calls: list[dict[str, Any]] = []
    plots = types.ModuleType("apex_opt.plots")
    plots.plot_sweep = lambda rows, path, *, x, y, group=None: calls.append(  # type: ignore[attr-defined]
        {"rows": len(rows), "path": path, "x": x, "y": list(y), "group": group})
    monkeypatch.setitem(sys.modules, "apex_opt.plots", plots)
    png = tmp_path / "sweep.png"
    result = invoke("--plan", "tp=1", "--gpu", f"{H100},{A100}", "--rate", "2rps,4rps", *BASE, "--plot", str(png))
    assert result.exit_code == 0, result.output
    assert calls == [{"rows": 4, "path": png, "x": "rate_req_s", "group": "gpu",
                      "y": ["ttft_p99_s", "tpot_p99_s", "throughput_output_tok_s", "cost_per_mtok_usd"]}]


def test_plot_without_the_plots_module_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "apex_opt.plots", None)
    result = invoke("--plan", "tp=1", "--rate", "2rps", *BASE, "--plot", str(tmp_path / "s.png"))
    assert result.exit_code == 2 and "plotting needs apex_opt.plots" in result.output


# ---------------------------------------------------------------------------------------------------- library
def test_rows_come_in_grid_order_whatever_the_number_of_workers():
    grid = {"rate": ["2rps", "4rps"], "gpu": [H100, A100]}
    one = ax.sweep(grid, plan={"tp": 1}, **SETTINGS)
    two = ax.sweep(grid, plan={"tp": 1}, **{**SETTINGS, "workers": 2})
    assert [repr(r) for r in one] == [repr(r) for r in two]


def test_a_point_that_fails_keeps_its_row_with_the_reason():
    rows = ax.sweep({"gpu": [H100, "h200-nonexistent"]}, plan={"tp": 1}, **SETTINGS)
    assert rows[0]["error"] == "" and rows[0]["num_completed"] == 20
    assert rows[1]["error"].startswith("UnknownNameError") and "num_completed" not in rows[1]


def test_progress_counts_the_points_done():
    seen: list[tuple[int, int]] = []
    ax.sweep({"rate": ["1rps", "2rps", "3rps"]}, plan={"tp": 1}, progress=lambda done, total: seen.append(
        (done, total)), **SETTINGS)
    assert seen == [(0, 3), (1, 3), (2, 3), (3, 3)]


def test_a_point_without_a_plan_is_a_solve_that_reports_its_best_verified_plan():
    rows = ax.sweep({"slo": ["ttft=500ms,tpot=50ms"]}, gpu=H100, nodes=1, gpus_per_node=2, **SETTINGS)
    assert rows[0]["error"] == "" and rows[0]["plan"].startswith("dp")
    assert rows[0]["slo_met"] is True and rows[0]["gpus"] <= 2


def test_bad_grids_are_refused_before_any_work():
    with pytest.raises(SpecError, match="unknown axis 'colour'"):
        ax.sweep({"colour": ["red"]}, plan={"tp": 1}, **SETTINGS)
    with pytest.raises(SpecError, match="is not a rate"):
        ax.sweep({"rate": ["fast"]}, plan={"tp": 1}, **SETTINGS)
    with pytest.raises(SpecError, match="not both"):
        ax.sweep({"gpu": [H100]}, plan={"tp": 1}, cluster="h100x8", **SETTINGS)
