"""The teaching notebooks run headless from top to bottom and print what their prose explains.

custom_constraints (under 20 s) runs by default; the others simulate for up to a few minutes (--runslow).
"""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def execute(name: str) -> str:
    """Run ``notebooks/<name>`` in a fresh kernel; return the text it printed (an error output fails the test)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [f"{o['ename']}: {o['evalue']}" for o in outputs if o.get("output_type") == "error"]
    assert not errors
    return "".join(o.get("text", "") for o in outputs)


def test_the_notebooks_are_committed_without_outputs():
    nbformat = pytest.importorskip("nbformat")
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        if path.name == "slo_tradeoffs.ipynb":  # not one of these
            continue
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), path.name


def test_custom_constraints_shows_rules_cuts_a_conflict_and_a_refused_bool():
    text = execute("custom_constraints.ipynb")
    assert "without the rules:" in text and "with the rules:" in text
    assert "cut: " in text and "[ttft-p99] does not hold in simulation" in text
    assert "conflict: ('two-replicas', 'one-gpu')" in text
    assert "constraint 'small-model'" in text and "returned bool True" in text


@pytest.mark.slow
def test_gpu_kinds_load_sweep_finds_capacities_and_the_cheapest_plan():
    text = execute("gpu_kinds_load_sweep.ipynb")
    assert text.count(" req/s ") >= 4 and "cheapest way to serve 10 req/s under the SLO: " in text


@pytest.mark.slow
def test_quantization_kv_compares_memory_step_time_and_capacity():
    text = execute("quantization_kv.ipynb")
    assert text.count("GiB/GPU") == 8 and "estimated decode step at batch" in text and "capacity " in text


@pytest.mark.slow
def test_disaggregation_crossover_solves_each_prompt_length():
    text = execute("disaggregation_crossover.ipynb")
    assert "what the planner picks (disaggregation='auto'):" in text
    for prompt in (512, 1024, 2048, 4096):
        assert f"prompt {prompt:>5}: " in text
