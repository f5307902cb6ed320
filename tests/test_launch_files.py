"""Launch files that start (issue 15): the commands and Kubernetes manifests a plan prints must be accepted by the
engine version it was priced for, hold no longer a context than its KV cache does, and carry what the checkpoint
and a multi-node layout need."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from apex_opt.catalog import get_engine, get_model
from apex_opt.cli.main import cli
from apex_opt.perf.replica import build_replica
from apex_opt.planner.k8s import IMAGES, manifests, write_manifests
from apex_opt.planner.launch import (
    FLAG_VERSIONS,
    LaunchSettings,
    has_flag,
    launch_commands,
    launch_settings,
    sglang_command,
    vllm_command,
)
from apex_opt.schema.plan import Plan
from apex_opt.specs import load_specs

H100 = "h100-sxm-80gb"
K8S = Path(__file__).parent / "fixtures" / "k8s"

#: plan shapes that between them use every flag the launch lines know
SHAPES = [
    ("llama-3.1-70b", Plan(gpu=H100, tp=2)),
    ("llama-3.1-70b", Plan(gpu=H100, tp=4, dp=2, max_num_seqs=128, max_num_batched_tokens=8192,
                           chunked_prefill=True)),
    ("llama-3.1-70b", Plan(gpu=H100, tp=2, pp=2, layers_per_stage=(32, 48), weight_dtype="fp8", kv_dtype="fp8")),
    ("llama-3.1-70b", Plan(gpu=H100, tp=4, dp=4)),
    ("llama-3.1-405b", Plan(gpu=H100, tp=8, pp=2, dp=2)),
    ("llama-3.1-70b", Plan(gpu=H100, tp=4, weight_dtype="int4")),
    ("mixtral-8x22b", Plan(gpu=H100, tp=8, ep=8)),
    ("deepseek-v3", Plan(gpu=H100, tp=16, ep=16, weight_dtype="fp8")),
    ("kimi-k2", Plan(gpu=H100, tp=8, dp=4, ep=32, dp_attention=True, weight_dtype="fp8")),
]


def flags_of(text: str) -> set[str]:
    """The ``--flags`` on the engine's command lines of ``text`` (not ``ray start``; comments left out)."""
    found = set()
    for line in text.splitlines():
        line = line.split("  #")[0]
        if line.startswith("#") or ("vllm serve" not in line and "sglang.launch_server" not in line):
            continue
        found |= {tok.split("=")[0] for tok in shlex.split(line) if tok.startswith("--")}
    return found


def server_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("#")]


# --- max_model_len -------------------------------------------------------------------------------------------------

def test_the_default_example_caps_max_model_len_to_what_the_kv_cache_holds():
    specs = load_specs()  # llama-3.1-70b on 8 x H100, vLLM 0.6: the winner is tp2
    plan = Plan(gpu=H100, tp=2)
    kv = build_replica(specs.model, specs.gpus[H100], plan, specs.engine).memory.kv_tokens
    assert 0 < kv < specs.model.max_position_embeddings == 131072
    settings = launch_settings(specs.model, specs.gpus[H100], plan, specs.engine)
    assert settings.max_model_len == kv
    line = launch_commands(plan, "llama-3.1-70b", engine="vllm-0.6", settings=settings)["vllm"]
    assert f"--max-model-len {kv} " in line


def test_the_sglang_line_is_capped_by_sglangs_own_kv_pool():
    specs = load_specs()
    plan = Plan(gpu=H100, tp=2)
    kv = build_replica(specs.model, specs.gpus[H100], plan, get_engine("sglang-0.4")).memory.kv_tokens
    settings = launch_settings(specs.model, specs.gpus[H100], plan, specs.engine)
    assert settings.context_length == min(kv, 131072)
    assert f"--context-length {settings.context_length} " in sglang_command(plan, "llama-3.1-70b", settings=settings)


def test_a_plan_with_a_shorter_max_model_len_keeps_it():
    specs = load_specs()
    plan = Plan(gpu=H100, tp=4, max_model_len=8192)
    settings = launch_settings(specs.model, specs.gpus[H100], plan, specs.engine)
    assert settings.max_model_len == settings.context_length == 8192


def test_vllm_0_6_keeps_the_chunked_prefill_it_was_simulated_with_when_the_cap_falls_below_32k():
    # vLLM 0.6 turns chunked prefill on only above max_model_len 32,768; the capped tp2 line is below it
    specs = load_specs()
    plan = Plan(gpu=H100, tp=2)
    settings = launch_settings(specs.model, specs.gpus[H100], plan, specs.engine)
    assert settings.max_model_len <= 32768 and settings.chunked_prefill is True
    assert "--enable-chunked-prefill" in vllm_command(plan, "llama-3.1-70b", engine="vllm-0.6", settings=settings)
    assert "--enable-chunked-prefill" not in vllm_command(plan, "llama-3.1-70b", engine="vllm-v1", settings=settings)


# --- checkpoint facts ----------------------------------------------------------------------------------------------

def test_kimi_k2_gets_trust_remote_code():
    assert get_model("kimi-k2").trust_remote_code
    cmds = launch_commands(Plan(gpu=H100, tp=8, pp=2), "kimi-k2", engine="vllm-v1")
    for line in server_lines(cmds["vllm"]):
        if "vllm serve" in line:
            assert "--trust-remote-code" in line
    assert all("--trust-remote-code" in line for line in server_lines(cmds["sglang"]))


def test_a_model_transformers_ships_gets_no_trust_remote_code():
    assert not get_model("llama-3.1-70b").trust_remote_code
    cmds = launch_commands(Plan(gpu=H100, tp=4), "llama-3.1-70b")
    assert "--trust-remote-code" not in cmds["vllm"] + cmds["sglang"]


def test_an_fp8_checkpoint_gets_no_quantization_flag_but_a_bf16_one_served_in_fp8_does():
    assert get_model("deepseek-v3").checkpoint_quantization == "fp8"
    fp8 = Plan(gpu=H100, tp=16, weight_dtype="fp8")
    cmds = launch_commands(fp8, "deepseek-v3", engine="vllm-v1")
    assert "--quantization" not in cmds["vllm"] + cmds["sglang"]
    assert get_model("llama-3.1-70b").checkpoint_quantization is None
    cmds = launch_commands(Plan(gpu=H100, tp=2, weight_dtype="fp8"), "llama-3.1-70b")
    assert "--quantization fp8" in cmds["vllm"] and "--quantization fp8" in cmds["sglang"]


# --- engine versions -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("model", "plan"), SHAPES, ids=[f"{m} {p.label}" for m, p in SHAPES])
def test_vllm_0_6_lines_carry_no_flag_that_version_lacks(model: str, plan: Plan):
    text = vllm_command(plan, model, engine="vllm-0.6", settings=LaunchSettings.of_catalog(model))
    assert {f for f in flags_of(text) if not has_flag("vllm-0.6", f)} == set()


@pytest.mark.parametrize(("model", "plan"), SHAPES, ids=[f"{m} {p.label}" for m, p in SHAPES])
def test_vllm_v1_and_sglang_0_4_lines_carry_only_flags_their_version_has(model: str, plan: Plan):
    vllm = vllm_command(plan, model, engine="vllm-v1")
    assert {f for f in flags_of(vllm) if not has_flag("vllm-v1", f)} == set()
    sglang = sglang_command(plan, model)
    missing = {f for f in flags_of(sglang) if not has_flag("sglang-0.4", f)}
    assert missing <= {"--pp-size"}  # pipeline parallelism needs SGLang >= 0.4.8, and the line says so
    if missing:
        assert "needs SGLang >= 0.4.8" in sglang


def test_expert_and_data_parallel_flags_are_vllm_v1_only():
    for flag in ("--enable-expert-parallel", "--data-parallel-size", "--data-parallel-size-local",
                 "--data-parallel-address", "--data-parallel-rpc-port"):
        assert FLAG_VERSIONS[flag] == ("vllm-v1",)
    moe = Plan(gpu=H100, tp=8, ep=8)
    assert "--enable-expert-parallel" in vllm_command(moe, "mixtral-8x22b", engine="vllm-v1")
    old = vllm_command(moe, "mixtral-8x22b", engine="vllm-0.6")
    assert "--enable-expert-parallel" not in flags_of(old) and "no expert parallelism" in old
    assert "--enable-ep-moe --ep-size 8" in sglang_command(moe, "mixtral-8x22b")


def test_vllm_0_6_serves_data_parallel_replicas_as_separate_servers_and_v1_as_one():
    plan = Plan(gpu=H100, tp=2, dp=4)
    assert len(server_lines(vllm_command(plan, "llama-3.1-70b", engine="vllm-0.6"))) == 4
    (v1,) = server_lines(vllm_command(plan, "llama-3.1-70b", engine="vllm-v1"))
    assert "--data-parallel-size 4" in v1


# --- multi-node ----------------------------------------------------------------------------------------------------

def test_a_multi_node_sglang_replica_gets_nnodes_node_rank_and_dist_init_addr():
    lines = server_lines(sglang_command(Plan(gpu=H100, tp=16), "deepseek-v3"))
    assert len(lines) == 2
    for rank, line in enumerate(lines):
        assert "--tp 16 " in line and "--nnodes 2" in line and f"--node-rank {rank}" in line
        assert "--dist-init-addr <node-0-ip>:5000" in line


def test_sglang_replicas_that_fit_a_node_run_one_server_per_node():
    lines = server_lines(sglang_command(Plan(gpu=H100, tp=4, dp=4), "llama-3.1-70b"))
    assert len(lines) == 2 and all("--tp 4 --dp 2 " in line and "--nnodes" not in line for line in lines)


def test_a_vllm_replica_wider_than_a_node_is_a_ray_cluster_served_from_its_head():
    text = vllm_command(Plan(gpu=H100, tp=8, pp=2), "llama-3.1-405b", engine="vllm-0.6")
    lines = server_lines(text)
    assert lines[0].startswith("ray start --head --port 6379")
    assert lines[1].startswith("ray start --address <node-0-ip>:6379")
    assert lines[2].startswith("vllm serve meta-llama/Llama-3.1-405B-Instruct --tensor-parallel-size 8 "
                               "--pipeline-parallel-size 2")
    assert "--distributed-executor-backend ray" in lines[2]


def test_vllm_v1_data_parallel_over_nodes_runs_one_server_per_node():
    lines = server_lines(vllm_command(Plan(gpu=H100, tp=8, dp=4, ep=32, dp_attention=True), "kimi-k2",
                                      engine="vllm-v1"))
    assert len(lines) == 4
    for n, line in enumerate(lines):
        assert "--data-parallel-size 4 --data-parallel-size-local 1" in line
        assert "--data-parallel-address <node-0-ip> --data-parallel-rpc-port 13345" in line
        assert ("--headless" in line) == (n > 0)
        assert (f"--data-parallel-start-rank {n}" in line) == (n > 0)


# --- the plan JSON -------------------------------------------------------------------------------------------------

def test_the_plan_json_carries_max_model_len_under_each_plans_launch_entry(tmp_path: Path):
    result = CliRunner().invoke(cli, ["solve", "--max-requests", "120", "--workers", "1", "--top-k", "2",
                                      "--format", "json", "--emit-k8s", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    for plan in data["plans"]:
        launch = plan["launch"]
        assert launch["max_model_len"] == min(plan["predicted"]["kv_tokens"], 131072)
        assert f"--max-model-len {launch['max_model_len']} " in launch["vllm"]
        assert "--context-length " in launch["sglang"]
    assert data["launch"]["vllm"] == data["plans"][0]["launch"]["vllm"]
    (written,) = tmp_path.glob("*.yaml")
    kinds = [doc["kind"] for doc in yaml.safe_load_all(written.read_text())]
    assert kinds == ["Deployment", "Service"]


# --- Kubernetes manifests ------------------------------------------------------------------------------------------

def _validator(name: str) -> Draft202012Validator:
    defs = Resource.from_contents(json.loads((K8S / "_definitions.json").read_text()))
    registry = Registry().with_resource("https://kubernetes.io/api/_definitions.json", defs)
    return Draft202012Validator(json.loads((K8S / name).read_text()), registry=registry)


def _all_manifests(tmp_path: Path) -> list[dict]:
    docs = []
    for model, plan in SHAPES:
        for engine in ("vllm-0.6", "vllm-v1", "sglang-0.4"):
            groups = manifests(plan, model, engine=engine, settings=LaunchSettings.of_catalog(model),
                               flags={"vllm": ["--enforce-eager"], "sglang": ["--disable-cuda-graph"]})
            for path in write_manifests(groups, tmp_path / engine):  # what is checked is what gets written
                docs += list(yaml.safe_load_all(path.read_text()))
    return docs


def _as_deployment(template: dict) -> dict:
    """A pod template inside a Deployment, so the Deployment schema checks it."""
    labels = template["metadata"]["labels"]
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "pod-template-check"},
            "spec": {"selector": {"matchLabels": labels}, "template": template}}


def test_every_manifest_validates_against_the_kubernetes_schema(tmp_path: Path):
    deployment, service = _validator("deployment-apps-v1.json"), _validator("service-v1.json")
    docs = _all_manifests(tmp_path)
    assert {d["kind"] for d in docs} == {"Deployment", "Service", "LeaderWorkerSet"}
    for doc in docs:
        if doc["kind"] == "Deployment":
            deployment.validate(doc)
        elif doc["kind"] == "Service":
            service.validate(doc)
        else:  # LeaderWorkerSet: its pod templates against the Deployment schema (see fixtures/k8s/README.md)
            for key in ("leaderTemplate", "workerTemplate"):
                deployment.validate(_as_deployment(doc["spec"]["leaderWorkerTemplate"][key]))


def test_manifests_carry_only_flags_of_their_engine_version(tmp_path: Path):
    for engine in ("vllm-0.6", "vllm-v1", "sglang-0.4"):
        for model, plan in SHAPES:
            for objects in manifests(plan, model, engine=engine).values():
                for obj in objects:
                    spec = obj["spec"]
                    lws = spec.get("leaderWorkerTemplate", {})
                    templates = [spec["template"]] if "template" in spec else \
                        [lws[k] for k in ("leaderTemplate", "workerTemplate") if k in lws]
                    for tmpl in templates:
                        (c,) = tmpl["spec"]["containers"]
                        line = " ".join([*c["command"], *c["args"]]).split("&& ")[-1]
                        flags = {t.split("=")[0] for t in line.split() if t.startswith("--")}
                        if "ray start" in line:
                            continue
                        assert {f for f in flags if not has_flag(engine, f)} <= {"--pp-size"}, (engine, line)


def test_engine_flags_go_on_serving_lines_only():
    cmds = launch_commands(Plan(gpu=H100, tp=8, pp=2), "llama-3.1-405b", flags={"vllm": ["--enforce-eager"]})
    for line in cmds["vllm"].splitlines():
        assert ("--enforce-eager" in line) == line.startswith("vllm serve")


def test_a_multi_node_replica_becomes_a_leader_worker_set_with_one_pod_per_node():
    # checked by hand: the LWS CRD schema is not among the fixtures (README there)
    groups = manifests(Plan(gpu=H100, tp=16, dp=2), "deepseek-v3", engine="sglang-0.4")
    ((name, (lws, svc)),) = groups.items()
    assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1" and lws["kind"] == "LeaderWorkerSet"
    assert lws["metadata"]["name"] == name and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name)
    spec = lws["spec"]
    assert spec["replicas"] == 2 and spec["leaderWorkerTemplate"]["size"] == 2
    leader = spec["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"][0]
    worker = spec["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]
    for c in (leader, worker):
        assert c["image"] == IMAGES["sglang-0.4"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 8
        (script,) = c["args"]
        assert "--nnodes $LWS_GROUP_SIZE --node-rank $LWS_WORKER_INDEX" in script
        assert "--dist-init-addr $LWS_LEADER_ADDRESS:5000" in script
    assert "readinessProbe" in leader and "readinessProbe" not in worker
    assert svc["spec"]["selector"] == spec["leaderWorkerTemplate"]["leaderTemplate"]["metadata"]["labels"]


def test_a_vllm_leader_worker_set_starts_ray_on_every_pod_and_serves_from_the_leader():
    groups = manifests(Plan(gpu=H100, tp=8, pp=2), "llama-3.1-405b", engine="vllm-0.6")
    ((_, (lws, _)),) = groups.items()
    tmpl = lws["spec"]["leaderWorkerTemplate"]
    (leader,) = tmpl["leaderTemplate"]["spec"]["containers"][0]["args"]
    (worker,) = tmpl["workerTemplate"]["spec"]["containers"][0]["args"]
    assert leader.startswith("ray start --head") and "vllm serve" in leader
    assert "--distributed-executor-backend ray" in leader
    assert worker == "ray start --address=$LWS_LEADER_ADDRESS:6379 --block"


def test_single_node_replicas_get_a_deployment_with_gpus_health_probe_and_shared_memory():
    groups = manifests(Plan(gpu=H100, tp=2, dp=3), "llama-3.1-70b", engine="vllm-v1",
                       settings=LaunchSettings(max_model_len=20000))
    ((_, (dep, svc)),) = groups.items()
    assert dep["kind"] == "Deployment" and dep["spec"]["replicas"] == 3
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "vllm/vllm-openai:v0.11.0"
    assert c["command"] == ["vllm", "serve"] and c["args"][0] == "meta-llama/Llama-3.1-70B-Instruct"
    assert "--max-model-len" in c["args"] and "20000" in c["args"]
    assert "--data-parallel-size" not in c["args"]  # one replica per pod; the Service balances them
    assert c["resources"]["limits"] == {"nvidia.com/gpu": 2}
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
    assert svc["kind"] == "Service" and svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
