"""The built-in catalog: every entry loads, names resolve with close matches, counts match published figures."""

import json
from pathlib import Path

import pytest
import yaml

from apex_opt import catalog
from apex_opt.errors import SpecError, UnknownNameError
from apex_opt.schema.cluster import ClusterSpec
from apex_opt.schema.gpu import GPUSpec

REQUIRED_MODELS = [
    "llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b", "mistral-large-2407", "mixtral-8x7b", "mixtral-8x22b",
    "qwen2.5-72b", "qwen3-235b-a22b", "deepseek-v3", "kimi-k2",
]
REQUIRED_GPUS = ["h100-sxm-80gb", "h200-sxm-141gb", "a100-sxm-80gb", "b200", "mi300x", "l40s", "v100-pcie-16gb"]
REQUIRED_CLUSTERS = ["h100x8", "h100x16", "h100x64", "a100x32", "h200x8", "h100x256"]
PUBLISHED = yaml.safe_load((catalog.specs_dir() / "models" / "published_params.yaml").read_text())


def test_the_catalog_holds_the_required_entries():
    assert set(REQUIRED_MODELS) <= set(catalog.MODELS.names())
    assert set(REQUIRED_GPUS) <= set(catalog.GPUS.names())
    assert set(REQUIRED_CLUSTERS) <= set(catalog.CLUSTERS.names())
    assert {"vllm-0.6", "vllm-v1", "sglang-0.4"} <= set(catalog.ENGINES.names())


@pytest.mark.parametrize("name", REQUIRED_MODELS)
def test_total_and_active_parameters_match_the_published_figures_within_1_percent(name):
    model = catalog.get_model(name)
    published = PUBLISHED[name]
    counts = model.parameter_counts
    assert counts["total"] == pytest.approx(published["total"], rel=0.01)
    active = counts["active"] if published.get("active_includes_input_embedding", True) else \
        counts["active_excl_embedding"]
    assert active == pytest.approx(published["active"], rel=0.01)


def test_deepseek_v3_has_mla_one_shared_and_256_routed_experts_top8_first_three_layers_dense():
    m = catalog.get_model("deepseek-v3")
    assert m.is_mla and m.mla.kv_lora_rank == 512 and m.mla.qk_rope_head_dim == 64
    assert (m.moe.num_experts, m.moe.top_k, m.moe.num_shared_experts) == (256, 8, 1)
    assert m.num_dense_layers == 3 and m.moe_layers[0] == 3
    # the MLA cache holds one 512-wide latent plus the 64-wide rotary key per token and layer, on every TP rank
    assert m.kv_elems_per_token_per_layer(tp=8) == 576


def test_gqa_kv_heads_split_over_tp_and_replicate_beyond():
    m = catalog.get_model("llama-3.1-70b")
    assert m.kv_elems_per_token_per_layer(tp=1) == 2 * 8 * 128
    assert m.kv_elems_per_token_per_layer(tp=8) == 2 * 1 * 128
    assert m.kv_elems_per_token_per_layer(tp=16) == 2 * 1 * 128


@pytest.mark.parametrize("name", REQUIRED_GPUS)
def test_every_gpu_figure_has_a_source(name):
    gpu = catalog.get_gpu(name)
    assert gpu.sources, f"{name} lists no sources"
    assert gpu.memory > 0 and gpu.memory_bandwidth > 0 and gpu.power.max > gpu.power.idle


def test_h100_datasheet_figures():
    g = catalog.get_gpu("h100-sxm-80gb")
    assert g.peak("bf16") == pytest.approx(989.4e12, rel=0.01)
    assert g.peak("fp8") == pytest.approx(1978.9e12, rel=0.01)
    assert g.memory_bandwidth == pytest.approx(3.35e12, rel=0.01)
    assert g.power.max == 700


def test_unknown_names_suggest_the_nearest():
    with pytest.raises(UnknownNameError) as err:
        catalog.get_gpu("h100-sxm")
    assert "did you mean 'h100-sxm-80gb'" in str(err.value)
    with pytest.raises(UnknownNameError) as err:
        catalog.get_model("llama-70b")
    assert "unknown model 'llama-70b'; did you mean" in str(err.value)
    assert "llama-3.1-70b" in str(err.value)


def test_a_model_can_be_any_hf_config_by_path(tmp_path: Path):
    cfg = json.loads((catalog.specs_dir() / "models" / "llama-3.1-8b.json").read_text())
    path = tmp_path / "my-model" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(cfg))
    m = catalog.get_model(str(path))
    assert m.name == "my-model" and m.num_layers == 32


def test_a_config_missing_a_required_field_names_it(tmp_path: Path):
    path = tmp_path / "broken.json"
    path.write_text(json.dumps({"hidden_size": 4096, "num_attention_heads": 32, "vocab_size": 1000}))
    with pytest.raises(SpecError) as err:
        catalog.get_model(str(path))
    assert str(err.value) == (f"{path}: the model config has no field 'num_hidden_layers' or 'n_layer' or "
                              "'num_layers'; it is required to size the model")


def test_a_malformed_gpu_spec_names_file_field_and_value(tmp_path: Path):
    data = yaml.safe_load((catalog.specs_dir() / "gpus" / "h100-sxm-80gb.yaml").read_text())
    data["memory"] = "80 gigs"
    data["colour"] = "green"
    with pytest.raises(SpecError) as err:
        GPUSpec.parse(data, source="my-gpu.yaml", kind="GPU")
    text = str(err.value)
    assert text.startswith("my-gpu.yaml: 2 problems in the GPU spec")
    assert "memory: '80 gigs' is not a size (unknown unit 'gigs'); write e.g. 80GiB or 80GB (got '80 gigs')" in text
    assert "colour: unknown field; remove it or check its spelling (got 'green')" in text


def test_cluster_quick_form_and_file(tmp_path: Path):
    quick = ClusterSpec.homogeneous("h100-sxm-80gb", nodes=2, gpus_per_node=8)
    assert quick.total_gpus == 16 and quick.network.bandwidth_per_gpu == 50e9
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "mine", "nodes": [{"gpu": "h100-sxm", "count": 1, "gpus_per_node": 8}],
                                    "network": {"bandwidth_per_gpu": "400Gb/s"}}))
    with pytest.raises(SpecError) as err:
        catalog.get_cluster(str(path))
    assert "nodes[0].gpu: unknown GPU 'h100-sxm'; did you mean 'h100-sxm-80gb'" in str(err.value)


def test_heterogeneous_cluster_lists_both_kinds():
    c = catalog.get_cluster("h100x8-a100x8")
    assert c.is_heterogeneous and {g.gpu for g in c.nodes} == {"h100-sxm-80gb", "a100-sxm-80gb"}


# ------------------------------------------------------------------------------------- the catalog command


def _catalog_table(kind: str) -> list[str]:
    from click.testing import CliRunner

    from apex_opt.cli.main import cli

    result = CliRunner().invoke(cli, ["catalog", kind], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


@pytest.mark.parametrize("kind", ["models", "gpus", "clusters", "engines", "workloads"])
def test_every_catalog_table_fits_80_columns_without_cutting_a_cell(kind: str):
    lines = _catalog_table(kind)
    assert max(len(line.rstrip()) for line in lines) <= 80
    assert not any("…" in line for line in lines)
    from apex_opt.workload import workload_names

    count = len(workload_names(catalog.specs_dir()) if kind == "workloads" else getattr(catalog, kind.upper()).names())
    assert lines[0].startswith(f"{kind} ({count})")


def test_the_models_table_gives_parameters_in_billions_rounded_to_three_figures():
    rows = {line.split()[0]: line.split() for line in _catalog_table("models") if line.startswith(("llama", "kimi"))}
    assert rows["llama-3.1-8b"][2:4] == ["8.03B", "8.03B"]
    assert rows["llama-3.1-70b"][2] == "70.6B" and rows["llama-3.1-405b"][2] == "406B"
    assert rows["kimi-k2"][2:4] == ["1,026B", "32.9B"] and rows["kimi-k2"][-2:] == ["384+1", "top-8"]


def test_the_workloads_table_rounds_token_counts_and_rates():
    row = next(line.split() for line in _catalog_table("workloads") if line.startswith("lmsys "))
    assert row == ["lmsys", "1,024", "62", "162", "0.51", "llama"]


def test_the_gpus_table_prices_gpus_per_hour_in_dollars():
    header = next(line for line in _catalog_table("gpus") if line.startswith("name"))
    assert "$/h" in header.split()


def test_catalog_models_json_names_each_model_s_hugging_face_repository():
    from click.testing import CliRunner

    from apex_opt.cli.main import cli

    rows = {r["name"]: r for r in json.loads(CliRunner().invoke(cli, ["catalog", "models", "--format", "json"]).output)}
    assert rows["llama-3.1-70b"]["hf_repo"] == "meta-llama/Llama-3.1-70B-Instruct"
    assert "meta-llama/Llama-3.1-70B" in rows["llama-3.1-70b"]["hf_aliases"]
    assert rows["llama-3.1-70b"]["total_params"] == catalog.get_model("llama-3.1-70b").total_params  # unrounded
