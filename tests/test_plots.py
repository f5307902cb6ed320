"""``apex_opt.plots``: each picture is a PNG of a fixed size, and ``--plot`` writes one from ``solve`` and
``capacity``."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import apex_opt as ax
from apex_opt.capacity import MAX_SIMULATIONS
from apex_opt.cli.main import cli
from apex_opt.plots import check_path, plot_capacity, plot_solve, plot_sweep

WORKLOAD = "synthetic:rate=4rps,requests=60,prompt=512,output=64,seed=0"
SLO = "ttft=200ms,tpot=30ms"
GPU = "h100-sxm-80gb"
ROWS = [{"rate_req_s": r, "gpu": g, "tpot_p99_s": r / k / 1000, "cost_per_mtok_usd": 2.0 * k / r}
        for g, k in (("h100", 2), ("a100", 1)) for r in (1, 2, 4, 8)]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG header."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def specs() -> ax.Specs:
    return ax.load_specs("llama-3.1-8b", gpu=GPU, nodes=1, gpus_per_node=4, workload=WORKLOAD, slo=SLO)


@pytest.fixture(scope="module")
def solved(specs: ax.Specs) -> ax.PlanSet:
    return ax.solve(specs, top_k=3, workers=1)


@pytest.fixture(scope="module")
def searched(specs: ax.Specs) -> ax.CapacityResult:
    return ax.capacity(specs, ax.Plan(gpu=GPU, tp=1), precision=0.1)


def test_plot_solve_writes_an_1100_by_800_png(solved, tmp_path):
    path = plot_solve(solved, tmp_path / "solve.png")
    assert path == tmp_path / "solve.png" and path.stat().st_size > 10_000
    assert png_size(path) == (1100, 800)


def test_plot_solve_draws_a_planset_without_verified_plans(solved, tmp_path):
    from dataclasses import replace

    empty = replace(solved, plans=(), rejected=(), status="unverified")
    assert png_size(plot_solve(empty, tmp_path / "empty.png")) == (1100, 800)


def test_the_capacity_result_keeps_each_probe_rate_summary_and_slo(searched, specs):
    assert searched.slo == specs.slo
    assert len(searched.trials) == searched.simulations
    for t in searched.trials:
        assert t.rate > 0 and t.summary["ttft_mean_s"] == pytest.approx(t.ttft_s)


def test_capacity_reports_progress_after_each_simulation(specs):
    seen: list[tuple[int, int]] = []
    c = ax.capacity(specs, ax.Plan(gpu=GPU, tp=1), precision=0.1, progress=lambda done, most: seen.append((done, most)))
    assert seen == [(n, MAX_SIMULATIONS) for n in range(1, c.simulations + 1)]


def test_plot_capacity_writes_a_1400_by_480_png(searched, tmp_path):
    assert png_size(plot_capacity(searched, tmp_path / "capacity.png")) == (1400, 480)


def test_plot_sweep_lays_out_up_to_three_panels_a_row_and_four_as_two_by_two(tmp_path):
    assert png_size(plot_sweep(ROWS, tmp_path / "two.png", x="rate_req_s", y=["tpot_p99_s", "cost_per_mtok_usd"],
                               group="gpu")) == (840, 380)
    assert png_size(plot_sweep(ROWS, tmp_path / "four.png", x="rate_req_s", y=["tpot_p99_s"] * 4)) == (840, 720)


def test_plot_sweep_takes_a_categorical_x_and_rows_missing_a_metric(tmp_path):
    rows = [*ROWS, {"rate_req_s": 16, "gpu": "h100"}]
    assert png_size(plot_sweep(rows, tmp_path / "cat.png", x="gpu", y=["tpot_p99_s"])) == (420, 380)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"x": "prompt", "y": ["tpot_p99_s"]}, "plot_sweep(x='prompt'): no row has it; the rows have cost_per_mtok_usd"),
    ({"x": "rate_req_s", "y": ["tpot"]}, "plot_sweep(y='tpot'): no row has it"),
    ({"x": "rate_req_s", "y": ["tpot_p99_s"], "group": "engine"}, "plot_sweep(group='engine'): no row has it"),
    ({"x": "rate_req_s", "y": []}, "plot_sweep: no metrics to plot"),
])
def test_plot_sweep_names_a_missing_key_and_the_keys_there_are(tmp_path, kwargs, message):
    with pytest.raises(ax.SpecError, match=r"^" + message.replace("(", r"\(").replace(")", r"\)")):
        plot_sweep(ROWS, tmp_path / "s.png", **kwargs)


def test_no_rows_or_a_path_that_is_not_a_png_is_a_spec_error(tmp_path):
    with pytest.raises(ax.SpecError, match="no rows to plot"):
        plot_sweep([], tmp_path / "s.png", x="rate_req_s", y=["tpot_p99_s"])
    with pytest.raises(ax.SpecError, match="is not a .png"):
        plot_sweep(ROWS, tmp_path / "s.svg", x="rate_req_s", y=["tpot_p99_s"])
    with pytest.raises(ax.SpecError, match="does not exist"):
        plot_sweep(ROWS, tmp_path / "nowhere" / "s.png", x="rate_req_s", y=["tpot_p99_s"])


def test_without_matplotlib_every_plot_says_how_to_install_it(monkeypatch, solved, searched, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import matplotlib.figure now raises ImportError
    for draw in (lambda p: plot_solve(solved, p), lambda p: plot_capacity(searched, p),
                 lambda p: plot_sweep(ROWS, p, x="rate_req_s", y=["tpot_p99_s"])):
        with pytest.raises(ax.SpecError, match=r"plots need matplotlib.*pip install 'apex-opt\[plot\]'"):
            draw(tmp_path / "x.png")


def test_solve_and_capacity_take_plot(tmp_path):
    common = ["--model", "llama-3.1-8b", "--slo", SLO, "--workload", WORKLOAD]
    out = CliRunner().invoke(cli, ["solve", *common, "--gpu", GPU, "--nodes", "1", "--gpus-per-node", "2",
                                   "--top-k", "1", "--workers", "1", "--plot", str(tmp_path / "solve.png")])
    assert out.exit_code == 0, out.output
    assert png_size(tmp_path / "solve.png") == (1100, 800)
    out = CliRunner().invoke(cli, ["capacity", *common, "--tp", "1", "--precision", "10%",
                                   "--plot", str(tmp_path / "capacity.png")])
    assert out.exit_code == 0, out.output
    assert png_size(tmp_path / "capacity.png") == (1400, 480)


def test_the_accessors_read_registered_metric_names():
    from apex_opt.metrics import METRICS
    from apex_opt.plots import cost_per_mtok, energy_per_output_token, tpot, ttft

    values = {name: 1.0 for name in METRICS}
    for stat in ("mean", "p50", "p90", "p95", "p99"):
        assert ttft(values, stat) == 1.0 and tpot(values, stat) == 1.0
    assert energy_per_output_token(values) == 1.0 and cost_per_mtok(values) == 1.0


def test_a_bad_plot_path_fails_before_the_solve_with_the_message():
    out = CliRunner().invoke(cli, ["solve", "--model", "llama-3.1-8b", "--plot", "plans.svg"])
    assert out.exit_code == 2 and "plot file 'plans.svg' is not a .png" in out.output


def test_without_matplotlib_the_plot_path_is_refused_before_any_work(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    with pytest.raises(ax.SpecError, match=r"plots need matplotlib.*pip install 'apex-opt\[plot\]'"):
        check_path(tmp_path / "x.png")
