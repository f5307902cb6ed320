"""Any GPU, any cluster: GPUs given as YAML files, and the calibration each GPU is priced with.

A GPU file has the fields of ``specs/gpus/*.yaml``; its ``name`` is what plans and results call it. Every result
(simulate, solve, estimate) says, per GPU kind, whether its kernel calibration was measured, borrowed from a GPU
of the same architecture, or a roofline with a stand-in's efficiencies.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import apex_opt as ax
from apex_opt.catalog import GPUS, specs_dir
from apex_opt.errors import SpecError
from apex_opt.perf.gemm import MEASURED_ARCHITECTURES, calibration_dir, choose_calibration
from tests.conftest import run_cli as run

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "docs" / "examples" / "gpu-custom.yaml"
FAST = ["--max-requests", "60"]


def gpu_file(folder: Path, name: str, **changes: object) -> Path:
    """A copy of the catalog H100 file under another name, with ``changes`` applied (None deletes a field)."""
    data = yaml.safe_load((specs_dir() / "gpus" / "h100-sxm-80gb.yaml").read_text())
    data["name"] = name
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def solved_example() -> dict:
    """``apex-opt solve --gpu docs/examples/gpu-custom.yaml`` as JSON, verified by two worker processes."""
    code, out = run("solve", "--model", "llama-3.1-8b", "--gpu", str(EXAMPLE), "--nodes", "1", "--gpus-per-node", "2",
                    "--workers", "2", "--format", "json", *FAST)
    assert code == 0, out
    return json.loads(out)


# ------------------------------------------------------------------------------------------- GPU files


def test_a_gpu_given_as_a_file_is_planned_like_a_catalog_gpu(tmp_path):
    copy = gpu_file(tmp_path, "h100-copy")
    code, out = run("estimate", "--model", "llama-3.1-8b", "--gpu", str(copy), "--format", "json")
    assert code == 0, out
    from_file = json.loads(out)
    code, out = run("estimate", "--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb", "--format", "json")
    catalog = json.loads(out)
    assert from_file["gpu"] == from_file["plan"]["gpu"] == "h100-copy"
    for kind in ("prefill", "decode"):
        assert from_file[kind]["time_s"] == pytest.approx(catalog[kind]["time_s"], rel=1e-9)
    assert from_file["memory"]["kv_capacity_tokens"] == catalog["memory"]["kv_capacity_tokens"]


def test_the_example_gpu_file_survives_the_verifier_worker_processes(solved_example):
    assert solved_example["plans"], solved_example
    assert {p["gpu"] for p in solved_example["plans"]} == {"h100-sxm-80gb-500w"}
    assert all(p["verified"] for p in solved_example["plans"])
    assert solved_example["problem"]["gpu"] == "h100-sxm-80gb-500w"


def test_load_specs_takes_a_gpu_file_path():
    specs = ax.load_specs(model="llama-3.1-8b", gpu=str(EXAMPLE), nodes=1, gpus_per_node=2)
    assert specs.gpu.name == "h100-sxm-80gb-500w"
    assert specs.gpu.power.max == 500
    assert specs.cluster.nodes[0].gpu == "h100-sxm-80gb-500w"
    assert specs.cluster.nodes[0].fabric == "nvswitch"


def test_a_copy_of_a_catalog_file_is_the_catalog_gpu():
    specs = ax.load_specs(model="llama-3.1-8b", gpu=str(specs_dir() / "gpus" / "l40s.yaml"), nodes=1)
    assert specs.gpu == GPUS.get("l40s")
    assert specs.cluster.nodes[0].fabric == "pcie"


def test_a_cluster_file_may_name_its_gpus_by_path(tmp_path):
    (tmp_path / "gpus").mkdir()
    gpu_file(tmp_path / "gpus", "site-h100", price_per_hour=1.0)
    cluster = tmp_path / "site.yaml"
    cluster.write_text(yaml.safe_dump({
        "name": "site",
        "nodes": [{"gpu": "gpus/site-h100.yaml", "count": 1, "gpus_per_node": 4},
                  {"gpu": "a100-sxm-80gb", "count": 1, "gpus_per_node": 4}],
        "network": {"bandwidth_per_gpu": "400Gb/s"},
    }))
    specs = ax.load_specs(model="llama-3.1-8b", cluster=str(cluster))
    assert [g.gpu for g in specs.cluster.nodes] == ["site-h100", "a100-sxm-80gb"]
    assert specs.gpus["site-h100"].price_per_hour == 1.0
    code, out = run("simulate", "--model", "llama-3.1-8b", "--cluster", str(cluster), "--format", "json", *FAST)
    assert code == 0, out
    result = json.loads(out)
    assert result["plan"]["gpu"] == "site-h100"
    assert set(result["calibration"]) == {"site-h100", "a100-sxm-80gb"}


def test_validate_and_capacity_take_a_gpu_file_too():
    measured = REPO / "tests" / "fixtures" / "measurements" / "vllm_bench_serve.json"
    code, out = run("validate", "--measurements", str(measured), "--model", "llama-3.1-8b", "--gpu", str(EXAMPLE),
                    "--tp", "1", "--engine", "vllm-v1", "--workload", "synthetic", "--format", "json")
    assert code in (0, 1), out  # 1: a metric off by more than the tolerance (a made-up GPU), still a report
    assert json.loads(out)["runs"]
    from apex_opt.measurements import read_measurements
    from apex_opt.validate import resolve

    _, plan, *_ = resolve(read_measurements(measured)[0], {"model": "llama-3.1-8b", "gpu": str(EXAMPLE), "tp": 1,
                                                          "engine": "vllm-v1", "workload": "synthetic"})
    assert plan.gpu == "h100-sxm-80gb-500w"
    code, out = run("capacity", "--model", "llama-3.1-8b", "--gpu", str(EXAMPLE), "--slo", "ttft=500ms,tpot=50ms",
                    "--workload", "synthetic:rate=5rps,requests=40,prompt=256,output=32,seed=0", "--format", "json")
    assert code == 0, out


# ------------------------------------------------------------------------------------------- calibration


def test_the_calibration_source_rule():
    assert choose_calibration("h100-sxm-80gb", "hopper").describe() == "measured"
    assert choose_calibration("h20", "hopper").describe() == "borrowed from h100-sxm-80gb (same architecture, hopper)"
    rtx = choose_calibration("rtx-4090", "ada-lovelace")
    assert rtx.kind == "roofline" and rtx.fit == "a100-sxm-80gb"
    assert rtx.describe() == ("roofline (no ada-lovelace GPU measured: a100-sxm-80gb efficiencies on rtx-4090's own "
                              "peaks)")
    assert choose_calibration("rtx-pro-6000-server", "blackwell").fit == "h100-sxm-80gb"
    assert choose_calibration("mystery-npu").describe().startswith("roofline (architecture unknown:")
    # the architecture a file declares wins over what its name suggests
    assert choose_calibration("my-a100-lookalike", "hopper").fit == "h100-sxm-80gb"


def test_every_measured_fit_is_listed_with_the_architecture_of_its_catalog_gpu():
    measured = {p.stem for p in calibration_dir().glob("*.json")}
    assert measured == set(MEASURED_ARCHITECTURES)
    for name, arch in MEASURED_ARCHITECTURES.items():
        assert GPUS.get(name).architecture == arch


def test_every_result_names_the_calibration_each_gpu_used(solved_example):
    entry = solved_example["calibration"]["h100-sxm-80gb-500w"]
    assert entry["source"] == "borrowed" and entry["fit"] == "h100-sxm-80gb"
    assert "calibration of h100-sxm-80gb-500w: borrowed from h100-sxm-80gb (same architecture, hopper)" \
        in solved_example["notes"]

    code, out = run("simulate", "--model", "llama-3.1-8b", "--gpu", "rtx-4090", "--format", "json", *FAST)
    assert code == 0, out
    sim = json.loads(out)
    assert sim["calibration"]["rtx-4090"]["source"] == "roofline"
    assert any(n.startswith("calibration of rtx-4090: roofline (") for n in sim["notes"])

    code, out = run("estimate", "--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb", "--format", "json")
    assert json.loads(out)["calibration"]["h100-sxm-80gb"]["source"] == "measured"
    code, out = run("estimate", "--model", "llama-3.1-8b", "--gpu", "h20")
    assert code == 0, out
    assert "note: calibration of h20: borrowed from h100-sxm-80gb (same architecture, hopper)" in " ".join(out.split())


def test_catalog_gpus_marks_measured_calibration_in_80_columns():
    code, out = run("catalog", "gpus")
    assert code == 0, out
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 80
    rows = {line.split()[0]: line.split()[-1] for line in out.splitlines() if line[:1].isalnum() and "(" not in line}
    assert rows["h100-sxm-80gb"] == "measured" and rows["h20"] == "borrowed" and rows["rtx-4090"] == "roofline"
    code, out = run("catalog", "gpus", "--format", "json")
    by_name = {r["name"]: r for r in json.loads(out)}
    assert by_name["b200"]["calibration"] == "roofline"


# ------------------------------------------------------------------------------------------- new catalog GPUs


@pytest.mark.parametrize(("gpu", "model", "tp", "fabric"), [
    ("rtx-4090", "llama-3.1-8b", 1, "pcie"),
    ("h20", "llama-3.1-70b", 2, "nvswitch"),
    ("rtx-pro-6000-server", "llama-3.1-70b", 2, "pcie"),
])
def test_the_new_catalog_gpus_fit_the_models_they_are_bought_for(gpu, model, tp, fabric):
    code, out = run("estimate", "--model", model, "--gpu", gpu, "--tp", str(tp), "--format", "json")
    assert code == 0, out
    result = json.loads(out)
    assert result["memory"]["fits"], result["memory"]
    assert ax.load_specs(model=model, gpu=gpu, nodes=1).cluster.nodes[0].fabric == fabric


def test_a_model_too_big_for_an_rtx_4090_does_not_fit_on_one():
    code, out = run("estimate", "--model", "llama-3.1-70b", "--gpu", "rtx-4090", "--format", "json")
    assert code == 0, out
    assert not json.loads(out)["memory"]["fits"]


# ------------------------------------------------------------------------------------------- bad files


def test_a_gpu_file_without_a_16_bit_peak_is_refused_naming_file_field_and_fix(tmp_path):
    path = gpu_file(tmp_path, "no-bf16", peak_flops={"fp8": "1000TFLOPS"})
    code, out = run("estimate", "--gpu", str(path))
    assert code == 2
    assert f"Error: {path}: 1 problem in the GPU spec" in out
    assert "peak_flops: no bf16 or fp16 peak (it has fp8); add the dense (not sparse) 16-bit tensor figure" in out
    assert "Traceback" not in out


def test_a_negative_bandwidth_is_refused_with_its_value(tmp_path):
    path = gpu_file(tmp_path, "negative", memory_bandwidth="-3TB/s")
    code, out = run("simulate", "--gpu", str(path), *FAST)
    assert code == 2
    assert "memory_bandwidth: must be positive; write the datasheet figure with its unit, e.g. memory_bandwidth: " \
           "3.35TB/s (got '-3TB/s')" in out


def test_a_gpu_file_may_not_take_a_catalog_gpus_name_with_other_figures(tmp_path):
    path = gpu_file(tmp_path, "a100-sxm-80gb")
    code, out = run("solve", "--gpu", str(path), *FAST)
    assert code == 2
    flat = " ".join(out.split())
    assert f"Error: {path}: name: 'a100-sxm-80gb' is the catalog GPU a100-sxm-80gb, with different figures" in flat
    assert "give the file's GPU a name of its own, e.g. name: a100-sxm-80gb-custom" in flat


def test_a_missing_gpu_file_is_named(tmp_path):
    code, out = run("capacity", "--gpu", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert "no such file; give a catalog GPU name (apex-opt catalog gpus) or the path of a GPU YAML file" in \
        " ".join(out.split())


def test_a_cluster_file_naming_a_missing_gpu_file_says_which_node_group(tmp_path):
    cluster = tmp_path / "c.yaml"
    cluster.write_text(yaml.safe_dump({"name": "c", "nodes": [{"gpu": "gpus/x.yaml", "count": 1,
                                                                "gpus_per_node": 8}]}))
    with pytest.raises(SpecError, match=r"c\.yaml: nodes\[0\]\.gpu .*x\.yaml'?: no such file"):
        ax.load_specs(model="llama-3.1-8b", cluster=str(cluster))
