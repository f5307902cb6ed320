"""The planner searches the wide-EP layout (attention data parallel, experts over every GPU of the group) for
MoE models on the engines that run it, and launches it with their flags."""

from __future__ import annotations

from apex_opt import planner
from apex_opt.planner.space import build_space
from apex_opt.specs import load_specs

WORKLOAD = "synthetic:rate=8rps,requests=120,prompt=1024,output=256,seed=0"


def _specs(engine: str):
    return load_specs("qwen3-235b-a22b", "h100x16", engine=engine, workload=WORKLOAD, slo="ttft=2s,tpot=100ms")


def test_wide_ep_candidates_exist_for_sglang_and_vllm_v1_only():
    for engine, expected in (("sglang-0.4", True), ("vllm-v1", True), ("vllm-0.6", False)):
        space = build_space(_specs(engine))
        wide = [c for c in space.candidates if c.key.wide_dp > 1]
        assert bool(wide) == expected, engine
        for c in wide:
            plan = c.plan()
            assert plan.dp_attention and c.pp == 1 and c.dp == c.key.wide_dp
            assert plan.ep * plan.expert_tp == plan.tp * plan.dp  # the experts span the whole group


def test_a_rule_on_dp_attention_gets_a_verified_wide_ep_plan_and_its_launch_flags():
    @planner.constraint("wide-ep")
    def wide(v, s):
        return v.dp_attention == 1

    result = planner.solve(_specs("sglang-0.4"), constraints=[wide], quantization="fp8", top_k=1, workers=1)
    best = result.best
    assert best.verified and best.plan.dp_attention and best.plan.dp > 1
    cmds = result.launch_commands()
    assert "--enable-dp-attention" in cmds["sglang"]
    assert f"--tp {best.plan.tp * best.plan.dp} --dp {best.plan.dp}" in cmds["sglang"]
    assert f"--data-parallel-size {best.plan.dp}" in cmds["vllm"] and "--enable-expert-parallel" in cmds["vllm"]
