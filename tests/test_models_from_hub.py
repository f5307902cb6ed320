"""``--model org/name``: Hugging Face ids name catalog models, or fetch config.json through the Hub's cache.

No test reaches the network: the fetch reads a Hugging Face cache made in a temporary folder, with
HF_HUB_OFFLINE=1, and failures of the Hub (gated, not found) are raised by a stand-in for ``hf_hub_download``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from apex_opt import catalog, load_specs
from apex_opt.cli.main import cli
from apex_opt.errors import SpecError

REVISION = "0123456789abcdef0123456789abcdef01234567"
TINY = {  # a 2-layer Llama, in the layout of an HF config.json
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 1024, "intermediate_size": 4096,
    "num_hidden_layers": 2, "num_attention_heads": 16, "num_key_value_heads": 4, "vocab_size": 32000,
    "max_position_embeddings": 8192, "hidden_act": "silu", "torch_dtype": "bfloat16",
}


def make_hub_cache(home: Path, repo_id: str, config: dict) -> Path:
    """A Hugging Face cache under ``home`` (HF_HOME) holding ``repo_id``'s config.json, laid out as the Hub's
    client lays it: hub/models--org--name/snapshots/<revision>/config.json, with refs/main naming the revision."""
    repo = home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(config))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot / "config.json"


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HF_HOME in a temporary folder and HF_HUB_OFFLINE=1; returns HF_HOME.

    huggingface_hub reads both variables once, when it is first imported, so its constants follow them here too
    (the CLI test in a fresh process below needs no such help)."""
    constants = pytest.importorskip("huggingface_hub.constants")
    home = tmp_path / "hf-home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return home


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def test_an_instruct_id_in_any_case_is_the_catalog_model():
    for ref in ("meta-llama/Llama-3.1-70B-Instruct", "META-LLAMA/llama-3.1-70b-instruct"):
        model = catalog.get_model(ref)
        assert model.name == "llama-3.1-70b"
        assert model.hf_repo == "meta-llama/Llama-3.1-70B-Instruct"


def test_a_base_model_id_is_the_same_catalog_model_and_is_what_the_launch_commands_serve():
    model = catalog.get_model("mistralai/mixtral-8x7b-v0.1")
    assert model.name == "mixtral-8x7b" and model.num_layers == catalog.get_model("mixtral-8x7b").num_layers
    assert model.hf_repo == "mistralai/Mixtral-8x7B-v0.1"


def test_every_catalog_model_names_its_hugging_face_repository_and_no_id_names_two_models():
    seen: dict[str, str] = {}
    for model in catalog.MODELS:
        assert "/" in model.hf_repo, f"{model.name} has no hf_repo"
        for repo in (model.hf_repo, *model.hf_aliases):
            assert seen.setdefault(repo.lower(), model.name) == model.name, f"{repo} names two models"


def test_load_specs_takes_a_hugging_face_id():
    specs = load_specs("Qwen/Qwen2.5-72B-Instruct", "h100x8", workload="synthetic:rate=1rps,requests=4,prompt=64,output=8")
    assert specs.model.name == "qwen2.5-72b"


def test_solve_with_an_id_serves_that_id_in_the_launch_and_benchmark_commands():
    code, out = invoke("solve", "--model", "meta-llama/llama-3.1-8b", "--gpu", "h100-sxm-80gb", "--nodes", "1",
                       "--gpus-per-node", "1", "--max-requests", "60", "--workers", "1", "--disaggregation", "off",
                       "--format", "json")
    assert code == 0, out
    data = json.loads(out)
    assert data["problem"]["model"] == "llama-3.1-8b"
    assert data["problem"]["hf_repo"] == "meta-llama/Llama-3.1-8B"
    assert "vllm serve meta-llama/Llama-3.1-8B --tensor-parallel-size 1" in data["launch"]["vllm"]
    assert "--model meta-llama/Llama-3.1-8B " in data["benchmark"]["command"]


def test_an_unknown_id_is_read_from_the_hugging_face_cache_and_named_by_its_last_part(offline_hub: Path):
    make_hub_cache(offline_hub, "acme/Tiny-Llama-2L-Instruct", TINY)
    model = catalog.get_model("acme/Tiny-Llama-2L-Instruct")
    assert model.name == "tiny-llama-2l-instruct"
    assert (model.num_layers, model.hidden_size, model.num_kv_heads) == (2, 1024, 4)
    assert model.hf_repo == "acme/Tiny-Llama-2L-Instruct"
    assert model.source.endswith(f"snapshots/{REVISION}/config.json")


def test_estimate_and_simulate_take_an_id_from_the_cache(offline_hub: Path):
    make_hub_cache(offline_hub, "acme/Tiny-Llama-2L-Instruct", TINY)
    code, out = invoke("estimate", "--model", "acme/Tiny-Llama-2L-Instruct", "--gpu", "h100-sxm-80gb", "--tp", "1",
                       "--format", "json")
    assert code == 0, out
    code, out = invoke("simulate", "--model", "acme/Tiny-Llama-2L-Instruct", "--gpu", "h100-sxm-80gb", "--tp", "1",
                       "--workload", "synthetic:rate=2rps,requests=8,prompt=64,output=8", "--format", "json")
    assert code == 0, out


def test_offline_with_nothing_cached_says_so_and_how_to_pass_a_local_config(offline_hub: Path):
    with pytest.raises(SpecError) as err:
        catalog.get_model("acme/Not-Cached")
    text = str(err.value)
    assert text.startswith("model='acme/Not-Cached': neither a catalog model nor a file or folder here, so "
                           "apex-opt reads it as a Hugging Face id and fetches its config.json from the Hub, but the "
                           "file is not in the local Hugging Face cache (")
    assert "HF_HUB_OFFLINE is set, so the Hub was not asked" in text
    assert "pass model=path/to/config.json" in text
    assert "'hf download acme/Not-Cached config.json --local-dir not-cached'" in text
    assert "'huggingface-cli download acme/Not-Cached config.json --local-dir not-cached'" in text
    assert "model=not-cached/config.json" in text
    assert "\n" not in text
    assert err.value.render("cli").startswith("--model 'acme/Not-Cached': neither")  # what the CLI prints
    assert "pass --model path/to/config.json" in err.value.render("cli")


def test_an_id_the_cli_cannot_fetch_exits_2_with_one_paragraph_and_no_traceback(offline_hub: Path):
    result = CliRunner().invoke(cli, ["estimate", "--model", "acme/Not-Cached"])
    assert result.exit_code == 2
    assert not isinstance(result.exception, SpecError) and "Traceback" not in result.output
    assert result.output.startswith("Error: --model 'acme/Not-Cached': neither a catalog model nor a file")


def _hub_error(name: str) -> Exception:
    """One of huggingface_hub's errors, without the HTTP response its constructor wants."""
    from huggingface_hub import utils

    cls = getattr(utils, name)
    exc = cls.__new__(cls)
    Exception.__init__(exc, f"{name} for url: https://hub.example/acme/x")
    return exc


@pytest.mark.parametrize(("error", "says"), [
    ("GatedRepoError", "the repository is gated: accept its licence on its Hub page, log in"),
    ("RepositoryNotFoundError", ("the Hub has no such repository (401/404: the id is misspelt, or the repository "
                                 "is private and you are not logged in)")),
])
def test_a_gated_or_unknown_repository_is_named_as_such(error: str, says: str, offline_hub: Path,
                                                        monkeypatch: pytest.MonkeyPatch):
    import huggingface_hub

    def refuse(*args: object, **kwargs: object) -> str:
        raise _hub_error(error)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    with pytest.raises(SpecError) as err:
        catalog.get_model("acme/Locked-Model")
    assert says in str(err.value) and "pass model=path/to/config.json" in str(err.value)


def test_a_403_from_the_hub_says_access_was_refused_and_how_to_log_in(offline_hub: Path,
                                                                         monkeypatch: pytest.MonkeyPatch):
    import huggingface_hub

    forbidden = _hub_error("HfHubHTTPError")
    forbidden.response = SimpleNamespace(status_code=403)  # type: ignore[attr-defined]

    def refuse(*args: object, **kwargs: object) -> str:
        raise forbidden

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    with pytest.raises(SpecError) as err:
        catalog.get_model("acme/Private-Model")
    assert "the Hub refused access (403): the repository is gated or private; log in (hf auth login, or set " \
           "HF_TOKEN)" in str(err.value)


def test_without_huggingface_hub_an_unknown_id_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as when it is not installed
    with pytest.raises(SpecError) as err:
        catalog.get_model("acme/Some-Model")
    assert "the huggingface_hub package is not installed (pip install 'apex-opt[hf]')" in str(err.value)
    assert "pass model=path/to/config.json" in str(err.value)


def test_a_local_folder_wins_over_an_id_of_the_same_spelling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    folder = tmp_path / "meta-llama" / "Llama-3.1-8B"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(TINY))
    monkeypatch.chdir(tmp_path)
    model = catalog.get_model("meta-llama/Llama-3.1-8B")
    assert model.num_layers == 2 and model.name == "Llama-3.1-8B"


def test_the_cli_honours_hf_home_and_hf_hub_offline_from_the_environment(tmp_path: Path):
    pytest.importorskip("huggingface_hub")
    home = tmp_path / "hf-home"
    make_hub_cache(home, "acme/Tiny-Llama-2L-Instruct", TINY)
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    run = subprocess.run([sys.executable, "-m", "apex_opt.cli.main", "estimate", "--model",
                          "acme/Tiny-Llama-2L-Instruct", "--gpu", "h100-sxm-80gb", "--tp", "1", "--format", "json"],
                         env=env, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["model"] == "tiny-llama-2l-instruct"
