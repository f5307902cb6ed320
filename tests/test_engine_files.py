"""Engines given as YAML files: ``--engine FILE.yaml`` and ``engine=`` take a file like every other kind.

An engine file has the fields of ``specs/engines/*.yaml``; its ``name`` is what plans, results and launch lines
call it, and its ``family`` and ``scheduler.behaviour`` say how it schedules.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

import apex_opt as ax
from apex_opt.catalog import get_engine, specs_dir
from tests.conftest import run_cli as run

FAST = ["--max-requests", "60"]


def engine_file(folder: Path, name: str, **scheduler: object) -> Path:
    """A copy of the catalog vLLM V1 file under another name, with ``scheduler`` fields changed."""
    data = yaml.safe_load((specs_dir() / "engines" / "vllm-v1.yaml").read_text())
    data["name"] = name
    data.setdefault("scheduler", {}).update(scheduler)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_an_engine_file_loads_under_its_own_name_and_is_found_by_it_afterwards(tmp_path):
    path = engine_file(tmp_path, "vllm-v1-site", max_num_seqs=64)
    spec = get_engine(str(path))
    assert (spec.name, spec.family, spec.scheduler.max_num_seqs) == ("vllm-v1-site", "vllm-v1", 64)
    assert get_engine("vllm-v1-site") is spec
    assert ax.load_specs("llama-3.1-8b", "h100x8", engine=str(path)).engine == spec


def test_simulate_and_solve_run_an_engine_file_and_name_it_in_their_plans(tmp_path):
    path = str(engine_file(tmp_path, "vllm-v1-small-batch", max_num_seqs=64))
    code, out = run("simulate", "--model", "llama-3.1-8b", "--engine", path, "--format", "json", *FAST)
    assert code == 0, out
    assert json.loads(out)["plan"]["engine"] == "vllm-v1-small-batch"
    code, out = run("solve", "--model", "llama-3.1-8b", "--gpu", "h100-sxm-80gb", "--nodes", "1",
                    "--gpus-per-node", "2", "--engine", path, "--disaggregation", "off", "--top-k", "1",
                    "--format", "json", *FAST)
    assert code == 0, out
    result = json.loads(out)
    assert result["plans"][0]["engine"] == result["problem"]["engine"] == "vllm-v1-small-batch"


def test_a_missing_engine_file_exits_2_naming_the_option_and_the_fix(tmp_path):
    code, out = run("estimate", "--engine", str(tmp_path / "nope.yaml"))
    text = " ".join(out.split())
    assert code == 2
    assert "--engine" in text and "no such file" in text and "specs/engines/" in text


def test_an_engine_file_may_not_reuse_a_catalog_name_with_other_settings(tmp_path):
    path = engine_file(tmp_path, "vllm-v1", max_num_seqs=100)
    code, out = run("estimate", "--engine", str(path))
    text = " ".join(out.split())
    assert code == 2
    assert "is the catalog engine vllm-v1, with different settings" in text and "vllm-v1-custom" in text


def test_a_copy_of_a_catalog_engine_file_is_that_engine(tmp_path):
    path = tmp_path / "copy.yaml"
    path.write_text((specs_dir() / "engines" / "vllm-v1.yaml").read_text())
    assert get_engine(str(path)) == get_engine("vllm-v1")
